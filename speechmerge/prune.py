"""Pruning operators on task vectors (LoRS-Merging paper, Sec. 3.1.2 and 3.3).

All functions are pure: they take a tensor and return a new tensor of the same shape and dtype.

* :func:`magnitude_prune` -- Magnitude Pruning (MP), eqs. (1)-(2).
* :func:`svp` -- Singular Value Pruning (SVP), eqs. (3)-(4).
* :func:`lors` / :func:`lors_dense` -- Low-Rank + Sparse decomposition, eqs. (5)-(7).
* :func:`rank_from_ratio` / :func:`count_from_ratio` -- how a ratio becomes a rank or a count
  (see "Rounding"); :func:`check_ratio` -- the one check of a ratio in [0, 1].

The SVDs and the top-k selection they run on are :mod:`speechmerge.linalg`.

Which tensors are pruned
------------------------
The paper defines MP/SVP/LoRS on weight matrices ``W in R^{d x k}``. The merge therefore applies
pruning only to 2-D linear-projection weights (attention ``q/k/v/out_proj`` and MLP
``fc1/fc2``), see :func:`speechmerge.architecture.is_prunable`. Every other tensor -- token/
positional embeddings (and the output projection tied to the token embedding), biases, layer
norms, 3-D conv weights, non-float buffers -- has its task vector merged *unpruned* with the
same lambda, i.e. plain task arithmetic. Non-float tensors are never pruned.

Ratios
------
``keep_ratio`` (p) is the fraction of entries kept by MP; ``rank_ratio`` is the fraction of
``min(d, k)`` singular values kept by SVP (the paper's "proportion of low-rank parameters").

Rounding (``rounding=``, config ``merge.rounding``, CLI ``--paper-exact``)
-------------------------------------------------------------------------
* ``"ceil"`` (default): ``r = max(1, ceil(rank_ratio · min(d, k)))`` and
  ``k = round(keep_ratio · n)``; the SVD is the seeded randomized one for small ranks of large
  matrices (``exact=None``). Why the default: a positive ratio never rounds to rank 0 (a
  "1 %" SVP of a 64-wide matrix keeps one direction instead of silently becoming MP), the
  count is the nearest to the stated fraction, and the randomized SVD makes LoRS on
  whisper-small affordable on CPU.
* ``"paper"``: the authors' LoRS-Merging code where it is defined: ``r = int(rank_ratio ·
  min(d, k))`` (floor; rank 0 allowed, then SVP(τ) = 0 and LoRS(τ) = MP(τ), pure magnitude
  pruning), ``k = int(keep_ratio · n)`` (floor), and always the exact ``torch.linalg.svd``.
  The product is floored as a Python float, float noise included (``int(0.29 · 100) = 28``),
  as ``int()`` does there. The prunable tensors are the same in both modes
  (:func:`speechmerge.architecture.is_prunable`).
"""

from __future__ import annotations

import math
from typing import TypedDict, Unpack

import torch
from torch import Tensor

from .linalg import keep_selection, topk_selection, truncated_svd, work_dtype

__all__ = [
    "ROUNDINGS",
    "SVDOptions",
    "check_ratio",
    "check_rounding",
    "count_from_ratio",
    "lors",
    "lors_dense",
    "magnitude_prune",
    "rank_from_ratio",
    "svd_exact",
    "svp",
    "svp_factors",
]

#: Values of ``rounding`` (see the module docstring); the first is the default.
ROUNDINGS: tuple[str, ...] = ("ceil", "paper")


def check_ratio(ratio: float, what: str) -> float:
    """``float(ratio)`` if it is in [0, 1]; else ValueError ``"{what} must be in [0, 1], got
    …"`` (NaN included). The one check of ``rank_ratio``/``keep_ratio``-like values."""
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {ratio!r}")
    return ratio


def check_rounding(rounding: str | None) -> str:
    """``rounding`` validated (None means the default ``"ceil"``); ValueError naming the
    allowed values otherwise."""
    if rounding is None:
        return ROUNDINGS[0]
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    return rounding


def svd_exact(exact: bool | None, rounding: str | None) -> bool | None:
    """The ``exact`` an SVD runs with: always True under ``rounding="paper"`` (the authors
    take the exact SVD), else ``exact`` as given (None: randomized for small ranks)."""
    return True if check_rounding(rounding) == "paper" else exact


def rank_from_ratio(
    shape: tuple[int, ...] | torch.Size, ratio: float, rounding: str | None = None
) -> int:
    """Rank r kept by SVP (eq. 4): ``r = max(1, ceil(ratio * min(d, k)))``, clipped to min(d, k);
    with ``rounding="paper"`` ``r = int(ratio * min(d, k))`` (floor, 0 allowed)."""
    ratio = check_ratio(ratio, "rank_ratio")
    if len(shape) != 2:
        raise ValueError(f"SVP needs a 2-D matrix, got shape {tuple(shape)}")
    m = min(int(shape[0]), int(shape[1]))
    if m == 0:
        return 0
    if check_rounding(rounding) == "paper":
        return min(int(ratio * m), m)
    # round() guards against float noise such as 0.03 * 100 = 3.0000000000000004.
    r = max(1, math.ceil(round(ratio * m, 9)))
    return min(r, m)


def count_from_ratio(numel: int, ratio: float, rounding: str | None = None) -> int:
    """Number of entries k kept by MP (eq. 1, "top p%"): ``round(ratio * numel)`` in [0, numel].

    Rounds half up (not banker's rounding); ratio 1.0 keeps every entry. With
    ``rounding="paper"``: ``int(ratio * numel)`` (floor).
    """
    ratio = check_ratio(ratio, "keep_ratio")
    if check_rounding(rounding) == "paper":
        return max(0, min(int(numel), int(ratio * numel)))
    k = math.floor(round(ratio * numel, 9) + 0.5)
    return max(0, min(int(numel), k))


def magnitude_prune(t: Tensor, keep_ratio: float, rounding: str | None = None) -> Tensor:
    """Magnitude Pruning, eqs. (1)-(2): ``M ⊙ W`` with M selecting the top-k entries by |w|.

    Exactly ``k = count_from_ratio(t.numel(), keep_ratio, rounding)`` entries survive (ties at
    the k-th largest magnitude go to the lowest flat indices, :func:`speechmerge.linalg.topk_mask`);
    all others are set to zero. Non-float tensors are returned unchanged (copy). See
    :func:`speechmerge.linalg.keep_selection`.
    """
    if not t.is_floating_point():
        return t.clone()
    n = t.numel()
    k = count_from_ratio(n, keep_ratio, rounding)
    if k >= n:
        return t.clone()
    if k == 0:
        return torch.zeros_like(t)
    mag = t.abs()
    return keep_selection(t, mag, topk_selection(mag.reshape(-1), k))


def svp_factors(
    t: Tensor, rank_ratio: float, exact: bool | None = None, rounding: str | None = None
) -> tuple[Tensor, Tensor] | None:
    """Factors of SVP (eqs. 3-4): ``(U_r Σ_r, V_r)`` with ``SVP(t) = (U_r Σ_r) V_r^T``.

    ``U_r Σ_r`` is ``d x r`` and ``V_r`` is ``k x r``, both in the work dtype (float32, or
    float64 for float64 input) on ``t``'s device. Returns None when no truncation happens
    (``r = min(d, k)``: SVP is the identity); ``r = 0`` (``rounding="paper"`` only) gives
    ``d x 0`` and ``k x 0`` factors (SVP(t) = 0) without an SVD. See :func:`svp` for ``exact``
    and the accuracy of the randomized path; ``rounding="paper"`` implies ``exact=True``.
    """
    r = rank_from_ratio(t.shape, rank_ratio, rounding)
    if r >= min(t.shape):
        return None
    wd = work_dtype(t.dtype)
    if r == 0:
        d, k = t.shape
        return t.new_zeros((d, 0), dtype=wd), t.new_zeros((k, 0), dtype=wd)
    u, s, v = truncated_svd(t, r, exact=svd_exact(exact, rounding))
    return (u * s).contiguous(), v.contiguous()


def svp(
    t: Tensor, rank_ratio: float, exact: bool | None = None, rounding: str | None = None
) -> Tensor:
    """Singular Value Pruning, eqs. (3)-(4): ``U_r Σ_r V_r^T`` with ``r = rank_from_ratio``.

    ``rounding="paper"``: floor rank (0 allowed: SVP(t) = 0) and the exact SVD, as the
    authors' code (module docstring).

    Computed in float32 (float64 for float64 input) and returned in the input dtype, on the
    input's device (the SVD itself runs on CUDA when available, see
    :func:`speechmerge.linalg.svd_device`).
    ``exact=None`` (default) uses a seeded randomized SVD (block Krylov, blocks of
    ``b = r + 10`` columns, depth 3: 8 products of τ with a b-column block,
    :func:`speechmerge.linalg._randomized_svd`) when ``r <= 0.25 * min(d, k)`` and
    ``min(d, k) >= 64``, and the exact ``torch.linalg.svd`` otherwise; ``exact=True`` forces the exact SVD, ``exact=False``
    forces the randomized one (when r < min(d, k) and r fits the Krylov basis). Non-float
    tensors are returned unchanged.

    Accuracy of the randomized path (measured, float32; ``tests/test_prune.py``): on 768x768,
    768x3072 and 3072x768 matrices with singular values ``σ_i = 1/i`` plus i.i.d. Gaussian
    noise of std 1e-4 (a noise floor near σ_120) and rank ratios 0.01-0.25,
    ``‖SVP_rand − SVP_exact‖_F / ‖τ‖_F`` was at most 5.9e-4 (at 10 %; at most 1.5e-4 for the
    paper's 1-5 %; subspace iteration with 3 power iterations on 2r + 10 columns, which costs
    1.8x the products, reached 4.5e-4) and the Frobenius error ``‖τ − SVP_rand‖_F`` exceeded
    the optimal (Eckart–Young) one by a factor below 1 + 1e-5. On the 192-wide task vectors of
    the default workflow's own fine-tunes the worst case was 3.3e-5. We guarantee (and test)
    the bound ``‖SVP_rand − SVP_exact‖_F <= 1e-3 · ‖τ‖_F`` on such spectra; it is not a
    worst-case bound (randomized SVD has none without a spectral gap), but its error is
    always that of the best rank-r approximation within a 4(r + 10)-dimensional Krylov
    subspace of τ. Matrices of exact low rank (LoRA updates, a few nonzero rows, 0) are
    handled exactly too (tested).
    """
    if not t.is_floating_point():
        return t.clone()
    f = svp_factors(t, rank_ratio, exact=exact, rounding=rounding)
    if f is None:
        return t.clone()
    us, v = f
    return (us @ v.T).to(t.dtype)


def lors(
    t: Tensor,
    rank_ratio: float,
    keep_ratio: float,
    exact: bool | None = None,
    rounding: str | None = None,
) -> tuple[Tensor, Tensor]:
    """LoRS decomposition, eqs. (5)-(7): ``W ≈ L + S``.

    ``L = SVP(W, r)`` (eq. 6) and ``S = MP(W - L, p)`` (eq. 7). Returns ``(L, S)`` in the input
    dtype. The residual is formed in float32/float64 before pruning. ``rounding`` as in
    :func:`svp` / :func:`magnitude_prune` (``"paper"``: rank 0 gives ``L = 0, S = MP(W)``).
    """
    if not t.is_floating_point():
        return t.clone(), torch.zeros_like(t)
    low = svp(t, rank_ratio, exact=exact, rounding=rounding)
    wd = work_dtype(t.dtype)
    resid = t.to(wd) - low.to(wd)
    sparse = magnitude_prune(resid, keep_ratio, rounding).to(t.dtype)
    return low, sparse


class SVDOptions(TypedDict, total=False):
    """The keyword options of :func:`lors` (and :func:`svp`) that :func:`lors_dense` passes on."""

    exact: bool | None
    rounding: str | None


def lors_dense(
    t: Tensor, rank_ratio: float, keep_ratio: float, **opts: Unpack[SVDOptions]
) -> Tensor:
    """``LoRS(τ) = L + S`` as used in the merge, eq. (8); ``opts`` as :func:`lors`'s.

    (A fused ``where(top-k of |τ − L|, τ, L)`` was measured slower on CPU: a masked ``where``
    costs more than :func:`speechmerge.linalg.keep_selection`'s in-place threshold + copysign
    plus one add.)
    """
    low, sparse = lors(t, rank_ratio, keep_ratio, **opts)
    return low.add_(sparse)
