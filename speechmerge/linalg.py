"""Linear algebra of the merge engine: SVDs and exact top-k selection (no paper semantics).

* :func:`truncated_svd` -- top-r singular triplets: a seeded randomized block Krylov SVD for
  small ranks of large matrices (:func:`_randomized_svd`), else ``torch.linalg.svd``;
  :func:`svd` (thin, full) and :func:`orthogonalize` (polar factor). All run on CUDA when
  available (:func:`svd_device`) and return on the input's device.
* :func:`topk_selection` and its appliers (:func:`keep_selection`, :func:`mask_from_selection`,
  :func:`topk_mask`, :func:`topk_threshold`, :func:`mask_from_threshold`): the exact top-k set
  of a tensor, ties broken towards the lowest flat index.
* :func:`work_dtype` -- the precision computations run in (float32; float64 for float64).

The paper's operators built on these (MP, SVP, LoRS, and how a ratio becomes a rank or a
count) are in :mod:`speechmerge.prune`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "keep_selection",
    "mask_from_selection",
    "mask_from_threshold",
    "orthogonalize",
    "svd",
    "svd_device",
    "topk_mask",
    "topk_selection",
    "topk_threshold",
    "truncated_svd",
    "work_dtype",
]

# Randomized SVD settings (used only for small ranks of large matrices, see `truncated_svd`).
_LOWRANK_MAX_FRACTION = 0.25
_LOWRANK_MIN_DIM = 64
_LOWRANK_DEPTH = 3
_LOWRANK_SEED = 0
# Exact top-k selection: below this size torch.kthvalue on the whole input; above it a
# sample-bracketed kthvalue (see `topk_threshold`).
_SELECT_DIRECT_MAX = 1 << 16
_SELECT_SAMPLE = 1 << 14


def _lowrank_block(r: int, m: int) -> int:
    """Block size of the randomized SVD: ``r + 10`` (oversampling), capped so that the Krylov
    basis (``_LOWRANK_DEPTH + 1`` blocks) has at most ``min(d, k)`` columns."""
    return max(1, min(r + 10, m // (_LOWRANK_DEPTH + 1)))


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision computations on a tensor of ``dtype`` run in: float64 for float64, else
    float32 (half precisions are promoted)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def svd_device(t: Tensor) -> torch.device:
    """Device the SVDs run on: the current CUDA device when CUDA is available, else ``t``'s.

    Factorizations of CPU tensors are moved to the GPU when there is one (and the results moved
    back to the input's device by the callers); tensors already on a GPU stay there.
    """
    if t.device.type == "cpu" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def topk_selection(a: Tensor, k: int) -> tuple[float, int, int]:
    """``(thr, ties, n_eq)``: :func:`topk_threshold`'s result plus the number of entries of ``a``
    equal to ``thr`` (so ``ties == n_eq`` means the top-k set is exactly ``a >= thr``). Apply
    it with :func:`mask_from_selection` or :func:`keep_selection`."""
    n = a.numel()
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    if n > _SELECT_DIRECT_MAX:
        g = torch.Generator(device=a.device).manual_seed(_LOWRANK_SEED)
        s = _SELECT_SAMPLE
        sample = a[torch.randint(n, (s,), generator=g, device=a.device)]
        pos = k / n * s  # expected sample rank (descending, 0-based) of the k-th largest
        margin = 6.0 * math.sqrt(max(pos * (1.0 - k / n), 1.0)) + 8.0
        i_hi, i_lo = int(pos - margin), int(pos + margin)
        # the i-th largest sample value (0-based) is the (s - i)-th smallest: two kthvalue
        # calls instead of sorting the sample (~10x cheaper)
        hi = float(torch.kthvalue(sample, s - i_hi).values) if i_hi >= 0 else None
        lo = float(torch.kthvalue(sample, s - i_lo).values) if i_lo < s else None
        # counts with count_nonzero and comparisons with Python floats: several times faster
        # on CPU than bool .sum() and 0-d tensor operands
        above = int(torch.count_nonzero(a > hi)) if hi is not None else 0
        if above < k:
            if hi is None and lo is None:
                cand = a
            elif hi is None:
                cand = a[a >= lo]
            else:
                sel = a <= hi
                if lo is not None:
                    sel.logical_and_(a >= lo)
                cand = a[sel]
                del sel
            need = k - above
            if 0 < need <= cand.numel():
                thr = float(torch.kthvalue(cand, cand.numel() - need + 1).values)
                n_gt = above + int(torch.count_nonzero(cand > thr))
                n_eq = int(torch.count_nonzero(cand == thr))
                return thr, k - n_gt, n_eq
    thr = float(torch.kthvalue(a, n - k + 1).values)
    n_gt = int(torch.count_nonzero(a > thr))
    n_eq = int(torch.count_nonzero(a == thr))
    return thr, k - n_gt, n_eq


def topk_threshold(a: Tensor, k: int) -> tuple[float, int]:
    """``(thr, ties)`` describing the top-``k`` entries of a 1-D float tensor ``a`` exactly.

    The top-k set is every entry ``> thr`` plus the first ``ties`` entries (lowest indices)
    equal to ``thr``; ``thr`` is the k-th largest value (``1 <= k < a.numel()``). Rebuild the
    mask with :func:`mask_from_threshold`; a second pass over the same data gives the same set
    without a second selection (TIES uses that).

    Fast path for large inputs: the k-th largest value is bracketed from a fixed-seed random
    sample of ``2**14`` entries (±6 standard deviations of the sample rank), the entries above
    the bracket are counted, and ``torch.kthvalue`` runs only on the entries inside it; if the
    bracket misses (rare, e.g. heavy ties) it falls back to ``kthvalue`` on all of ``a``.
    Either way the result is exact.
    """
    thr, ties, _ = topk_selection(a, k)
    return thr, ties


def mask_from_threshold(a: Tensor, thr: float, ties: int) -> Tensor:
    """Boolean mask of the entries ``> thr`` plus the first ``ties`` entries ``== thr``."""
    if ties <= 0:
        return a > thr
    eq = a == thr
    n_eq = int(torch.count_nonzero(eq))
    if ties >= n_eq:
        return eq.logical_or_(a > thr)
    idx = eq.nonzero().reshape(-1)[:ties]
    mask = a > thr
    mask[idx] = True
    return mask


def mask_from_selection(a: Tensor, selection: tuple[float, int, int]) -> Tensor:
    """Boolean mask of the top-k set of ``a`` described by ``selection`` (from
    :func:`topk_selection` on the same data): one comparison when every entry equal to the
    threshold is kept (the usual case), else :func:`mask_from_threshold`."""
    thr, ties, n_eq = selection
    if ties == n_eq:
        return a >= thr
    return mask_from_threshold(a, thr, ties)


def keep_selection(t: Tensor, mag: Tensor, selection: tuple[float, int, int]) -> Tensor:
    """``t`` on the top-k set of ``mag = |t|`` described by ``selection`` (from
    :func:`topk_selection` on ``mag``), 0 elsewhere: Magnitude Pruning with a known selection.
    ``mag`` is overwritten (it becomes the result when possible).

    Without ties at the threshold (the usual case) the kept set is ``|t| >= thr`` and the
    result is built in place in ``mag`` with two vectorised passes (``threshold_``,
    ``copysign``); a masked ``where`` on a random mask is several times slower on CPU.
    """
    thr, ties, n_eq = selection
    if ties == n_eq and 0 < thr < math.inf and t.dtype in (torch.float32, torch.float64):
        # keep |t| >= thr: threshold_ zeroes the entries <= the float (of t's dtype) below thr
        below = torch.nextafter(torch.tensor(thr, dtype=t.dtype), torch.tensor(0.0, dtype=t.dtype))
        torch.nn.functional.threshold_(mag, float(below), 0.0)
        return torch.copysign(mag, t, out=mag)
    mask = mask_from_selection(mag.reshape(-1), selection).reshape(t.shape)
    return torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device))


def topk_mask(a: Tensor, k: int) -> Tensor:
    """Boolean mask (same shape as ``a``) of exactly ``k`` largest entries of float ``a``.

    Ties at the k-th largest value are broken towards the lowest flat index (deterministic).
    """
    n = a.numel()
    if k <= 0:
        return torch.zeros(a.shape, dtype=torch.bool, device=a.device)
    if k >= n:
        return torch.ones(a.shape, dtype=torch.bool, device=a.device)
    flat = a.reshape(-1)
    return mask_from_selection(flat, topk_selection(flat, k)).reshape(a.shape)


_OMEGA_CACHE: dict[tuple, Tensor] = {}


def _omega(k: int, b: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The seeded Gaussian test matrix Ω (k x b) of the randomized SVD, cached per shape.

    Ω depends only on (k, b, dtype, device) -- the generator is reseeded for every matrix -- so
    it is drawn once per shape (a merge has a handful) instead of once per matrix.
    """
    key = (k, b, dtype, str(device))
    om = _OMEGA_CACHE.get(key)
    if om is None:
        if len(_OMEGA_CACHE) >= 16:
            _OMEGA_CACHE.clear()
        g = torch.Generator(device=device).manual_seed(_LOWRANK_SEED)
        om = torch.randn(k, b, generator=g, device=device, dtype=dtype)
        _OMEGA_CACHE[key] = om
    return om


def _randomized_svd(x: Tensor, r: int, b: int, depth: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-r SVD of ``x`` by a randomized block Krylov method (block size b, ``depth`` steps).

    Musco & Musco (2015), "Randomized block Krylov methods for stronger and faster approximate
    singular value decomposition", Alg. 2, with two savings:

    * the Krylov basis ``K = [Q_0, ..., Q_depth]`` (d x b(depth+1)) of
      ``span{x Ω, (x xᵀ) x Ω, ..., (x xᵀ)^depth x Ω}`` is built block by block, each new block
      orthogonalised against all previous ones (twice, classical block Gram-Schmidt) and
      orthonormalised by a QR, so K is orthonormal without a final QR;
    * the Rayleigh-Ritz projection ``Z = xᵀ K`` (k x b(depth+1)) is not a separate product: its
      first ``depth`` blocks ``xᵀ Q_j`` are computed anyway to form the next block, only the
      last one costs a product. In all, ``2(depth + 1)`` products of ``x`` (or ``xᵀ``) with a
      b-column block, versus ``2(niter + 1)`` products with a wider (usually 2r + 10) block for
      subspace iteration of the same polynomial degree.

    The top-r eigenpairs of the small Gram matrix ``Zᵀ Z`` (in ``x``'s dtype; for float32 input
    redone in float64 when σ_r² is too close to float32's resolution, see below) give ``σ_i²``
    and ``U_r = K W_r``, ``V_r = Z W_r / σ``. Tall matrices are
    transposed first, so the basis and its QRs live on the short side. Ω is Gaussian with a
    fixed seed (:func:`_omega`), so the result is deterministic. Returns ``(U_r, s_r, V_r)`` in
    ``x``'s dtype; columns of V_r with s = 0 are 0.
    """
    if x.shape[0] > x.shape[1]:
        u, s, v = _randomized_svd(x.T, r, b, depth)
        return v, s, u
    d, k = x.shape
    y = x @ _omega(k, b, x.dtype, x.device)
    if not bool(y.any()):  # x = 0 (with probability 1): SVP(0) = 0
        zeros = torch.zeros(r, dtype=x.dtype, device=x.device)
        u = torch.zeros(d, r, dtype=x.dtype, device=x.device)
        return u, zeros, torch.zeros(k, r, dtype=x.dtype, device=x.device)
    width = b * (depth + 1)
    basis = torch.empty(d, width, dtype=x.dtype, device=x.device)
    z = torch.empty(k, width, dtype=x.dtype, device=x.device)
    basis[:, :b] = torch.linalg.qr(y).Q
    for j in range(depth + 1):
        zj = x.T @ basis[:, j * b : (j + 1) * b]
        z[:, j * b : (j + 1) * b] = zj
        if j == depth:
            break
        y = x @ zj
        prev = basis[:, : (j + 1) * b]
        for _ in range(2):  # twice is enough (Giraud et al. 2005)
            y.sub_(prev @ (prev.T @ y))
        basis[:, (j + 1) * b : (j + 2) * b] = torch.linalg.qr(y).Q
        del y, zj
    # The QR of a (numerically) rank-deficient y -- x of exact low rank whose range the basis
    # already holds, e.g. a LoRA update or a few nonzero rows -- returns directions that need
    # not be orthogonal to the previous blocks. Check (cheap: width² · d flops) and, if so,
    # re-orthonormalise the whole basis (same span) and project x on it once more.
    gram = basis.T @ basis
    gram.diagonal().sub_(1.0)
    if not float(gram.abs().max()) <= 100 * torch.finfo(x.dtype).eps:  # ~1e-6 measured
        basis = torch.linalg.qr(basis).Q
        z = x.T @ basis
    del gram
    # Ritz pairs from the Gram matrix zᵀz. In float32 (a third of the time of float64) its
    # eigenvalues are accurate to ~eps σ_1²; redo it in float64 when σ_r² comes within
    # 1000 eps σ_1² of that (deep ranks of a fast-decaying spectrum), where float32 mixes the
    # r-th Ritz vector with its neighbours.
    w, wv = torch.linalg.eigh(z.T @ z)  # ascending
    if x.dtype != torch.float64 and float(w[-r]) < 1e3 * torch.finfo(w.dtype).eps * float(w[-1]):
        z64 = z.double()
        w, wv = torch.linalg.eigh(z64.T @ z64)
        del z64
    wv = wv[:, -r:].flip(1).to(x.dtype)
    s = w[-r:].flip(0).clamp(min=0).sqrt().to(x.dtype)
    u = basis @ wv
    v = (z @ wv) / torch.where(s > 0, s, torch.ones_like(s))
    return u, s, v


def truncated_svd(a: Tensor, r: int, exact: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-r singular triplets ``(U_r, s_r, V_r)`` of a 2-D float tensor: ``a ≈ U_r diag(s_r) V_r^T``.

    ``U_r`` is ``d x r``, ``s_r`` has length r, ``V_r`` is ``k x r``; all in the work dtype
    (float32, float64 for float64 input) on ``a``'s device; the SVD itself runs on CUDA when
    available (:func:`svd_device`). ``exact=None`` picks the seeded randomized SVD when
    ``r <= 0.25 * min(d, k)`` and ``min(d, k) >= 64``, else ``torch.linalg.svd`` (see
    :func:`speechmerge.prune.svp` for its accuracy).
    """
    m = min(a.shape)
    r = max(0, min(int(r), m))
    dev = svd_device(a)
    x = a.to(device=dev, dtype=work_dtype(a.dtype))
    if exact is None:
        exact = not (r <= _LOWRANK_MAX_FRACTION * m and m >= _LOWRANK_MIN_DIM)
    b = _lowrank_block(r, m)
    if exact or r >= m or r == 0 or r > b * (_LOWRANK_DEPTH + 1):
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        u, s, v = u[:, :r], s[:r], vh[:r, :].T
    else:
        u, s, v = _randomized_svd(x, r, b, _LOWRANK_DEPTH)
    return u.to(a.device), s.to(a.device), v.to(a.device)


def svd(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``a = U diag(s) Vh`` (on CUDA when available), results on ``a``'s device."""
    dev = svd_device(a)
    u, s, vh = torch.linalg.svd(a.to(dev), full_matrices=False)
    return u.to(a.device), s.to(a.device), vh.to(a.device)


def orthogonalize(x: Tensor) -> Tensor:
    """Closest matrix with orthonormal columns (polar factor): ``P Qᵀ`` for ``x = P Σ Qᵀ``."""
    p, _, qh = svd(x)
    return p @ qh
