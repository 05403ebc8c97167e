"""Model merging methods (LoRS-Merging paper, Sec. 3 and 4.3), streaming over safetensors.

Every method is a per-tensor function registered with :func:`register`::

    f(name, base_tensor, taskvectors, params, lam) -> merged_tensor

``taskvectors[i]`` is τ_i for this tensor and ``params[i]`` that task vector's own
hyper-parameters (``rank_ratio``, ``keep_ratio``). The caller (:func:`merge_tensor`) validates
inputs, hands the method float32 tensors (float64 if the base is float64) and casts the result
back to the base dtype; non-float base tensors are copied without calling the method.

Methods (with ``P(τ)`` applied only to :func:`speechmerge.prune.is_prunable` tensors; all other
tensors use plain task arithmetic with the same λ):

* ``wa``   -- Weight Averaging: θ0 + mean_i τ_i = (1/n) Σ θ_i (λ ignored).
* ``ta``   -- Task Arithmetic: θ0 + λ Σ τ_i.
* ``mp``   -- MP-Merging: θ0 + λ Σ MP(τ_i, p_i), eqs. (1)-(2).
* ``svp``  -- SVP-Merging: θ0 + λ Σ SVP(τ_i, r_i), eqs. (3)-(4).
* ``lors`` -- LoRS-Merging: θ0 + λ Σ (L_i + S_i), eqs. (5)-(8).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor
from tqdm import tqdm

from . import __version__
from .prune import is_prunable, lors_dense, magnitude_prune, svp
from .taskvector import atomic_save_file, model_weights_path, open_task_vectors

__all__ = [
    "METHODS",
    "WEIGHT_FILE_SUFFIXES",
    "MergeFn",
    "MergeMethod",
    "get_method",
    "merge_models",
    "merge_state_dicts",
    "merge_tensor",
    "normalize_params",
    "register",
]

MergeFn = Callable[[str, Tensor, list[Tensor], list[dict[str, Any]], float], Tensor]

#: Files of the base model directory that are *not* copied to the merged model (weights/indices).
WEIGHT_FILE_SUFFIXES: tuple[str, ...] = (
    ".safetensors",
    ".bin",
    ".index.json",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
)


@dataclass(frozen=True)
class MergeMethod:
    """A registered merging method: per-tensor function + the per-τ parameters it needs."""

    name: str
    fn: MergeFn
    required_params: tuple[str, ...] = ()

    def __call__(
        self,
        name: str,
        base: Tensor,
        taskvectors: list[Tensor],
        params: list[dict[str, Any]],
        lam: float,
    ) -> Tensor:
        return self.fn(name, base, taskvectors, params, lam)


METHODS: dict[str, MergeMethod] = {}


def register(name: str, required_params: Sequence[str] = ()) -> Callable[[MergeFn], MergeFn]:
    """Decorator adding a per-tensor merge function to :data:`METHODS` under ``name``."""

    def deco(fn: MergeFn) -> MergeFn:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = MergeMethod(name, fn, tuple(required_params))
        return fn

    return deco


def get_method(method: str | MergeMethod) -> MergeMethod:
    """Look up a method by name; ValueError listing the known methods if unknown."""
    if isinstance(method, MergeMethod):
        return method
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown merge method {method!r}; known methods: {', '.join(sorted(METHODS))}"
        ) from None


def _task_arithmetic(
    name: str,
    base: Tensor,
    taskvectors: list[Tensor],
    params: list[dict[str, Any]],
    lam: float,
    prune: Callable[[Tensor, dict[str, Any]], Tensor] | None = None,
) -> Tensor:
    """θ0 + λ Σ P(τ_i), with P = identity for non-prunable tensors or ``prune is None``."""
    use = prune is not None and is_prunable(name, base)
    total = torch.zeros_like(base)
    for tv, p in zip(taskvectors, params, strict=True):
        total += prune(tv, p) if use else tv  # type: ignore[misc]
    return base + lam * total


@register("wa")
def weight_averaging(
    name: str, base: Tensor, taskvectors: list[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """WA: θ0 + (1/n) Σ τ_i = (1/n) Σ θ_i (λ ignored)."""
    return base + torch.stack(taskvectors).mean(dim=0)


@register("ta")
def task_arithmetic(
    name: str, base: Tensor, taskvectors: list[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """TA: θ0 + λ Σ τ_i."""
    return _task_arithmetic(name, base, taskvectors, params, lam)


@register("mp", required_params=("keep_ratio",))
def mp_merging(
    name: str, base: Tensor, taskvectors: list[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """MP-Merging: θ0 + λ Σ MP(τ_i, p_i) (eqs. 1-2)."""
    return _task_arithmetic(
        name, base, taskvectors, params, lam, lambda t, p: magnitude_prune(t, p["keep_ratio"])
    )


@register("svp", required_params=("rank_ratio",))
def svp_merging(
    name: str, base: Tensor, taskvectors: list[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """SVP-Merging: θ0 + λ Σ SVP(τ_i, r_i) (eqs. 3-4)."""
    return _task_arithmetic(
        name,
        base,
        taskvectors,
        params,
        lam,
        lambda t, p: svp(t, p["rank_ratio"], exact=p.get("exact")),
    )


@register("lors", required_params=("rank_ratio", "keep_ratio"))
def lors_merging(
    name: str, base: Tensor, taskvectors: list[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """LoRS-Merging: θ0 + λ Σ (L_i + S_i) (eqs. 5-8)."""
    return _task_arithmetic(
        name,
        base,
        taskvectors,
        params,
        lam,
        lambda t, p: lors_dense(t, p["rank_ratio"], p["keep_ratio"], exact=p.get("exact")),
    )


def normalize_params(
    method: str | MergeMethod,
    n: int,
    params: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """Per-task-vector parameter list of length ``n``.

    ``params`` may be None (no parameters), one mapping (shared by all task vectors) or a
    sequence of ``n`` mappings. Checks the method's required keys and that ratios are in [0, 1].
    """
    m = get_method(method)
    if params is None:
        plist: list[dict[str, Any]] = [{} for _ in range(n)]
    elif isinstance(params, Mapping):
        plist = [dict(params) for _ in range(n)]
    else:
        plist = [dict(p) for p in params]
        if len(plist) != n:
            raise ValueError(f"got {len(plist)} parameter dicts for {n} task vectors")
    for i, p in enumerate(plist):
        for key in m.required_params:
            if key not in p:
                raise ValueError(f"merge method {m.name!r} needs {key!r} in params[{i}]: {p}")
        for key in ("rank_ratio", "keep_ratio"):
            if key in p:
                v = float(p[key])
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"params[{i}][{key!r}] must be in [0, 1], got {p[key]!r}")
    return plist


def _check_finite(t: Tensor, name: str, source: str) -> None:
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"tensor {name!r} has NaN/Inf values in {source}")


def merge_tensor(
    name: str,
    base: Tensor,
    taskvectors: Sequence[Tensor | None],
    method: str | MergeMethod,
    lam: float,
    params: list[dict[str, Any]],
    base_source: str = "base",
    tv_sources: Sequence[str] | None = None,
) -> Tensor:
    """Validate one tensor's inputs and merge it with ``method``; result has the base dtype.

    Non-float base tensors are returned unchanged (task vectors are ignored). ``None`` entries
    in ``taskvectors`` mean "missing" and raise. Errors name the tensor and the source file.
    """
    m = get_method(method)
    if not base.is_floating_point():
        return base
    srcs = (
        list(tv_sources)
        if tv_sources is not None
        else [f"task vector {i}" for i in range(len(taskvectors))]
    )
    _check_finite(base, name, base_source)
    wd = torch.float64 if base.dtype == torch.float64 else torch.float32
    tvs: list[Tensor] = []
    for tv, src in zip(taskvectors, srcs, strict=True):
        if tv is None:
            raise ValueError(f"tensor {name!r} of the base model is missing from {src}")
        if not tv.is_floating_point():
            raise ValueError(f"tensor {name!r} in {src} is not floating point ({tv.dtype})")
        if tv.shape != base.shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(tv.shape)} in {src} but "
                f"{tuple(base.shape)} in {base_source}"
            )
        _check_finite(tv, name, src)
        tvs.append(tv.to(wd))
    merged = m(name, base.to(wd), tvs, params, float(lam))
    if merged.shape != base.shape:
        raise RuntimeError(f"method {m.name!r} changed the shape of {name!r}")
    merged = merged.to(base.dtype).contiguous()
    if not torch.isfinite(merged).all():
        raise ValueError(f"merged tensor {name!r} has NaN/Inf values (overflow in {base.dtype}?)")
    return merged


def _check_lam(lam: float) -> float:
    lam = float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lambda must be finite, got {lam!r}")
    return lam


def merge_state_dicts(
    base: Mapping[str, Tensor],
    taskvectors: Sequence[Mapping[str, Tensor]],
    method: str | MergeMethod,
    lam: float = 1.0,
    params: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """In-memory merge: same per-tensor semantics as :func:`merge_models`."""
    m = get_method(method)
    lam = _check_lam(lam)
    if not taskvectors:
        raise ValueError("need at least one task vector")
    plist = normalize_params(m, len(taskvectors), params)
    srcs = [f"task vector {i}" for i in range(len(taskvectors))]
    for tv, src in zip(taskvectors, srcs, strict=True):
        extra = sorted(set(tv) - set(base))
        if extra:
            raise ValueError(f"tensor {extra[0]!r} in {src} does not exist in the base model")
    out: dict[str, Tensor] = {}
    for name, b in base.items():
        tvs = [tv.get(name) for tv in taskvectors]
        out[name] = merge_tensor(name, b, tvs, m, lam, plist, "base", srcs)
    return out


def _is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_FILE_SUFFIXES)


def _copy_non_weight_files(src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy config/tokenizer/processor files (everything but weights and hidden entries)."""
    copied = []
    for entry in sorted(src_dir.iterdir()):
        if entry.name.startswith(".") or _is_weight_file(entry.name):
            continue
        if entry.is_dir():
            shutil.copytree(
                entry,
                dst_dir / entry.name,
                ignore=lambda _d, names: [n for n in names if _is_weight_file(n)],
            )
        else:
            shutil.copy2(entry, dst_dir / entry.name)
        copied.append(entry.name)
    return copied


def merge_models(
    base_dir: str | os.PathLike[str],
    taskvector_paths: Sequence[str | os.PathLike[str]],
    method: str | MergeMethod,
    lam: float = 1.0,
    params: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] = "merged",
    progress: bool = True,
) -> Path:
    """Merge task vectors into the base model and write a Hugging Face model dir at ``out_dir``.

    Streams tensor by tensor (lazy ``safe_open``; memory ≈ one model). Writes
    ``model.safetensors``, copies all non-weight files of ``base_dir`` and writes ``merge.json``
    (method, λ, per-τ params, inputs). The output is built in a temp dir next to ``out_dir`` and
    moved into place at the end (replacing an existing ``out_dir``); on any error nothing is
    written at ``out_dir``. Returns ``out_dir``.
    """
    m = get_method(method)
    lam = _check_lam(lam)
    base_dir = Path(base_dir)
    out_dir = Path(out_dir)
    tv_paths = [Path(p) for p in taskvector_paths]
    if not tv_paths:
        raise ValueError("need at least one task vector")
    plist = normalize_params(m, len(tv_paths), params)
    base_file = model_weights_path(base_dir)
    out_res = out_dir.resolve()
    for p in [base_dir, *tv_paths]:
        pr = p.resolve()
        if pr == out_res or out_res in pr.parents:
            raise ValueError(f"out_dir {out_dir} would overwrite the input {p}")

    merged: dict[str, Tensor] = {}
    tv_meta: list[dict[str, str]] = []
    with safe_open(str(base_file), framework="pt") as fb, open_task_vectors(tv_paths) as tvs:
        base_keys = list(fb.keys())
        base_set = set(base_keys)
        tv_keys = []
        for h, p in zip(tvs, tv_paths, strict=True):
            keys = set(h.keys())
            extra = sorted(keys - base_set)
            if extra:
                raise ValueError(f"tensor {extra[0]!r} in {p} does not exist in base {base_file}")
            tv_keys.append(keys)
            tv_meta.append(dict(h.metadata() or {}))
        srcs = [str(p) for p in tv_paths]
        for name in tqdm(
            base_keys, desc=f"merge[{m.name}]", unit="tensor", file=sys.stderr, disable=not progress
        ):
            b = fb.get_tensor(name)
            if b.is_floating_point():
                tv_list = [
                    h.get_tensor(name) if name in keys else None
                    for h, keys in zip(tvs, tv_keys, strict=True)
                ]
            else:
                tv_list = [None] * len(tvs)
            merged[name] = merge_tensor(name, b, tv_list, m, lam, plist, str(base_file), srcs)
            del tv_list

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        atomic_save_file(merged, tmp / "model.safetensors", metadata={"format": "pt"})
        del merged
        copied = _copy_non_weight_files(base_dir, tmp)
        record = {
            "method": m.name,
            "lambda": lam,
            "base": str(base_dir),
            "taskvectors": [
                {"path": str(p), "params": prm, "metadata": meta}
                for p, prm, meta in zip(tv_paths, plist, tv_meta, strict=True)
            ],
            "copied_files": copied,
            "speechmerge_version": __version__,
        }
        (tmp / "merge.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        if out_dir.exists() or out_dir.is_symlink():
            trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
