"""Tests of the newer merge methods against their papers' definitions (hand-computed examples).

TIES-Merging (Yadav et al. 2023), DARE (Yu et al. 2024), TSV-M (Gargiulo et al. 2025),
Iso-C / Iso-CTS (Marczak et al. 2025), CART (Choi et al. 2024).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from speechmerge.merge import (
    METHODS,
    dare_mask,
    get_method,
    iso_cts_dims,
    merge_models,
    merge_state_dicts,
    method_param,
    tsvm_rank,
)
from speechmerge.merge.pruned import _dare_seed

MAT = "model.encoder.layers.0.fc1.weight"  # a "layer matrix" (prunable)
VEC = "model.encoder.layers.0.fc1.bias"  # a non-matrix tensor
EMB = "model.decoder.embed_tokens.weight"  # 2-D but an embedding: treated as non-matrix

NEW = ["ties", "dare", "tsvm", "iso_c", "iso_cts", "cart"]


def run(
    method: str,
    base: torch.Tensor,
    tvs: list[torch.Tensor],
    lam: float,
    name: str = MAT,
    params=None,
) -> torch.Tensor:
    out = merge_state_dicts({name: base}, [{name: t} for t in tvs], method, lam, params)
    return out[name]


def polar(a: torch.Tensor) -> torch.Tensor:
    """Independent reference of the orthogonalization: A (AᵀA)^{-1/2} (A with full column rank)."""
    w, q = torch.linalg.eigh(a.T @ a)
    return a @ (q * w.rsqrt()) @ q.T


def test_registered_with_descriptions() -> None:
    assert set(NEW) <= set(METHODS)
    for m in NEW:
        assert get_method(m).description and "\n" not in get_method(m).description


def test_method_param_precedence() -> None:
    p = {"keep_ratio": 0.4, "ties": {"keep_ratio": 0.1}}
    assert method_param(p, "ties", "keep_ratio", 0.2) == 0.1
    assert method_param(p, "mp", "keep_ratio", 0.2) == 0.4
    assert method_param({}, "ties", "keep_ratio", 0.2) == 0.2


# ---------------------------------------------------------------- TIES


def test_ties_by_hand() -> None:
    t1 = torch.tensor([1.0, -2.0, 0.5, 3.0])
    t2 = torch.tensor([-4.0, 1.0, 0.1, -0.2])
    t3 = torch.tensor([2.0, 3.0, -0.3, 0.1])
    # trim to top-50 %: [0,-2,0,3], [-4,1,0,0], [2,3,0,0]; elected sign of the sum
    # [-2, 2, 0, 3] -> [-, +, 0, +]; disjoint means: -4, (1+3)/2, 0, 3
    base = torch.tensor([10.0, 20.0, 30.0, 40.0])
    out = run("ties", base, [t1, t2, t3], 0.5, VEC, {"keep_ratio": 0.5})
    torch.testing.assert_close(out, base + 0.5 * torch.tensor([-4.0, 2.0, 0.0, 3.0]))
    # the method's own section overrides the flat key (how the workflow config passes it)
    out2 = run(
        "ties", base, [t1, t2, t3], 0.5, VEC, {"keep_ratio": 0.9, "ties": {"keep_ratio": 0.5}}
    )
    torch.testing.assert_close(out2, out)


def test_ties_default_keep_ratio_and_single() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(10, 10, generator=g)
    out = run("ties", torch.zeros(10, 10), [t], 1.0)  # default keep_ratio 0.2 -> top 20 entries
    assert int((out != 0).sum()) == 20
    kept = out != 0
    torch.testing.assert_close(out[kept], t[kept])


# ---------------------------------------------------------------- DARE


def test_dare_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    tvs = [torch.randn(50, 40, generator=g) for _ in range(2)]
    base = torch.randn(50, 40, generator=g)
    p = 0.7
    out = run("dare", base, tvs, 0.4, MAT, {"drop_rate": p, "seed": 5})
    expected = base + 0.4 * sum(
        tv * dare_mask(tv.shape, p, 5, MAT, i) / (1 - p) for i, tv in enumerate(tvs)
    )
    torch.testing.assert_close(out, expected)
    # each surviving entry is rescaled by exactly 1/(1-p); about (1-p) of the entries survive
    single = run("dare", base, tvs[:1], 1.0, MAT, {"drop_rate": p, "seed": 5}) - base
    kept = single != 0
    torch.testing.assert_close(single[kept], tvs[0][kept] / (1 - p))
    assert abs(kept.float().mean().item() - (1 - p)) < 0.05


def test_dare_deterministic_per_name_and_index() -> None:
    m1 = dare_mask((100,), 0.5, 0, "a.weight", 0)
    assert torch.equal(m1, dare_mask((100,), 0.5, 0, "a.weight", 0))
    assert not torch.equal(m1, dare_mask((100,), 0.5, 0, "b.weight", 0))
    assert not torch.equal(m1, dare_mask((100,), 0.5, 0, "a.weight", 1))
    assert not torch.equal(m1, dare_mask((100,), 0.5, 1, "a.weight", 0))
    # SHA-256 based: stable across processes and Python versions (no salted hash())
    assert _dare_seed(0, "a.weight", 0) == _dare_seed(0, "a.weight", 0)
    assert _dare_seed(0, "a.weight", 0) == 6884014403443794279  # pinned: masks never change


def test_dare_zero_drop_is_ta_and_bad_rate() -> None:
    t = [torch.ones(3, 3), 2 * torch.ones(3, 3)]
    torch.testing.assert_close(
        run("dare", torch.zeros(3, 3), t, 0.5, MAT, {"drop_rate": 0.0}), 1.5 * torch.ones(3, 3)
    )
    with pytest.raises(ValueError, match="drop_rate"):
        run("dare", torch.zeros(3, 3), t, 0.5, MAT, {"drop_rate": 1.0})


# ---------------------------------------------------------------- TSV-M


def test_tsvm_by_hand_orthogonal() -> None:
    t1 = torch.diag(torch.tensor([3.0, 1.0]))
    t2 = torch.diag(torch.tensor([0.0, 2.0]))
    # k = floor(2 / 2) = 1 per task: 3 e1e1ᵀ and 2 e2e2ᵀ, already orthogonal -> diag(3, 2)
    out = run("tsvm", torch.zeros(2, 2), [t1, t2], 1.5)
    torch.testing.assert_close(out, 1.5 * torch.diag(torch.tensor([3.0, 2.0])))


def test_tsvm_matches_paper_definition() -> None:
    g = torch.Generator().manual_seed(2)
    d, k, n = 12, 9, 3
    tvs = [torch.randn(d, k, generator=g, dtype=torch.float64) for _ in range(n)]
    base = torch.randn(d, k, generator=g, dtype=torch.float64)
    r = tsvm_rank((d, k), 1 / n)
    assert r == 3
    us, ss, vs = [], [], []
    for t in tvs:
        u, s, vh = torch.linalg.svd(t, full_matrices=False)
        us.append(u[:, :r])
        ss.append(s[:r])
        vs.append(vh[:r].T)
    u_cat, s_cat, v_cat = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    expected = base + 0.7 * (polar(u_cat) * s_cat) @ polar(v_cat).T
    torch.testing.assert_close(run("tsvm", base, tvs, 0.7), expected)
    # non-matrix tensors and embeddings: task-arithmetic average
    v = [t[:, 0] for t in tvs]
    torch.testing.assert_close(run("tsvm", base[:, 0], v, 0.7, VEC), base[:, 0] + 0.7 * sum(v) / n)
    torch.testing.assert_close(run("tsvm", base, tvs, 0.7, EMB), base + 0.7 * sum(tvs) / n)


# ---------------------------------------------------------------- Iso-C / Iso-CTS


def test_iso_c_by_hand() -> None:
    t1 = torch.diag(torch.tensor([3.0, 0.0]))
    t2 = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # Δ = diag(3, 1), σ̄ = 2 -> 2 I
    torch.testing.assert_close(
        run("iso_c", torch.ones(2, 2), [t1, t2], 0.5), torch.ones(2, 2) + 0.5 * 2 * torch.eye(2)
    )
    v = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])]
    torch.testing.assert_close(run("iso_c", torch.zeros(2), v, 0.5, VEC), torch.tensor([1.0, 0.5]))


def test_iso_c_definition_random() -> None:
    g = torch.Generator().manual_seed(4)
    tvs = [torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    u, s, vh = torch.linalg.svd(sum(tvs), full_matrices=False)
    expected = 1.3 * s.sum() / 5 * u @ vh  # σ̄ = ‖Δ‖_* / r
    torch.testing.assert_close(
        run("iso_c", torch.zeros(7, 5, dtype=torch.float64), tvs, 1.3), expected
    )


def test_iso_cts_dims() -> None:
    assert iso_cts_dims((3, 3), 2, 0.5) == (1, 1)
    assert iso_cts_dims((768, 768), 10, 0.8) == (618, 15)  # 614 -> budget 154 -> 15 per task
    assert iso_cts_dims((768, 3072), 3, 0.8) == (615, 51)  # 614 + 154 -> 51 per task
    for shape, n, f in [((5, 5), 3, 0.1), ((4, 9), 10, 0.8), ((8, 8), 3, 0.0)]:
        kc, ks = iso_cts_dims(shape, n, f)
        assert kc >= 0 and ks >= 0 and kc + n * ks == min(shape)


def test_iso_cts_by_hand() -> None:
    t1 = torch.diag(torch.tensor([4.0, 1.0, 0.0]))
    t2 = torch.diag(torch.tensor([0.0, 0.0, 2.0]))
    # r = 3, n = 2, common_fraction 0.5: k_c = 1, k_s = 1. Common: e1 (σ 4). Task-specific,
    # after projecting out e1: e2 (σ 1) from τ1, e3 (σ 2) from τ2. Orthogonal already;
    # σ̄ = (4 + 1 + 2) / 3 -> (7/3) I.
    out = run("iso_cts", torch.zeros(3, 3), [t1, t2], 1.0, MAT, {"common_fraction": 0.5})
    torch.testing.assert_close(out, 7 / 3 * torch.eye(3))


def test_iso_cts_definition_random() -> None:
    g = torch.Generator().manual_seed(5)
    d, k, n, f = 10, 8, 2, 0.5
    tvs = [torch.randn(d, k, generator=g, dtype=torch.float64) for _ in range(n)]
    kc, ks = iso_cts_dims((d, k), n, f)
    u, s, vh = torch.linalg.svd(sum(tvs), full_matrices=False)
    uc, sc, vc = u[:, :kc], s[:kc], vh[:kc].T
    us, ss, vs = [], [], []
    for t in tvs:
        ut, st, vth = torch.linalg.svd(t - uc @ uc.T @ t, full_matrices=False)
        us.append(ut[:, :ks])
        ss.append(st[:ks])
        vs.append(vth[:ks].T)
    u_all, s_all, v_all = torch.cat([*us, uc], 1), torch.cat([*ss, sc]), torch.cat([*vs, vc], 1)
    expected = 0.9 * s_all.mean() * polar(u_all) @ polar(v_all).T
    out = run(
        "iso_cts",
        torch.zeros(d, k, dtype=torch.float64),
        tvs,
        0.9,
        MAT,
        {"iso_cts": {"common_fraction": f}},
    )
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------- CART


def test_cart_by_hand() -> None:
    tvs = [torch.diag(torch.tensor(x)) for x in ([6.0, 0.0], [0.0, 6.0], [3.0, 0.0])]
    # mean diag(3, 2); residuals diag(3,-2), diag(-3,4), diag(0,-2); rank-1 (ratio 0.5):
    # diag(3,0) + diag(0,4) + diag(0,-2) = diag(3, 2)
    base = torch.ones(2, 2)
    out = run("cart", base, tvs, 0.5, MAT, {"rank_ratio": 0.5})
    torch.testing.assert_close(
        out,
        base + torch.diag(torch.tensor([3.0, 2.0])) + 0.5 * torch.diag(torch.tensor([3.0, 2.0])),
    )
    v = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])]
    torch.testing.assert_close(run("cart", torch.zeros(2), v, 123.0, VEC), torch.tensor([2.0, 1.0]))


def test_cart_full_rank_is_ta_around_mean() -> None:
    g = torch.Generator().manual_seed(6)
    tvs = [torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    mean = sum(tvs) / 3
    # rank ratio 1: Σ r_i = 0, so CART = weight averaging
    torch.testing.assert_close(
        run("cart", torch.zeros(6, 4, dtype=torch.float64), tvs, 0.8, MAT, {"rank_ratio": 1.0}),
        mean,
    )


# ---------------------------------------------------------------- streaming == in memory


@pytest.mark.parametrize("method", NEW)
def test_new_methods_stream_like_in_memory(tmp_path: Path, method: str) -> None:
    g = torch.Generator().manual_seed(7)
    shapes = {MAT: (20, 12), VEC: (20,), EMB: (30, 12), "model.encoder.layer_norm.weight": (12,)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    tvs = [{k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(3)]
    (tmp_path / "base").mkdir()
    save_file(base, tmp_path / "base" / "model.safetensors")
    paths = []
    for i, tv in enumerate(tvs):
        paths.append(tmp_path / f"tv{i}.safetensors")
        save_file(tv, paths[-1])
    params = {"keep_ratio": 0.3, "drop_rate": 0.5, "seed": 3, "rank_ratio": 0.2}
    out = merge_models(tmp_path / "base", paths, method, 0.6, params, tmp_path / "m", False)
    ref = merge_state_dicts(base, tvs, method, 0.6, params)
    got = load_file(out / "model.safetensors")
    for k in shapes:
        torch.testing.assert_close(got[k], ref[k], msg=k)


def test_config_sections_reach_the_methods() -> None:
    import copy

    from speechmerge.config import load_config, validate_config
    from speechmerge.plan.params import merge_params
    from speechmerge.report.tables import METHOD_NAMES

    root = Path(__file__).resolve().parent.parent
    cfg = copy.deepcopy(load_config(root / "configs" / "smoke.yaml"))
    cfg["merge"]["methods"] = sorted(METHODS)
    cfg["merge"]["ties"] = {"keep_ratio": 0.5}
    cfg["merge"]["dare"] = {"drop_rate": 0.5, "seed": 1}
    cfg["merge"]["iso_cts"] = {"common_fraction": 0.5}
    validate_config(cfg)
    assert set(METHOD_NAMES) == set(METHODS)
    params = merge_params(cfg, [("ca", "asr"), ("de", "st")])
    assert params[0]["ties"] == {"keep_ratio": 0.5} and params[0]["rank_ratio"] == 0.1
    assert method_param(params[1], "ties", "keep_ratio", 0.2) == 0.5
    assert method_param(params[1], "dare", "seed", 0) == 1
    bad = copy.deepcopy(cfg)
    bad["merge"]["dare"] = {"drop_rate": 1.0}
    with pytest.raises(ValueError, match="merge.dare.drop_rate"):
        validate_config(bad)
    bad["merge"]["dare"] = {"drop": 0.5}
    with pytest.raises(ValueError, match="merge.dare"):
        validate_config(bad)
