"""Model merging methods (LoRS-Merging paper, Sec. 3 and 4.3), streaming over safetensors.

Every method is a per-tensor function registered with :func:`register`::

    f(name, base_tensor, taskvectors, params, lam) -> merged_tensor

``taskvectors[i]`` is τ_i for this tensor and ``params[i]`` that task vector's own
hyper-parameters (``rank_ratio``, ``keep_ratio``). The caller (:func:`merge_tensor`) hands the
method a :class:`TaskVectors` sequence that reads, validates and casts τ_i (float32, float64
if the base is float64) only when item ``i`` is accessed, and casts the result back to the
base dtype; non-float base tensors are copied without calling the method.

Methods are written to *stream*: they access ``taskvectors[i]`` one at a time, fold it into
running accumulators and drop it before reading the next (two passes where the definition
needs a statistic of all n first: TIES' elected sign, CART's mean, Iso-CTS' common subspace;
each pass re-reads the τ_i). So merging n task vectors holds O(1) tensors of this name, not n:
peak memory is independent of n. Items may alias caller-owned tensors: methods never modify
them in place.

Methods (with ``P(τ)`` applied only to :func:`speechmerge.prune.is_prunable` tensors; all other
tensors use plain task arithmetic with the same λ):

* ``wa``   -- Weight Averaging: θ0 + mean_i τ_i = (1/n) Σ θ_i (λ ignored).
* ``ta``   -- Task Arithmetic: θ0 + λ Σ τ_i.
* ``mp``   -- MP-Merging: θ0 + λ Σ MP(τ_i, p_i), eqs. (1)-(2).
* ``svp``  -- SVP-Merging: θ0 + λ Σ SVP(τ_i, r_i), eqs. (3)-(4).
* ``lors`` -- LoRS-Merging: θ0 + λ Σ (L_i + S_i), eqs. (5)-(8).

Newer methods (each docstring names the equation / algorithm followed):

* ``ties``    -- TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint mean.
* ``dare``    -- DARE (Yu et al., ICML 2024): random drop + rescale, then task arithmetic.
* ``tsvm``    -- TSV-M (Gargiulo et al., CVPR 2025): per-task top singular vectors, whitened.
* ``iso_c``   -- Iso-C (Marczak et al., ICML 2025): TA sum with a flat (isotropic) spectrum.
* ``iso_cts`` -- Iso-CTS (Marczak et al., ICML 2025): common + task-specific subspaces, flat.
* ``cart``    -- CART (Choi et al., 2024): mean + λ Σ low-rank(θ_i − mean).

Hyper-parameters of a method are read per task vector from ``params[i]``: first from the
method's own section ``params[i][method][key]`` (how the workflow config's ``merge.<method>``
keys arrive, see :func:`speechmerge.config.merge_params`), then from the flat
``params[i][key]`` (library / CLI use), then the method's default. Parameters that are global
to a merge (``seed``, ``common_fraction``) are read from ``params[0]``.

Two flat keys steer every SVD and rounding: ``exact`` (True: the exact SVD; default None:
seeded randomized for small ranks of large matrices) reaches every method that takes a
truncated SVD (svp, lors, cart, tsvm, iso_cts; iso_c and the whitening take full SVDs anyway);
``rounding`` (``"ceil"``, the default, or ``"paper"``) is the rank/count rounding of mp, svp
and lors (:mod:`speechmerge.prune`, "Rounding") and implies ``exact`` for every method.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import __version__
from .atomic import (
    atomic_write_text,
    check_output_path,
    replace_path,
    temp_path,
    write_manifest,
)
from .card import CARD_NAME, input_sha256, model_card
from .prune import (
    check_rounding,
    count_from_ratio,
    is_prunable,
    keep_selection,
    lors_dense,
    magnitude_prune,
    svd_device,
    svd_exact,
    svp,
    topk_selection,
    truncated_svd,
)
from .taskvector import (
    SafetensorsReader,
    all_finite,
    atomic_save_streaming,
    keep_freed_memory,
    model_weights_path,
    open_task_vectors,
    release_free_memory,
)

__all__ = [
    "MERGE_RECORD",
    "METHODS",
    "MODEL_FILES",
    "MergeFn",
    "MergeMethod",
    "TaskVectors",
    "get_method",
    "is_merge_output",
    "merge_models",
    "merge_state_dicts",
    "merge_tensor",
    "method_param",
    "normalize_params",
    "register",
]

MergeFn = Callable[[str, Tensor, Sequence[Tensor], list[dict[str, Any]], float], Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A registered merging method: per-tensor function + the per-τ parameters it needs."""

    name: str
    fn: MergeFn
    required_params: tuple[str, ...] = ()
    default_lambda: float = 1.0

    @property
    def description(self) -> str:
        """First line of the function's docstring."""
        return (self.fn.__doc__ or self.name).strip().splitlines()[0]

    def __call__(
        self,
        name: str,
        base: Tensor,
        taskvectors: Sequence[Tensor],
        params: list[dict[str, Any]],
        lam: float,
    ) -> Tensor:
        return self.fn(name, base, taskvectors, params, lam)


METHODS: dict[str, MergeMethod] = {}


def register(
    name: str, required_params: Sequence[str] = (), default_lambda: float = 1.0
) -> Callable[[MergeFn], MergeFn]:
    """Decorator adding a per-tensor merge function to :data:`METHODS` under ``name``.

    ``default_lambda`` is the λ the CLI uses when none is given (the value suggested by the
    method's paper, or this project's config default 0.3 for the task-arithmetic family).
    """

    def deco(fn: MergeFn) -> MergeFn:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = MergeMethod(name, fn, tuple(required_params), float(default_lambda))
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


def _sum(
    base: Tensor,
    taskvectors: Sequence[Tensor],
    fn: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """Σ_i fn(i, τ_i) (Σ_i τ_i for ``fn=None``) into one accumulator, one τ_i at a time."""
    total = torch.zeros_like(base)
    for i in range(len(taskvectors)):
        # no name holds τ_i (or fn's result) past this statement: each is freed before the next
        total.add_(taskvectors[i] if fn is None else fn(i, taskvectors[i]))
    return total


def _task_arithmetic(
    name: str,
    base: Tensor,
    taskvectors: Sequence[Tensor],
    params: list[dict[str, Any]],
    lam: float,
    prune: Callable[[Tensor, dict[str, Any]], Tensor] | None = None,
) -> Tensor:
    """θ0 + λ Σ P(τ_i), with P = identity for non-prunable tensors or ``prune is None``."""
    if prune is not None and is_prunable(name, base):
        total = _sum(base, taskvectors, lambda i, tv: prune(tv, params[i]))
    else:
        total = _sum(base, taskvectors)
    return total.mul_(lam).add_(base)  # = base + lam * total, without two temporaries


@register("wa")
def weight_averaging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """WA: θ0 + (1/n) Σ τ_i = (1/n) Σ θ_i (λ ignored)."""
    return _mean(base, taskvectors).add_(base)


@register("ta", default_lambda=0.3)
def task_arithmetic(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """TA: θ0 + λ Σ τ_i."""
    return _task_arithmetic(name, base, taskvectors, params, lam)


def _exact(p: Mapping[str, Any]) -> bool | None:
    """The ``exact`` of an SVD for the task vector with parameters ``p`` (see the module
    docstring): True under ``rounding="paper"``, else ``p["exact"]`` (default None)."""
    return svd_exact(p.get("exact"), p.get("rounding"))


@register("mp", required_params=("keep_ratio",), default_lambda=0.3)
def mp_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """MP-Merging: θ0 + λ Σ MP(τ_i, p_i) (eqs. 1-2)."""
    return _task_arithmetic(
        name,
        base,
        taskvectors,
        params,
        lam,
        lambda t, p: magnitude_prune(t, p["keep_ratio"], p.get("rounding")),
    )


@register("svp", required_params=("rank_ratio",), default_lambda=0.3)
def svp_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """SVP-Merging: θ0 + λ Σ SVP(τ_i, r_i) (eqs. 3-4)."""
    return _task_arithmetic(
        name,
        base,
        taskvectors,
        params,
        lam,
        lambda t, p: svp(t, p["rank_ratio"], exact=_exact(p), rounding=p.get("rounding")),
    )


@register("lors", required_params=("rank_ratio", "keep_ratio"), default_lambda=0.3)
def lors_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """LoRS-Merging: θ0 + λ Σ (L_i + S_i) (eqs. 5-8)."""
    return _task_arithmetic(
        name,
        base,
        taskvectors,
        params,
        lam,
        lambda t, p: lors_dense(
            t, p["rank_ratio"], p["keep_ratio"], exact=_exact(p), rounding=p.get("rounding")
        ),
    )


# ---------------------------------------------------------------- newer methods


def method_param(p: Mapping[str, Any], method: str, key: str, default: Any) -> Any:
    """``p[method][key]``, else ``p[key]``, else ``default`` (see the module docstring)."""
    section = p.get(method)
    if isinstance(section, Mapping) and key in section:
        return section[key]
    return p.get(key, default)


def _ratio_param(p: Mapping[str, Any], method: str, key: str, default: float, i: int) -> float:
    v = float(method_param(p, method, key, default))
    if not 0.0 <= v <= 1.0 or math.isnan(v):
        raise ValueError(f"{method}: params[{i}] {key} must be in [0, 1], got {v!r}")
    return v


def _is_matrix(name: str, base: Tensor) -> bool:
    """The "layer matrices" of the SVD-based methods: the same 2-D linear weights LoRS prunes."""
    return is_prunable(name, base)


def _svd(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``a = U diag(s) Vh`` (on CUDA when available), results on ``a``'s device."""
    dev = svd_device(a)
    u, s, vh = torch.linalg.svd(a.to(dev), full_matrices=False)
    return u.to(a.device), s.to(a.device), vh.to(a.device)


def _orthogonalize(x: Tensor) -> Tensor:
    """Closest matrix with orthonormal columns (polar factor): ``P Qᵀ`` for ``x = P Σ Qᵀ``."""
    p, _, qh = _svd(x)
    return p @ qh


def _mean(base: Tensor, taskvectors: Sequence[Tensor]) -> Tensor:
    """(1/n) Σ τ_i, accumulated one τ_i at a time (no n-fold stacked copy)."""
    return _sum(base, taskvectors).div_(len(taskvectors))


def _plus_lam_mean(base: Tensor, taskvectors: Sequence[Tensor], lam: float) -> Tensor:
    """θ0 + λ mean_i τ_i (the non-matrix rule of TSV-M and Iso-C/CTS)."""
    return _mean(base, taskvectors).mul_(lam).add_(base)


@register("ties", default_lambda=1.0)
def ties_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """TIES-Merging: trim to top-k magnitude, elect sign by mass, disjoint mean (Yadav et al. 2023).

    Algorithm 1 of the paper, per tensor (as mergekit does; the paper trims each whole flattened
    task vector), on every float tensor: (1) trim ``τ̂_i = MP(τ_i, k_i)`` with
    ``k_i = keep_ratio`` (default 0.2, the paper's top-20 %); (2) elect
    ``γ = sign(Σ_i τ̂_i)`` per entry; (3) disjoint mean
    ``τ_m = Σ_{i∈A} τ̂_i / |A|`` over ``A = {i : sign(τ̂_i) = γ, τ̂_i ≠ 0}`` (0 where A is empty);
    (4) ``θ0 + λ τ_m``.

    Streams in two passes over the τ_i: pass 1 accumulates Σ_i τ̂_i (and remembers each τ̂_i's
    top-k selection, :func:`speechmerge.prune.topk_selection`); pass 2 re-reads τ_i, rebuilds
    τ̂_i from its selection and accumulates the agreeing entries and their count.
    """
    n = len(taskvectors)
    ks = [
        count_from_ratio(base.numel(), _ratio_param(p, "ties", "keep_ratio", 0.2, i))
        for i, p in enumerate(params)
    ]
    if len(ks) != n:
        raise ValueError(f"ties: {len(ks)} parameter dicts for {n} task vectors")
    selections: list[tuple[float, int, int] | None] = []

    def trim(i: int, tv: Tensor, first: bool) -> Tensor:
        k = ks[i]
        if k >= tv.numel():
            if first:
                selections.append(None)
            return tv
        if k == 0:
            if first:
                selections.append(None)
            return torch.zeros_like(tv)
        mag = tv.abs()
        if first:
            selections.append(topk_selection(mag.reshape(-1), k))
        sel = selections[i]
        assert sel is not None
        return keep_selection(tv, mag, sel)

    elected = _sum(base, taskvectors, lambda i, tv: trim(i, tv, True)).sign_()
    merged = torch.zeros_like(base)
    count = torch.zeros(base.shape, dtype=torch.int32)
    for i in range(n):
        t = trim(i, taskvectors[i], False)
        agree = (torch.sign(t) == elected).logical_and_(t != 0)
        merged.add_(torch.where(agree, t, torch.zeros((), dtype=t.dtype)))
        count.add_(agree)
        del t, agree
    del elected
    merged.div_(count.clamp_(min=1))
    return merged.mul_(lam).add_(base)


def _dare_seed(seed: int, name: str, index: int) -> int:
    """Generator seed of DARE's mask for (seed, tensor name, task-vector index): stable across
    runs, processes and platforms (SHA-256, not Python's salted ``hash``)."""
    h = hashlib.sha256(f"{int(seed)}\0{index}\0{name}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def dare_mask(
    shape: torch.Size | tuple[int, ...], drop_rate: float, seed: int, name: str, index: int
) -> Tensor:
    """DARE's keep mask: Bernoulli(1 − drop_rate) per entry, from :func:`_dare_seed`."""
    g = torch.Generator(device="cpu").manual_seed(_dare_seed(seed, name, index))
    return torch.rand(tuple(shape), generator=g) >= drop_rate


@register("dare", default_lambda=0.3)
def dare_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """DARE: drop entries with probability p, rescale survivors by 1/(1−p), then TA (Yu et al. 2024).

    Eq. (1) of the paper ("Language Models are Super Mario"): ``m ~ Bernoulli(p)``,
    ``τ̃ = (1 − m) ⊙ τ / (1 − p)``, applied to every float tensor of each τ_i with its own
    ``drop_rate`` p_i (default 0.9, in [0, 1)); merged as task arithmetic ``θ0 + λ Σ τ̃_i``.
    Masks are deterministic: drawn on the CPU from a generator seeded by
    SHA-256(``seed``, task-vector index, tensor name) (``seed`` from params[0], default 0).
    """
    seed = int(method_param(params[0], "dare", "seed", 0))
    rates = []
    for i, p in enumerate(params):
        rate = float(method_param(p, "dare", "drop_rate", 0.9))
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dare: params[{i}] drop_rate must be in [0, 1), got {rate!r}")
        rates.append(rate)

    def drop(i: int, tv: Tensor) -> Tensor:
        if rates[i] == 0.0:
            return tv
        keep = dare_mask(tv.shape, rates[i], seed, name, i).to(tv.device)
        return tv * keep / (1.0 - rates[i])

    return _sum(base, taskvectors, drop).mul_(lam).add_(base)


def tsvm_rank(shape: tuple[int, ...] | torch.Size, fraction: float) -> int:
    """Per-task rank of TSV-M: ``max(1, floor(fraction * min(d, k)))``."""
    m = min(int(shape[0]), int(shape[1]))
    return max(1, min(m, math.floor(round(fraction * m, 9))))


@register("tsvm", default_lambda=1.0)
def tsv_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """TSV-M: per-task top singular vectors, concatenated and orthogonalized (Gargiulo et al. 2025).

    Sec. 5 / Algorithm 1 of "Task Singular Vectors: Reducing Task Interference in Model
    Merging" (CVPR 2025) and its reference code: for each layer matrix, τ_i ≈ U_i Σ_i V_iᵀ
    truncated to ``k_i = tsvm_rank(shape, rank_fraction_i)`` components (``rank_fraction``
    default 1/n, the paper's choice); ``U = [U_1 … U_n]``, ``Σ = diag(Σ_1 … Σ_n)``,
    ``V = [V_1 … V_n]``; whiten ``U_⊥ = P Qᵀ`` from ``U = P S Qᵀ`` (same for V); merged
    ``θ0 + λ U_⊥ Σ V_⊥ᵀ``. Non-matrix tensors (and embeddings): ``θ0 + λ mean_i τ_i``.
    The per-task SVD is the seeded randomized one when ``k_i <= min(d, k)/4``, unless
    ``exact`` (or ``rounding="paper"``) is set for that task vector.
    """
    n = len(taskvectors)
    if not _is_matrix(name, base):
        return _plus_lam_mean(base, taskvectors, lam)
    us, ss, vs = [], [], []
    for i in range(n):
        frac = _ratio_param(params[i], "tsvm", "rank_fraction", 1.0 / n, i)
        u, s, v = truncated_svd(
            taskvectors[i], tsvm_rank(base.shape, frac), exact=_exact(params[i])
        )
        us.append(u)
        ss.append(s)
        vs.append(v)
    u_cat, s_cat, v_cat = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vs, dim=1)
    del us, vs
    delta = (_orthogonalize(u_cat) * s_cat) @ _orthogonalize(v_cat).T
    return delta.mul_(lam).add_(base)


@register("iso_c", default_lambda=1.0)
def iso_c_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """Iso-C: task-arithmetic sum with its singular values replaced by their mean (Marczak et al.).

    Eqs. (4)-(6) of "No Task Left Behind: Isotropic Model Merging with Common and
    Task-Specific Subspaces" (ICML 2025): ``Δ = Σ_i τ_i = U Σ Vᵀ`` (thin SVD, r = min(d, k)),
    ``σ̄ = (1/r) Σ_j σ_j``, merged ``θ0 + λ σ̄ U Vᵀ`` for layer matrices. Non-matrix tensors
    (and embeddings) follow the reference code: ``θ0 + λ mean_i τ_i``.
    """
    if not _is_matrix(name, base):
        return _plus_lam_mean(base, taskvectors, lam)
    u, s, vh = _svd(_sum(base, taskvectors))
    return (u @ vh).mul_(lam * s.mean()).add_(base)


def iso_cts_dims(
    shape: tuple[int, ...] | torch.Size, n: int, common_fraction: float
) -> tuple[int, int]:
    """(k_c, k_s) of Iso-CTS: common directions and task-specific directions per task.

    As in the reference code: ``k_c = floor(common_fraction * r)``, then the task-specific
    budget ``r − k_c`` is rounded to a multiple of n, ``k_s = (r − k_c') / n`` and
    ``k_c' = r − n k_s``, so that ``k_c' + n k_s = r = min(d, k)``.
    """
    r = min(int(shape[0]), int(shape[1]))
    kc = math.floor(round(common_fraction * r, 9))
    ks = round((r - kc) / n)
    if n * ks > r:
        ks = r // n
    return r - n * ks, ks


@register("iso_cts", default_lambda=1.0)
def iso_cts_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """Iso-CTS: common + task-specific subspaces with an isotropic spectrum (Marczak et al. 2025).

    Sec. 4.2 / Algorithm 1 of "No Task Left Behind" (ICML 2025) and its reference code, per
    layer matrix: ``Δ = Σ τ_i = U Σ Vᵀ``; keep the top ``k_c`` common directions
    (``iso_cts_dims``, ``common_fraction`` default 0.8 from params[0]); for each task project
    out the common left subspace, ``τ̃_i = τ_i − U_c U_cᵀ τ_i``, and keep its top ``k_s``
    singular triplets; stack ``U = [U_{1,s} … U_{n,s}, U_c]`` (same for Σ and V), whiten
    ``U_⊥ = P Qᵀ`` and ``V_⊥`` as in TSV-M, and give every direction the mean singular value:
    ``θ0 + λ σ̄ U_⊥ V_⊥ᵀ`` with ``σ̄ = mean(diag Σ)``. Non-matrix tensors: ``θ0 + λ mean_i τ_i``.
    """
    n = len(taskvectors)
    if not _is_matrix(name, base):
        return _plus_lam_mean(base, taskvectors, lam)
    frac = _ratio_param(params[0], "iso_cts", "common_fraction", 0.8, 0)
    kc, ks = iso_cts_dims(base.shape, n, frac)
    u, s, vh = _svd(_sum(base, taskvectors))
    uc, sc, vc = u[:, :kc], s[:kc], vh[:kc, :].T
    del u, vh
    us_, ss_, vs_ = [], [], []
    if ks > 0:
        for i in range(n):
            tv = taskvectors[i]
            resid = tv - uc @ (uc.T @ tv)
            del tv
            ut, st, vt = truncated_svd(resid, ks, exact=_exact(params[i]))
            del resid
            us_.append(ut)
            ss_.append(st)
            vs_.append(vt)
    u_all = torch.cat([*us_, uc], dim=1)
    s_all = torch.cat([*ss_, sc])
    v_all = torch.cat([*vs_, vc], dim=1)
    del us_, vs_
    delta = _orthogonalize(u_all) @ _orthogonalize(v_all).T
    return delta.mul_(lam * s_all.mean()).add_(base)


@register("cart", default_lambda=1.0)
def cart_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """CART: weight average + λ Σ low-rank(θ_i − average) (Choi et al. 2024, "Revisiting WA").

    Eq. (6) of "Revisiting Weight Averaging for Model Merging" (Centered Arithmetic with
    Rank-reduced Task vectors): ``τ̄ = mean_i θ_i − θ0 = mean_i τ_i``, centered residuals
    ``r_i = θ_i − mean θ = τ_i − τ̄``, merged ``θ0 + τ̄ + λ Σ_i SVP(r_i, rank_ratio_i)`` for layer
    matrices (``rank_ratio`` default 0.08; SVP as in :func:`speechmerge.prune.svp`);
    non-matrix tensors (and embeddings): ``θ0 + τ̄`` (weight averaging).
    """
    mean = _mean(base, taskvectors)
    if not _is_matrix(name, base):
        return mean.add_(base)
    ratios = [_ratio_param(p, "cart", "rank_ratio", 0.08, i) for i, p in enumerate(params)]
    total = _sum(
        base,
        taskvectors,
        lambda i, tv: svp(tv - mean, ratios[i], exact=_exact(params[i])),
    )
    return (base + mean).add_(total, alpha=lam)


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
                v = float(p[key])
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"params[{i}][{key!r}] must be in [0, 1], got {p[key]!r}")
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
    wd = torch.float64 if base.dtype == torch.float64 else torch.float32
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


#: Around merging a tensor this large (in fp32 bytes; before and after), free heap pages go
#: back to the OS (see :func:`speechmerge.taskvector.release_free_memory`).
_RELEASE_ABOVE_BYTES = 32 << 20


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
) -> Path:
    """Merge task vectors into the base model and write a Hugging Face model dir at ``out_dir``.

    Streams tensor by tensor: each input tensor is read on its own (no memory map, see
    :class:`speechmerge.taskvector.SafetensorsReader`) and each merged tensor is written to
    ``model.safetensors`` as soon as it is computed; the method reads the n task vectors of a
    tensor one at a time (:class:`TaskVectors`), so peak memory is a few copies of the largest
    tensor (plus small SVD factors), independent of n — not O(n models), nor even O(model).
    Task-vector files may be dense or compressed (:mod:`speechmerge.compress`; they are read
    as their dense LoRS(τ), so merge them with ``ta`` to get LoRS-Merging). Copies the base's
    :data:`MODEL_FILES` (config, generation config, tokenizer, processor) and writes
    ``merge.json`` (method, λ, per-τ params, inputs: ``labels`` if given, e.g. the fine-tuned
    dirs whose task vectors were computed into a temp dir, else the task-vector paths).

    The output is built in a temp dir next to ``out_dir`` and moved into place at the end; on
    any error nothing is written at ``out_dir``. An existing ``out_dir`` is replaced only if it
    is a previous merge output (it has ``merge.json``) or with ``force``; anything else raises
    FileExistsError. Errors name the file and the tensor. Returns ``out_dir``.
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
    base_file = model_weights_path(base_dir)
    out_res = out_dir.resolve()
    for p in [base_dir, *tv_paths]:
        pr = p.resolve()
        if pr == out_res or out_res in pr.parents:
            raise ValueError(f"out_dir {out_dir} would overwrite the input {p}")
    check_output_path(out_dir, is_merge_output, force=force, what="out_dir")

    keep_freed_memory()
    tmp = temp_path(out_dir, directory=True)
    # the model card's input hashes: each fine-tuned model's weights when the inputs are
    # labelled by their dirs (the CLI), else the task-vector files; read in a thread while the
    # merge runs (hashlib releases the GIL), or taken from the inputs' manifests
    hashed = [base_file] + [
        model_weights_path(lab) if Path(lab).is_dir() else p
        for lab, p in zip(names, tv_paths, strict=True)
    ]
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-hash")
    hashes = [hasher.submit(input_sha256, f) for f in hashed]
    hasher.shutdown(wait=False)
    try:
        tv_meta: list[dict[str, str]] = []
        with SafetensorsReader(base_file) as fb, open_task_vectors(tv_paths) as tvs:
            base_keys = list(fb.keys())
            base_set = set(base_keys)
            tv_keys = []
            for h, p in zip(tvs, tv_paths, strict=True):
                keys = set(h.keys())
                extra = sorted(keys - base_set)
                if extra:
                    raise ValueError(
                        f"tensor {extra[0]!r} in {p} does not exist in base {base_file}"
                    )
                tv_keys.append(keys)
                tv_meta.append(dict(h.metadata() or {}))
            srcs = [str(p) for p in tv_paths]

            following = dict(itertools.pairwise(base_keys))

            def produce(name: str) -> Tensor:
                nxt = following.get(name)
                if nxt is not None:  # read the next tensor from disk while computing this one
                    for h in (fb, *tvs):
                        h.prefetch(nxt)
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

                large = b.numel() * 4 > _RELEASE_ABOVE_BYTES
                if large:  # its temporaries need room the heap's small free blocks lack
                    release_free_memory()  # see keep_freed_memory / release_free_memory
                out = merge_tensor(name, b, load, m, lam, plist, str(base_file), srcs)
                if large:
                    release_free_memory()
                return out

            specs = [(k, fb.dtype(k), fb.shape(k)) for k in base_keys]
            atomic_save_streaming(
                tmp / "model.safetensors",
                specs,
                produce,
                metadata={"format": "pt"},
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
        card = dict(record, base_sha256=hashes[0].result())
        card["taskvectors"] = [
            dict(tv, sha256=h.result()) for tv, h in zip(record["taskvectors"], hashes[1:])
        ]
        atomic_write_text(tmp / CARD_NAME, model_card(card, m.description))
        write_manifest(tmp)
        replace_path(tmp, out_dir)
    except BaseException:
        for h in hashes:
            h.cancel()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
