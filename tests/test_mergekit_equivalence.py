"""The engine's per-tensor TA / WA / TIES / DARE against mergekit's own functions (issue 16).

mergekit (Arcee AI, LGPL-3.0; tested with 0.1.5) is an optional test dependency
(``pip install speechmerge[reference]``, or ``pip install --no-deps mergekit``): the whole
module is skipped when it cannot be imported. Each test runs both on the same small float64
tensors; where the two differ by a documented choice (docs/methods.md,
differences from the reference implementations) the test pins that difference instead.
"""

from __future__ import annotations

import pytest
import torch

from speechmerge.merge import dare_mask, merge_state_dicts
from speechmerge.prune import count_from_ratio

mk_registry = pytest.importorskip("mergekit.merge_methods.registry")
mk_base = pytest.importorskip("mergekit.merge_methods.base")

NAME = "model.decoder.layers.0.fc1.weight"  # a prunable matrix (also a TIES / DARE tensor)
SHAPE = (12, 10)


def models(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return base, [base + torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(n)]


def mergekit(method: str, tensors: list[torch.Tensor], base_index: int | None, **params):
    group = mk_base.TensorGroup.from_tensors(tensors, base_index=base_index, name=NAME)
    return mk_registry.get(method)([group], parameters=params)[0]


def engine(method: str, base: torch.Tensor, fts: list[torch.Tensor], lam: float, params=None):
    tvs = [{NAME: ft - base} for ft in fts]
    return merge_state_dicts({NAME: base}, tvs, method, lam, params)[NAME]


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-12) -> bool:
    return bool((a - b).abs().max() <= atol)


def test_task_arithmetic_equals_mergekit() -> None:
    base, fts = models()
    ours = engine("ta", base, fts, 0.3)
    assert close(ours, mergekit("task_arithmetic", [base, *fts], 0, weight=0.3))
    assert close(ours, mergekit("task_arithmetic", [base, *fts], 0, weight=1.0, **{"lambda": 0.3}))


def test_weight_averaging_equals_mergekit_linear() -> None:
    base, fts = models(4)
    assert close(engine("wa", base, fts, 1.0), mergekit("linear", fts, None, weight=1.0))


@pytest.mark.parametrize(("density", "lam"), [(0.2, 1.0), (0.4, 0.7), (1.0, 1.0)])
def test_ties_equals_mergekit_at_equal_k(density: float, lam: float) -> None:
    """Equal k: mergekit keeps max(1, int(density · n)), the engine round(density · n); both
    are 24 / 48 / 120 of 120 entries here."""
    n = SHAPE[0] * SHAPE[1]
    assert count_from_ratio(n, density) == max(1, int(density * n))
    base, fts = models(3, seed=1)
    ours = engine("ties", base, fts, lam, {"keep_ratio": density})
    ref = mergekit("ties", [base, *fts], 0, weight=1.0, density=density, **{"lambda": lam})
    assert close(ours, ref)


def test_ties_sign_election_at_zero_sum_differs_as_documented() -> None:
    """Where the trimmed task vectors sum to exactly 0, mergekit elects + and averages the
    positive entries; the engine elects sign(0) = 0 and drops them (TIES paper: γ = sgn(Σ))."""
    base = torch.zeros(SHAPE, dtype=torch.float64)
    t1 = torch.full(SHAPE, 0.5, dtype=torch.float64)
    t1[0, 0] = 2.0
    t2 = torch.full(SHAPE, 0.25, dtype=torch.float64)
    t2[0, 0] = -2.0
    ours = engine("ties", base, [t1, t2], 1.0, {"keep_ratio": 1.0})
    ref = mergekit("ties", [base, t1, t2], 0, weight=1.0, density=1.0)
    assert ours[0, 0] == 0.0 and ref[0, 0] == 2.0
    rest = torch.ones(SHAPE, dtype=torch.bool)
    rest[0, 0] = False
    assert close(ours[rest], ref[rest])


def test_dare_linear_equals_mergekit_with_the_same_mask(monkeypatch) -> None:
    """Same Bernoulli masks (the engine's, handed to mergekit through ``torch.bernoulli``):
    without rescaling, mergekit's ``dare_linear`` with weight λ/(1 − p) is the engine's DARE
    (rescale 1/(1 − p), DARE paper eq. 1); with its default ``rescale`` mergekit multiplies
    the survivors by ‖τ‖₁ / ‖m ⊙ τ‖₁ instead. (mergekit's random sparsification computes in
    float32 on the CPU, hence the float32 tolerance.)"""
    base, fts = models(3, seed=2)
    p, seed, lam = 0.6, 7, 0.5
    masks = [dare_mask(SHAPE, p, seed, NAME, i).to(torch.float64) for i in range(len(fts))]
    calls = iter(masks * 2)

    def bernoulli(probs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        assert torch.all(probs == 1 - p)  # mergekit's density = the keep probability
        return next(calls).to(probs.dtype)

    monkeypatch.setattr(torch, "bernoulli", bernoulli)
    ours = engine("dare", base, fts, lam, {"drop_rate": p, "seed": seed})
    no_rescale = mergekit(
        "dare_linear", [base, *fts], 0, weight=lam / (1 - p), density=1 - p, rescale=False
    )
    assert close(ours, no_rescale, 1e-6)
    l1 = mergekit("dare_linear", [base, *fts], 0, weight=lam, density=1 - p)
    taus = [ft - base for ft in fts]
    want = base + lam * sum(
        m * t * (t.abs().sum() / (m * t).abs().sum()) for m, t in zip(masks, taus)
    )
    assert close(l1, want, 1e-6)
