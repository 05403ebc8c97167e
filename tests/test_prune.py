"""Tests for speechmerge.prune (paper eqs. 1-7)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechmerge.architecture import is_prunable
from speechmerge.prune import (
    count_from_ratio,
    lors,
    lors_dense,
    magnitude_prune,
    rank_from_ratio,
    svp,
)

dims = st.integers(min_value=1, max_value=12)
ratios = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def randn(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


# ---------------------------------------------------------------- ratios


@given(n=st.integers(min_value=0, max_value=10_000), p=ratios)
def test_count_from_ratio(n: int, p: float) -> None:
    k = count_from_ratio(n, p)
    assert 0 <= k <= n
    assert abs(k - p * n) <= 0.5 + 1e-9
    assert count_from_ratio(n, 1.0) == n
    assert count_from_ratio(n, 0.0) == 0


def test_count_rounds_half_up() -> None:
    assert count_from_ratio(10, 0.25) == 3  # 2.5 -> 3 (not banker's 2)
    assert count_from_ratio(3, 0.5) == 2


@given(d=dims, k=dims, r=ratios)
def test_rank_from_ratio(d: int, k: int, r: float) -> None:
    rank = rank_from_ratio((d, k), r)
    m = min(d, k)
    assert 1 <= rank <= m
    assert rank == min(m, max(1, math.ceil(r * m - 1e-9)))


def test_rank_from_ratio_float_noise() -> None:
    assert rank_from_ratio((100, 300), 0.03) == 3  # 0.03 * 100 = 3.0000000000000004
    assert rank_from_ratio((768, 768), 0.01) == 8
    assert rank_from_ratio((768, 3072), 1.0) == 768


def test_bad_ratio() -> None:
    with pytest.raises(ValueError):
        count_from_ratio(10, 1.5)
    with pytest.raises(ValueError):
        rank_from_ratio((3, 3), -0.1)
    with pytest.raises(ValueError):
        rank_from_ratio((3, 3, 3), 0.5)


# ---------------------------------------------------------------- MP, eqs. (1)-(2)


@settings(max_examples=60, deadline=None)
@given(d=dims, k=dims, p=ratios, seed=seeds)
def test_magnitude_prune_keeps_top_k(d: int, k: int, p: float, seed: int) -> None:
    t = randn((d, k), seed)
    out = magnitude_prune(t, p)
    assert out.shape == t.shape and out.dtype == t.dtype
    n_keep = count_from_ratio(t.numel(), p)
    kept = out != 0
    assert int(kept.sum()) == n_keep
    assert torch.equal(out[kept], t[kept])  # M ⊙ W: kept entries unchanged
    if 0 < n_keep < t.numel():
        assert t.abs()[kept].min() >= t.abs()[~kept].max()


def test_magnitude_prune_ties_exact_count() -> None:
    t = torch.ones(4, 5)
    out = magnitude_prune(t, 0.3)
    assert int((out != 0).sum()) == 6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.0001, 0.2, 0.4, 0.9])
@pytest.mark.parametrize("ties", [False, True])
def test_magnitude_prune_large_equals_sort_reference(dtype, p: float, ties: bool) -> None:
    """Inputs above the direct-selection size (sample-bracketed path, in-place threshold and
    copysign): the result is exactly M ⊙ W with M the top k of |w| by a full sort, ties at the
    k-th magnitude going to the lowest flat indices."""
    g = torch.Generator().manual_seed(7)
    t = torch.randn(300, 400, generator=g, dtype=dtype)
    if ties:  # many equal magnitudes (both signs) around the k-th largest
        t = (t * 4).round() / 4
    k = count_from_ratio(t.numel(), p)
    flat = t.reshape(-1)
    # reference: stable sort by descending magnitude -> lowest index first among equals
    order = torch.sort(-flat.abs(), stable=True).indices[:k]
    ref = torch.zeros_like(flat)
    ref[order] = flat[order]
    out = magnitude_prune(t, p)
    assert out.dtype == dtype
    assert torch.equal(out.reshape(-1), ref)
    assert int(torch.count_nonzero(out)) == min(k, int(torch.count_nonzero(flat)))


def test_magnitude_prune_dtype_and_nonfloat() -> None:
    t = randn((6, 7), 0, torch.float16)
    assert magnitude_prune(t, 0.5).dtype == torch.float16
    i = torch.arange(10)
    assert torch.equal(magnitude_prune(i, 0.1), i)


# ---------------------------------------------------------------- SVP, eqs. (3)-(4)


@settings(max_examples=60, deadline=None)
@given(d=dims, k=dims, r=ratios, seed=seeds)
def test_svp_is_truncated_svd(d: int, k: int, r: float, seed: int) -> None:
    t = randn((d, k), seed)
    rank = rank_from_ratio(t.shape, r)
    out = svp(t, r, exact=True)
    assert out.shape == t.shape and out.dtype == t.dtype
    assert int(torch.linalg.matrix_rank(out)) <= rank
    # Eckart–Young: the Frobenius error of the best rank-r approximation.
    s = torch.linalg.svdvals(t)
    expected = torch.sqrt((s[rank:] ** 2).sum())
    assert torch.isclose(torch.linalg.norm(t - out), expected, rtol=1e-7, atol=1e-9)


def test_svp_full_rank_is_identity() -> None:
    t = randn((5, 9), 1, torch.float32)
    assert torch.equal(svp(t, 1.0), t)


def test_svp_float32_and_half() -> None:
    t = randn((20, 30), 2, torch.float32)
    out = svp(t, 0.2, exact=True)
    assert out.dtype == torch.float32
    ref = svp(t.double(), 0.2, exact=True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    assert svp(t.half(), 0.2).dtype == torch.float16


def test_svp_randomized_close_to_exact() -> None:
    g = torch.Generator().manual_seed(3)
    d, k = 200, 150
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(k, k, generator=g))
    s = 0.8 ** torch.arange(k, dtype=torch.float32)
    t = (u * s) @ v.T
    ratio = 0.05  # r = 8 <= 0.25 * 150 -> randomized path by default
    assert rank_from_ratio(t.shape, ratio) == 8
    exact = svp(t, ratio, exact=True)
    auto = svp(t, ratio)
    forced = svp(t, ratio, exact=False)
    assert torch.equal(auto, forced)  # auto picks the (seeded, deterministic) randomized path
    assert torch.equal(auto, svp(t, ratio))
    rel = torch.linalg.norm(auto - exact) / torch.linalg.norm(exact)
    assert rel < 1e-4
    assert int(torch.linalg.matrix_rank(auto, atol=1e-4)) <= 8


# ---------------------------------------------------------------- LoRS, eqs. (5)-(7)


@settings(max_examples=40, deadline=None)
@given(d=dims, k=dims, p=ratios, seed=seeds)
def test_lors_full_rank(d: int, k: int, p: float, seed: int) -> None:
    t = randn((d, k), seed)
    low, sparse = lors(t, 1.0, p)
    torch.testing.assert_close(low, t)
    assert torch.allclose(sparse, torch.zeros_like(sparse), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(d=dims, k=dims, r=ratios, seed=seeds)
def test_lors_keep_all(d: int, k: int, r: float, seed: int) -> None:
    t = randn((d, k), seed)
    low, sparse = lors(t, r, 1.0, exact=True)
    torch.testing.assert_close(low + sparse, t)
    torch.testing.assert_close(lors_dense(t, r, 1.0, exact=True), t)


@settings(max_examples=40, deadline=None)
@given(d=st.integers(2, 12), k=st.integers(2, 12), r=ratios, p=ratios, seed=seeds)
def test_lors_sparse_part(d: int, k: int, r: float, p: float, seed: int) -> None:
    t = randn((d, k), seed)
    low, sparse = lors(t, r, p, exact=True)
    torch.testing.assert_close(low, svp(t, r, exact=True))
    resid = t - low
    if rank_from_ratio(t.shape, r) < min(d, k):  # residual is a.s. dense
        assert int((sparse != 0).sum()) == count_from_ratio(t.numel(), p)
    torch.testing.assert_close(sparse, magnitude_prune(resid, p))
    torch.testing.assert_close(lors_dense(t, r, p, exact=True), low + sparse)


# ---------------------------------------------------------------- which tensors are pruned


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("model.encoder.layers.0.self_attn.q_proj.weight", (8, 8), True),
        ("model.encoder.layers.0.self_attn.k_proj.weight", (8, 8), True),
        ("model.decoder.layers.3.encoder_attn.out_proj.weight", (8, 8), True),
        ("model.decoder.layers.0.fc1.weight", (32, 8), True),
        ("model.decoder.layers.0.fc2.weight", (8, 32), True),
        ("model.encoder.layers.0.self_attn.q_proj.bias", (8,), False),
        ("model.decoder.embed_tokens.weight", (64, 8), False),
        ("model.decoder.embed_positions.weight", (16, 8), False),
        ("model.encoder.embed_positions.weight", (16, 8), False),
        ("proj_out.weight", (64, 8), False),
        ("model.encoder.conv1.weight", (8, 4, 3), False),
        ("model.encoder.layer_norm.weight", (8,), False),
        ("model.encoder.layers.0.self_attn_layer_norm.weight", (8,), False),
    ],
)
def test_is_prunable(name: str, shape: tuple[int, ...], expected: bool) -> None:
    assert is_prunable(name, torch.zeros(shape)) is expected


def test_is_prunable_nonfloat() -> None:
    assert not is_prunable("model.x.q_proj.weight", torch.zeros((4, 4), dtype=torch.int64))


# ---------------------------------------------------------------- randomized SVD accuracy


def decaying(d: int, k: int, seed: int, noise: float = 1e-4) -> torch.Tensor:
    """σ_i = 1/i spectrum with random singular vectors, plus i.i.d. Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    m = min(d, k)
    u, _ = torch.linalg.qr(torch.randn(d, m, generator=g))
    v, _ = torch.linalg.qr(torch.randn(k, m, generator=g))
    s = 1.0 / torch.arange(1, m + 1, dtype=torch.float32)
    return (u * s) @ v.T + noise * torch.randn(d, k, generator=g)


@pytest.mark.parametrize(
    ("d", "k", "ratios"),
    [
        (768, 768, (0.01, 0.05, 0.1, 0.25)),
        (768, 3072, (0.03, 0.05, 0.1)),
        (3072, 768, (0.05, 0.1)),  # tall: factorised as its transpose
    ],
)
def test_svp_randomized_bound_on_decaying_spectrum(d: int, k: int, ratios: tuple) -> None:
    """The accuracy stated in svp's docstring: ‖SVP_rand − SVP_exact‖_F <= 1e-3 ‖τ‖_F
    (measured at most 5.9e-4 on these matrices, 1.5e-4 for r <= 5 %)."""
    t = decaying(d, k, seed=d + k)
    # exact reference from the eigendecomposition of the short-side Gram matrix in float64
    # (cheaper than a full SVD): SVP_exact(τ) = U_r U_rᵀ τ (= τ V_r V_rᵀ), σ_i² = eigenvalues
    t64 = t.double()
    wide = d <= k
    w, q = torch.linalg.eigh(t64 @ t64.T if wide else t64.T @ t64)
    w, q = w.flip(0).clamp(min=0), q.flip(1)
    norm = torch.linalg.norm(t64)
    for ratio in ratios:
        r = rank_from_ratio(t.shape, ratio)
        qr_ = q[:, :r]
        exact = qr_ @ (qr_.T @ t64) if wide else (t64 @ qr_) @ qr_.T
        rand = svp(t, ratio).double()  # the default path: randomized for r <= 0.25 min(d, k)
        assert float(torch.linalg.norm(rand - exact) / norm) <= 1e-3, ratio
        # and near-optimal in the Eckart–Young sense
        opt = float(torch.sqrt(w[r:].sum()))
        assert float(torch.linalg.norm(t64 - rand)) <= opt * (1 + 1e-4) + 1e-6 * float(norm)


def _exact_low_rank_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    few = torch.zeros(200, 300)
    few[[1, 7, 9]] = torch.randn(3, 300, generator=g)
    return {
        "zero": torch.zeros(200, 300),
        "one nonzero row": torch.zeros(200, 300).index_fill_(0, torch.tensor([5]), 1.0),
        "three nonzero rows": few,
        "rank 1": torch.outer(torch.randn(200, generator=g), torch.randn(300, generator=g)),
        "rank 16 (LoRA-like)": torch.randn(768, 16, generator=g)
        @ torch.randn(16, 3072, generator=g),
        "rank 16, tall": torch.randn(3072, 16, generator=g) @ torch.randn(16, 768, generator=g),
    }


@pytest.mark.parametrize("case", list(_exact_low_rank_inputs()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_svp_randomized_on_exact_low_rank(case: str, dtype: torch.dtype) -> None:
    """Matrices of exact low rank exhaust the Krylov space (the next block is rounding noise
    or exactly 0): the basis must stay orthonormal, and SVP must still match the exact one."""
    t = _exact_low_rank_inputs()[case].to(dtype)
    # float64: the Gram matrix squares the junk singular values (~sqrt(eps) σ_1)
    tol = 1e-5 if dtype == torch.float32 else 1e-7
    scale = max(float(torch.linalg.norm(t.double())), 1e-30)
    for ratio in (0.01, 0.05):
        rand = svp(t, ratio).double()
        exact = svp(t.double(), ratio, exact=True)
        assert float(torch.linalg.norm(rand - exact)) <= tol * scale, (case, ratio)


def test_svp_keeps_device_and_factors() -> None:
    from speechmerge.linalg import svd_device
    from speechmerge.prune import svp_factors

    t = decaying(100, 80, seed=1)
    us, v = svp_factors(t, 0.1)
    assert us.shape == (100, 8) and v.shape == (80, 8)
    torch.testing.assert_close(us @ v.T, svp(t, 0.1))
    assert svp(t, 0.1).device == t.device
    assert svd_device(t).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert svp_factors(t, 1.0) is None
