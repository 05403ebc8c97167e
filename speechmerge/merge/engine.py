"""The merge engine: one tensor at a time, from weight files to a Hugging Face model dir.

:func:`merge_tensor` validates one tensor's inputs and hands the method (:mod:`.registry`) a
lazy :class:`TaskVectors`; :func:`merge_state_dicts` merges in memory and
:func:`merge_models` streams from safetensors files to a model dir (see its docstring).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import __version__
from ..card import CARD_NAME, input_sha256, model_card
from ..compress import open_task_vectors
from ..io import memory
from ..io.atomic import atomic_dir, atomic_write_text, check_output_path
from ..io.shards import parse_shard_size
from ..io.weights import (
    all_finite,
    model_weight_files,
    model_weights_path,
    open_model_weights,
    save_model_weights,
)
from ..linalg import work_dtype
from ..prune import check_ratio, check_rounding
from .registry import MergeMethod, get_method

__all__ = [
    "MERGE_RECORD",
    "MODEL_FILES",
    "TaskVectors",
    "is_merge_output",
    "merge_models",
    "merge_state_dicts",
    "merge_tensor",
    "normalize_params",
]


class TaskVectors(Sequence[Tensor]):
    """The n task vectors of one tensor, read lazily: item ``i`` is loaded when accessed.

    ``load(i)`` returns τ_i (or None if the tensor is missing from that input); each access
    checks it (present, floating point, same shape as the base, finite; errors name the tensor
    and ``sources[i]``) and casts it to ``dtype``. Nothing is cached: a method that needs τ_i
    twice reads it twice, so at most the tensors a method itself keeps are alive.
    """

    def __init__(
        self,
        name: str,
        n: int,
        load: Callable[[int], Tensor | None],
        shape: torch.Size | tuple[int, ...],
        dtype: torch.dtype,
        sources: Sequence[str],
        base_source: str = "base",
    ) -> None:
        self.name, self._n, self._load = name, int(n), load
        self.shape, self.dtype, self.sources = tuple(shape), dtype, list(sources)
        self.base_source = base_source

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        i %= self._n
        tv, src, name = self._load(i), self.sources[i], self.name
        if tv is None:
            raise ValueError(f"tensor {name!r} of the base model is missing from {src}")
        if not tv.is_floating_point():
            raise ValueError(f"tensor {name!r} in {src} is not floating point ({tv.dtype})")
        if tuple(tv.shape) != self.shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(tv.shape)} in {src} but "
                f"{self.shape} in {self.base_source}"
            )
        _check_finite(tv, name, src)
        return tv.to(self.dtype)

    def __iter__(self) -> Iterator[Tensor]:
        for i in range(self._n):
            yield self[i]


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
        if "rounding" in p:
            try:
                check_rounding(p["rounding"])
            except ValueError as e:
                raise ValueError(f"params[{i}]: {e}") from None
        for key in ("rank_ratio", "keep_ratio"):
            if key in p:
                check_ratio(p[key], f"params[{i}][{key!r}]")
    return plist


def _check_finite(t: Tensor, name: str, source: str) -> None:
    if not all_finite(t):
        raise ValueError(f"tensor {name!r} has NaN/Inf values in {source}")


def merge_tensor(
    name: str,
    base: Tensor,
    taskvectors: Sequence[Tensor | None] | Callable[[int], Tensor | None],
    method: str | MergeMethod,
    lam: float,
    params: list[dict[str, Any]],
    base_source: str = "base",
    tv_sources: Sequence[str] | None = None,
) -> Tensor:
    """Validate one tensor's inputs and merge it with ``method``; result has the base dtype.

    ``taskvectors`` is the sequence of the n τ_i of this tensor, or a function ``load(i)``
    returning τ_i (then ``tv_sources`` is required and its length is n): the method gets a
    lazy :class:`TaskVectors` either way and reads τ_i only when it uses it, so with a loader
    the n task vectors are never all in memory. Non-float base tensors are returned unchanged
    (task vectors are ignored). A missing (None) τ_i, a non-float one, a shape mismatch or
    NaN/Inf raise ValueError naming the tensor and the source.
    """
    m = get_method(method)
    if not base.is_floating_point():
        return base
    if callable(taskvectors):
        if tv_sources is None:
            raise TypeError("merge_tensor: a task-vector loader needs tv_sources")
        load = taskvectors
        n = len(tv_sources)
    else:
        seq = taskvectors
        load = seq.__getitem__
        n = len(seq)
    srcs = list(tv_sources) if tv_sources is not None else [f"task vector {i}" for i in range(n)]
    if len(srcs) != n:
        raise ValueError(f"{len(srcs)} task-vector sources for {n} task vectors")
    _check_finite(base, name, base_source)
    wd = work_dtype(base.dtype)
    tvs = TaskVectors(name, n, load, base.shape, wd, srcs, base_source)
    merged = m(name, base.to(wd), tvs, params, float(lam))
    if merged.shape != base.shape:
        raise RuntimeError(f"method {m.name!r} changed the shape of {name!r}")
    merged = merged.to(base.dtype).contiguous()
    if not all_finite(merged):
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
        out[name] = merge_tensor(
            name, b, lambda i, name=name: taskvectors[i].get(name), m, lam, plist, "base", srcs
        )
    return out


#: The files of a Hugging Face Whisper model dir, besides its weights, that a merged model
#: needs (config, generation config, tokenizer, processor); nothing else is copied.
MODEL_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "chat_template.json",
)

#: Written into every merged model dir: the record of the merge, and the marker by which
#: ``--out`` knows a previous output of this tool (see :func:`is_merge_output`).
MERGE_RECORD = "merge.json"


def _copy_model_files(src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy the base's :data:`MODEL_FILES` that exist: plain files, one level, no folders.

    A listed name that is a symlink is copied as its content only if it points to a regular
    file inside ``src_dir`` or to a Hugging Face cache blob (``../../blobs/…``, how hub
    snapshots are laid out); any other symlink is skipped.
    """
    copied = []
    for name in MODEL_FILES:
        src = src_dir / name
        if src.is_symlink():
            target = src.resolve()
            inside = src_dir.resolve() in target.parents or target.parent.name == "blobs"
            if not (inside and target.is_file()):
                continue
        elif not src.is_file():
            continue
        shutil.copyfile(src, dst_dir / name)
        copied.append(name)
    return sorted(copied)


def is_merge_output(path: Path) -> bool:
    """Whether ``path`` is a model dir written by :func:`merge_models` (it has its record)."""
    try:
        record = json.loads((path / MERGE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "speechmerge_version" in record and "method" in record


def merge_models(
    base_dir: str | os.PathLike[str],
    taskvector_paths: Sequence[str | os.PathLike[str]],
    method: str | MergeMethod,
    lam: float = 1.0,
    params: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] = "merged",
    progress: bool = True,
    force: bool = False,
    labels: Sequence[str] | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Merge task vectors into the base model and write a Hugging Face model dir at ``out_dir``.

    Streams tensor by tensor: each input tensor is read on its own (no memory map, see
    :class:`speechmerge.io.weights.SafetensorsReader`) and each merged tensor is written to
    ``model.safetensors`` as soon as it is computed; the method reads the n task vectors of a
    tensor one at a time (:class:`TaskVectors`), so peak memory is a few copies of the largest
    tensor (plus small SVD factors), independent of n — not O(n models), nor even O(model).
    Task-vector files may be dense or compressed (:mod:`speechmerge.compress`; they are read
    as their dense LoRS(τ), so merge them with ``ta`` to get LoRS-Merging). Copies the base's
    :data:`MODEL_FILES` (config, generation config, tokenizer, processor) and writes
    ``merge.json`` (method, λ, per-τ params, inputs: ``labels`` if given, e.g. the fine-tuned
    dirs whose task vectors were computed into a temp dir, else the task-vector paths).

    The base (and labelled fine-tuned dirs, for the card's hashes) may be sharded checkpoints
    (``model.safetensors.index.json``, read shard by shard). ``max_shard_size`` (bytes or a
    string such as ``"2GB"``; default None: one ``model.safetensors``) writes the merged
    weights as Hugging Face's shards and index instead
    (:func:`speechmerge.io.weights.save_model_weights`): the same tensors, in the same order.

    The output is built in a temp dir next to ``out_dir`` and moved into place at the end; on
    any error nothing is written at ``out_dir``. An existing ``out_dir`` is replaced only if it
    is a previous merge output (it has ``merge.json``) or with ``force``; anything else raises
    FileExistsError. Errors name the file and the tensor. Returns ``out_dir``.

    The process's allocator is left alone: a program that merges large models calls
    :func:`speechmerge.io.memory.enable_streaming_memory_tuning` first (the CLI and the
    workflow do), which also turns on trims around large tensors and read-ahead.
    """
    m = get_method(method)
    lam = _check_lam(lam)
    base_dir = Path(base_dir)
    out_dir = Path(out_dir)
    tv_paths = [Path(p) for p in taskvector_paths]
    if not tv_paths:
        raise ValueError("need at least one task vector")
    plist = normalize_params(m, len(tv_paths), params)
    names = [str(p) for p in tv_paths] if labels is None else [str(x) for x in labels]
    if len(names) != len(tv_paths):
        raise ValueError(f"{len(names)} labels for {len(tv_paths)} task vectors")
    max_shard_size = parse_shard_size(max_shard_size)
    base_file = model_weights_path(base_dir)
    out_res = out_dir.resolve()
    for p in [base_dir, *tv_paths]:
        pr = p.resolve()
        if pr == out_res or out_res in pr.parents:
            raise ValueError(f"out_dir {out_dir} would overwrite the input {p}")
    check_output_path(out_dir, is_merge_output, force=force, what="out_dir")

    # the model card's input hashes: each fine-tuned model's weights when the inputs are
    # labelled by their dirs (the CLI), else the task-vector files; every file of a sharded
    # checkpoint (its index, then each shard); read in a thread while the merge runs (hashlib
    # releases the GIL), or taken from the inputs' manifests
    hashed = [model_weight_files(base_file)] + [
        model_weight_files(lab) if Path(lab).is_dir() else [p]
        for lab, p in zip(names, tv_paths, strict=True)
    ]
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-hash")
    hashes = [{f.name: hasher.submit(input_sha256, f) for f in files} for files in hashed]
    hasher.shutdown(wait=False)
    try:
        with atomic_dir(out_dir) as tmp:
            _merge_into(
                tmp, m, lam, plist, base_dir, tv_paths, names, hashes, progress, max_shard_size
            )
    except BaseException:
        for files in hashes:
            for h in files.values():
                h.cancel()
        raise
    return out_dir


def _card_hashes(files: dict[str, Future[str]], key: str) -> dict[str, Any]:
    """One input's hashes for the card: ``{key: SHA-256 of its (first) weights file}`` plus,
    for a sharded checkpoint, ``{"shards_sha256": {shard: SHA-256}}``."""
    (first, h), *shards = files.items()
    out: dict[str, Any] = {key: h.result()}
    if shards:
        out["weights_file"] = first
        out["shards_sha256"] = {name: f.result() for name, f in shards}
    return out


def _merge_into(
    tmp: Path,
    m: MergeMethod,
    lam: float,
    plist: list[dict[str, Any]],
    base_dir: Path,
    tv_paths: list[Path],
    names: list[str],
    hashes: list[dict[str, Future[str]]],
    progress: bool,
    max_shard_size: int | None,
) -> None:
    """The body of :func:`merge_models`: write the merged model dir's files into ``tmp``."""
    tv_meta: list[dict[str, str]] = []
    with open_model_weights(base_dir) as fb, open_task_vectors(tv_paths) as tvs:
        base_file = fb.path
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

        following = dict(itertools.pairwise(base_keys))

        def produce(name: str) -> Tensor:
            # read the next tensor from disk while computing this one (opt-in)
            memory.read_ahead((fb, *tvs), following.get(name))
            b = fb.get_tensor(name)
            if not b.is_floating_point():
                return b
            for h, keys, src in zip(tvs, tv_keys, srcs, strict=True):  # fail before reading
                if name not in keys:
                    raise ValueError(f"tensor {name!r} of the base model is missing from {src}")
                if tuple(h.shape(name)) != tuple(b.shape):
                    raise ValueError(
                        f"tensor {name!r} has shape {tuple(h.shape(name))} in {src} but "
                        f"{tuple(b.shape)} in {base_file}"
                    )

            def load(i: int) -> Tensor:
                return tvs[i].get_tensor(name)  # one τ_i, read when the method asks

            with memory.release_around(b.numel() * 4):  # opt-in: see io.memory
                return merge_tensor(name, b, load, m, lam, plist, str(base_file), srcs)

        specs = [(k, fb.dtype(k), fb.shape(k)) for k in base_keys]
        save_model_weights(
            tmp,
            specs,
            produce,
            metadata={"format": "pt"},
            max_shard_size=max_shard_size,
            progress=progress,
            desc=f"merge[{m.name}]",
        )
    copied = _copy_model_files(base_dir, tmp)
    record = {
        "method": m.name,
        "lambda": lam,
        "base": str(base_dir),
        "taskvectors": [
            {"path": name, "params": prm, "metadata": meta}
            for name, prm, meta in zip(names, plist, tv_meta, strict=True)
        ],
        "copied_files": copied,
        "speechmerge_version": __version__,
    }
    atomic_write_text(tmp / MERGE_RECORD, json.dumps(record, indent=2, default=str) + "\n")
    base = {f"base_{k}": v for k, v in _card_hashes(hashes[0], "sha256").items()}
    card = dict(record, **base)
    card["taskvectors"] = [
        dict(tv, **_card_hashes(h, "sha256"))
        for tv, h in zip(record["taskvectors"], hashes[1:], strict=True)
    ]
    atomic_write_text(tmp / CARD_NAME, model_card(card, m.description))
