"""Methods that prune or drop each task vector before summing: the paper's MP/SVP/LoRS-Merging
(θ0 + λ Σ P(τ_i), :mod:`speechmerge.prune`), TIES-Merging (trim, elect, disjoint mean) and DARE
(random drop and rescale)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..linalg import keep_selection, topk_selection
from ..prune import count_from_ratio, lors_dense, magnitude_prune, svp
from .common import (
    MergeFn,
    Prune,
    exact,
    method_param,
    pruned_task_arithmetic,
    ratio_param,
    sum_each,
)

__all__ = [
    "dare_mask",
    "dare_merging",
    "lors_merging",
    "mp_merging",
    "svp_merging",
    "ties_merging",
]


def _mp(t: Tensor, p: dict[str, Any]) -> Tensor:
    return magnitude_prune(t, p["keep_ratio"], p.get("rounding"))


def _svp(t: Tensor, p: dict[str, Any]) -> Tensor:
    return svp(t, p["rank_ratio"], exact=exact(p), rounding=p.get("rounding"))


def _lors(t: Tensor, p: dict[str, Any]) -> Tensor:
    return lors_dense(
        t, p["rank_ratio"], p["keep_ratio"], exact=exact(p), rounding=p.get("rounding")
    )


def _pruned_merging(name: str, prune: Prune, doc: str) -> MergeFn:
    """The merge function ``name``: ``θ0 + λ Σ P(τ_i)`` with ``P = prune`` on prunable matrices
    (:func:`speechmerge.merge.common.pruned_task_arithmetic`), documented by ``doc``."""

    def merge(
        tensor: str,
        base: Tensor,
        taskvectors: Sequence[Tensor],
        params: list[dict[str, Any]],
        lam: float,
    ) -> Tensor:
        return pruned_task_arithmetic(tensor, base, taskvectors, params, lam, prune)

    merge.__name__ = merge.__qualname__ = name
    merge.__doc__ = doc
    return merge


mp_merging = _pruned_merging("mp_merging", _mp, "MP-Merging: θ0 + λ Σ MP(τ_i, p_i) (eqs. 1-2).")
svp_merging = _pruned_merging(
    "svp_merging", _svp, "SVP-Merging: θ0 + λ Σ SVP(τ_i, r_i) (eqs. 3-4)."
)
lors_merging = _pruned_merging(
    "lors_merging", _lors, "LoRS-Merging: θ0 + λ Σ (L_i + S_i) (eqs. 5-8)."
)


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
    top-k selection, :func:`speechmerge.linalg.topk_selection`); pass 2 re-reads τ_i, rebuilds
    τ̂_i from its selection and accumulates the agreeing entries and their count.
    """
    n = len(taskvectors)
    ks = [
        count_from_ratio(base.numel(), ratio_param(p, "ties", "keep_ratio", 0.2, i))
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

    elected = sum_each(base, taskvectors, lambda i, tv: trim(i, tv, True)).sign_()
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

    return sum_each(base, taskvectors, drop).mul_(lam).add_(base)
