"""Pruning operators on task vectors (LoRS-Merging paper, Sec. 3.1.2 and 3.3).

All functions are pure: they take a tensor and return a new tensor of the same shape and dtype.

* :func:`magnitude_prune` -- Magnitude Pruning (MP), eqs. (1)-(2).
* :func:`svp` -- Singular Value Pruning (SVP), eqs. (3)-(4).
* :func:`lors` / :func:`lors_dense` -- Low-Rank + Sparse decomposition, eqs. (5)-(7).

Which tensors are pruned
------------------------
The paper defines MP/SVP/LoRS on weight matrices ``W in R^{d x k}``. We therefore apply pruning
only to 2-D linear-projection weights (attention ``q/k/v/out_proj`` and MLP ``fc1/fc2``), see
:func:`is_prunable`. Every other tensor -- token/positional embeddings (and the output projection
tied to the token embedding), biases, layer norms, 3-D conv weights, non-float buffers -- has its
task vector merged *unpruned* with the same lambda, i.e. plain task arithmetic. Non-float tensors
are never pruned.

Ratios
------
``keep_ratio`` (p) is the fraction of entries kept by MP; ``rank_ratio`` is the fraction of
``min(d, k)`` singular values kept by SVP (the paper's "proportion of low-rank parameters").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "NON_PRUNABLE_SUBSTRINGS",
    "count_from_ratio",
    "is_prunable",
    "lors",
    "lors_dense",
    "magnitude_prune",
    "rank_from_ratio",
    "svd_device",
    "svp",
    "svp_factors",
    "truncated_svd",
]

#: Name fragments of 2-D weights that are embeddings (or tied to one) and are never pruned.
NON_PRUNABLE_SUBSTRINGS: tuple[str, ...] = (
    "embed_tokens",
    "embed_positions",
    "proj_out",
    "lm_head",
)

# Randomized SVD settings (used only for small ranks of large matrices, see `svp`).
_LOWRANK_MAX_FRACTION = 0.25
_LOWRANK_MIN_DIM = 64
_LOWRANK_NITER = 10
_LOWRANK_SEED = 0


def _lowrank_q(r: int, m: int) -> int:
    """Subspace size of the randomized SVD: ``2r + 10`` (oversampling), at most ``min(d, k)``."""
    return min(m, 2 * r + 10)


def svd_device(t: Tensor) -> torch.device:
    """Device the SVDs run on: the current CUDA device when CUDA is available, else ``t``'s.

    Factorizations of CPU tensors are moved to the GPU when there is one (and the results moved
    back to the input's device by the callers); tensors already on a GPU stay there.
    """
    if t.device.type == "cpu" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def _check_ratio(ratio: float, what: str) -> float:
    ratio = float(ratio)
    if not (0.0 <= ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"{what} must be in [0, 1], got {ratio!r}")
    return ratio


def rank_from_ratio(shape: tuple[int, ...] | torch.Size, ratio: float) -> int:
    """Rank r kept by SVP (eq. 4): ``r = max(1, ceil(ratio * min(d, k)))``, clipped to min(d, k)."""
    ratio = _check_ratio(ratio, "rank_ratio")
    if len(shape) != 2:
        raise ValueError(f"SVP needs a 2-D matrix, got shape {tuple(shape)}")
    m = min(int(shape[0]), int(shape[1]))
    if m == 0:
        return 0
    # round() guards against float noise such as 0.03 * 100 = 3.0000000000000004.
    r = max(1, math.ceil(round(ratio * m, 9)))
    return min(r, m)


def count_from_ratio(numel: int, ratio: float) -> int:
    """Number of entries k kept by MP (eq. 1, "top p%"): ``round(ratio * numel)`` in [0, numel].

    Rounds half up (not banker's rounding); ratio 1.0 keeps every entry.
    """
    ratio = _check_ratio(ratio, "keep_ratio")
    k = math.floor(round(ratio * numel, 9) + 0.5)
    return max(0, min(int(numel), k))


def magnitude_prune(t: Tensor, keep_ratio: float) -> Tensor:
    """Magnitude Pruning, eqs. (1)-(2): ``M ⊙ W`` with M selecting the top-k entries by |w|.

    Exactly ``k = count_from_ratio(t.numel(), keep_ratio)`` entries survive (ties are broken by
    ``torch.topk``); all others are set to zero. Non-float tensors are returned unchanged (copy).
    """
    if not t.is_floating_point():
        return t.clone()
    n = t.numel()
    k = count_from_ratio(n, keep_ratio)
    if k >= n:
        return t.clone()
    flat = t.reshape(-1)
    out = torch.zeros_like(flat)
    if k > 0:
        idx = torch.topk(flat.abs(), k, sorted=False).indices
        out[idx] = flat[idx]
    return out.reshape(t.shape)


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def truncated_svd(a: Tensor, r: int, exact: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-r singular triplets ``(U_r, s_r, V_r)`` of a 2-D float tensor: ``a ≈ U_r diag(s_r) V_r^T``.

    ``U_r`` is ``d x r``, ``s_r`` has length r, ``V_r`` is ``k x r``; all in the work dtype
    (float32, float64 for float64 input) on ``a``'s device; the SVD itself runs on CUDA when
    available (:func:`svd_device`). ``exact=None`` picks the seeded randomized SVD when
    ``r <= 0.25 * min(d, k)`` and ``min(d, k) >= 64``, else ``torch.linalg.svd`` (see
    :func:`svp` for its accuracy).
    """
    m = min(a.shape)
    r = max(0, min(int(r), m))
    dev = svd_device(a)
    x = a.to(device=dev, dtype=_work_dtype(a))
    if exact is None:
        exact = not (r <= _LOWRANK_MAX_FRACTION * m and m >= _LOWRANK_MIN_DIM)
    if exact or r >= m:
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        u, s, v = u[:, :r], s[:r], vh[:r, :].T
    else:
        devices = [dev.index if dev.index is not None else 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_LOWRANK_SEED)
            u, s, v = torch.svd_lowrank(x, q=_lowrank_q(r, m), niter=_LOWRANK_NITER)
        u, s, v = u[:, :r], s[:r], v[:, :r]
    return u.to(a.device), s.to(a.device), v.to(a.device)


def svp_factors(
    t: Tensor, rank_ratio: float, exact: bool | None = None
) -> tuple[Tensor, Tensor] | None:
    """Factors of SVP (eqs. 3-4): ``(U_r Σ_r, V_r)`` with ``SVP(t) = (U_r Σ_r) V_r^T``.

    ``U_r Σ_r`` is ``d x r`` and ``V_r`` is ``k x r``, both in the work dtype (float32, or
    float64 for float64 input) on ``t``'s device. Returns None when no truncation happens
    (``r = min(d, k)``: SVP is the identity). See :func:`svp` for ``exact`` and the accuracy of
    the randomized path.
    """
    r = rank_from_ratio(t.shape, rank_ratio)
    if r >= min(t.shape):
        return None
    u, s, v = truncated_svd(t, r, exact=exact)
    return (u * s).contiguous(), v.contiguous()


def svp(t: Tensor, rank_ratio: float, exact: bool | None = None) -> Tensor:
    """Singular Value Pruning, eqs. (3)-(4): ``U_r Σ_r V_r^T`` with ``r = rank_from_ratio``.

    Computed in float32 (float64 for float64 input) and returned in the input dtype, on the
    input's device (the SVD itself runs on CUDA when available, see :func:`svd_device`).
    ``exact=None`` (default) uses a seeded randomized SVD (``torch.svd_lowrank`` with
    ``niter=10`` power iterations and a subspace of ``q = 2r + 10`` columns) when
    ``r <= 0.25 * min(d, k)`` and ``min(d, k) >= 64``, and the exact ``torch.linalg.svd``
    otherwise; ``exact=True`` forces the exact SVD, ``exact=False`` forces the randomized one
    (when r < min(d, k)). Non-float tensors are returned unchanged.

    Accuracy of the randomized path (measured, float32; ``tests/test_prune.py``): on 768x768 and
    768x3072 matrices with singular values ``σ_i = 1/i`` plus i.i.d. Gaussian noise of std 1e-4
    (a noise floor near σ_120) and rank ratios 0.01-0.25, ``‖SVP_rand − SVP_exact‖_F / ‖τ‖_F``
    was at most 7e-5 and the Frobenius error ``‖τ − SVP_rand‖_F`` exceeded the optimal
    (Eckart–Young) one by a factor below 1 + 1e-5. We guarantee (and test) the bound
    ``‖SVP_rand − SVP_exact‖_F <= 1e-3 · ‖τ‖_F`` on such spectra; it is not a worst-case bound
    (randomized SVD has none without a spectral gap), but its error is always that of a
    rank-r approximation within a 2r+10-dimensional Krylov subspace of τ.
    """
    if not t.is_floating_point():
        return t.clone()
    f = svp_factors(t, rank_ratio, exact=exact)
    if f is None:
        return t.clone()
    us, v = f
    return (us @ v.T).to(t.dtype)


def lors(
    t: Tensor, rank_ratio: float, keep_ratio: float, exact: bool | None = None
) -> tuple[Tensor, Tensor]:
    """LoRS decomposition, eqs. (5)-(7): ``W ≈ L + S``.

    ``L = SVP(W, r)`` (eq. 6) and ``S = MP(W - L, p)`` (eq. 7). Returns ``(L, S)`` in the input
    dtype. The residual is formed in float32/float64 before pruning.
    """
    if not t.is_floating_point():
        return t.clone(), torch.zeros_like(t)
    low = svp(t, rank_ratio, exact=exact)
    wd = _work_dtype(t)
    resid = t.to(wd) - low.to(wd)
    sparse = magnitude_prune(resid, keep_ratio).to(t.dtype)
    return low, sparse


def lors_dense(
    t: Tensor, rank_ratio: float, keep_ratio: float, exact: bool | None = None
) -> Tensor:
    """``LoRS(τ) = L + S`` as used in the merge, eq. (8)."""
    low, sparse = lors(t, rank_ratio, keep_ratio, exact=exact)
    return low + sparse


def is_prunable(name: str, tensor: Tensor) -> bool:
    """Whether MP/SVP/LoRS apply to this tensor: 2-D float ``*.weight`` of a linear projection.

    False for embeddings (``embed_tokens``, ``embed_positions``, and the tied output projection
    ``proj_out`` / ``lm_head``), 1-D tensors (biases, layer norms), conv weights (3-D) and
    non-float tensors.
    """
    if not name.endswith(".weight"):
        return False
    if tensor.ndim != 2 or not tensor.is_floating_point():
        return False
    return not any(s in name for s in NON_PRUNABLE_SUBSTRINGS)
