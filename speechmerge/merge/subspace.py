"""Methods that merge in singular-vector subspaces of the layer matrices: TSV-M, Iso-C,
Iso-CTS and CART. Non-matrix tensors (:func:`speechmerge.architecture.is_matrix` is False)
follow each reference code's simple rule (a mean of the τ_i)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..architecture import is_matrix
from ..linalg import orthogonalize, svd, truncated_svd
from ..prune import svp
from .common import exact, mean, plus_lam_mean, ratio_param, sum_each

__all__ = [
    "cart_merging",
    "iso_c_merging",
    "iso_cts_dims",
    "iso_cts_merging",
    "tsv_merging",
    "tsvm_rank",
]


def tsvm_rank(shape: tuple[int, ...] | torch.Size, fraction: float) -> int:
    """Per-task rank of TSV-M: ``max(1, floor(fraction * min(d, k)))``."""
    m = min(int(shape[0]), int(shape[1]))
    return max(1, min(m, math.floor(round(fraction * m, 9))))


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
    if not is_matrix(name, base):
        return plus_lam_mean(base, taskvectors, lam)
    us, ss, vs = [], [], []
    for i in range(n):
        frac = ratio_param(params[i], "tsvm", "rank_fraction", 1.0 / n, i)
        u, s, v = truncated_svd(taskvectors[i], tsvm_rank(base.shape, frac), exact=exact(params[i]))
        us.append(u)
        ss.append(s)
        vs.append(v)
    u_cat, s_cat, v_cat = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vs, dim=1)
    del us, vs
    delta = (orthogonalize(u_cat) * s_cat) @ orthogonalize(v_cat).T
    return delta.mul_(lam).add_(base)


def iso_c_merging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """Iso-C: task-arithmetic sum with its singular values replaced by their mean (Marczak et al.).

    Eqs. (4)-(6) of "No Task Left Behind: Isotropic Model Merging with Common and
    Task-Specific Subspaces" (ICML 2025): ``Δ = Σ_i τ_i = U Σ Vᵀ`` (thin SVD, r = min(d, k)),
    ``σ̄ = (1/r) Σ_j σ_j``, merged ``θ0 + λ σ̄ U Vᵀ`` for layer matrices. Non-matrix tensors
    (and embeddings) follow the reference code: ``θ0 + λ mean_i τ_i``.
    """
    if not is_matrix(name, base):
        return plus_lam_mean(base, taskvectors, lam)
    u, s, vh = svd(sum_each(base, taskvectors))
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
    if not is_matrix(name, base):
        return plus_lam_mean(base, taskvectors, lam)
    frac = ratio_param(params[0], "iso_cts", "common_fraction", 0.8, 0)
    kc, ks = iso_cts_dims(base.shape, n, frac)
    u, s, vh = svd(sum_each(base, taskvectors))
    uc, sc, vc = u[:, :kc], s[:kc], vh[:kc, :].T
    del u, vh
    us_, ss_, vs_ = [], [], []
    if ks > 0:
        for i in range(n):
            tv = taskvectors[i]
            resid = tv - uc @ (uc.T @ tv)
            del tv
            ut, st, vt = truncated_svd(resid, ks, exact=exact(params[i]))
            del resid
            us_.append(ut)
            ss_.append(st)
            vs_.append(vt)
    u_all = torch.cat([*us_, uc], dim=1)
    s_all = torch.cat([*ss_, sc])
    v_all = torch.cat([*vs_, vc], dim=1)
    del us_, vs_
    delta = orthogonalize(u_all) @ orthogonalize(v_all).T
    return delta.mul_(lam * s_all.mean()).add_(base)


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
    avg = mean(base, taskvectors)
    if not is_matrix(name, base):
        return avg.add_(base)
    ratios = [ratio_param(p, "cart", "rank_ratio", 0.08, i) for i, p in enumerate(params)]
    total = sum_each(
        base,
        taskvectors,
        lambda i, tv: svp(tv - avg, ratios[i], exact=exact(params[i])),
    )
    return (base + avg).add_(total, alpha=lam)
