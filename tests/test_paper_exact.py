"""Paper-exact mode (``rounding="paper"``, issue 16): the engine's MP / SVP / LoRS against an
independent transcription of the authors' per-matrix operation, and the switch's reach
(merge methods, CLI, config)."""

from __future__ import annotations

import pytest
import torch

from speechmerge import cli
from speechmerge.cli import params as cliparams
from speechmerge.merge import merge_state_dicts, normalize_params
from speechmerge.merge import subspace as smsubspace
from speechmerge.plan import params as smparams
from speechmerge.prune import (
    count_from_ratio,
    lors,
    lors_dense,
    magnitude_prune,
    rank_from_ratio,
    svp,
)

# ---------------------------------------------------------------- the reference


def authors_mp(w: torch.Tensor, p: float) -> torch.Tensor:
    """MP, eqs. (1)-(2) of Zhao et al., "Low-Rank and Sparse Model Merging for Multi-Lingual
    Speech Recognition and Translation" (2025), with the authors' count ``int(p * n)``:
    keep the ``int(p * n)`` entries of largest |w| (``torch.topk``), zero the rest."""
    k = int(p * w.numel())
    mask = torch.zeros(w.numel(), dtype=w.dtype)
    if k > 0:
        mask[torch.topk(w.abs().flatten(), k).indices] = 1
    return mask.view_as(w) * w


def authors_svp(w: torch.Tensor, r: float) -> torch.Tensor:
    """SVP, eqs. (3)-(4) of the same paper, with the authors' rank ``int(r * min(d, k))`` (0
    allowed) and the exact SVD: ``U_r Σ_r V_rᵀ``."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    rank = int(r * min(w.shape))
    return u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank, :]


def authors_lors(w: torch.Tensor, r: float, p: float) -> torch.Tensor:
    """LoRS, eqs. (5)-(7): ``L = SVP(W)``, ``S = M ⊙ (W − L)`` with M the MP mask of the
    residual; LoRS(W) = L + S (the term summed in eq. 8)."""
    low = authors_svp(w, r)
    return low + authors_mp(w - low, p)


def spy_exact(monkeypatch, module) -> list:
    """Record the ``exact`` of every ``module.truncated_svd`` call (the list is returned)."""
    seen: list = []
    real = module.truncated_svd

    def spy(a, r, exact=None):
        seen.append(exact)
        return real(a, r, exact=exact)

    monkeypatch.setattr(module, "truncated_svd", spy)
    return seen


# ---------------------------------------------------------------- rounding


def test_paper_rounding_floors_and_allows_rank_zero() -> None:
    assert rank_from_ratio((768, 768), 0.01, "paper") == 7  # int(7.68)
    assert rank_from_ratio((768, 768), 0.01) == 8  # default: ceil
    assert rank_from_ratio((768, 3072), 0.001, "paper") == 0
    assert rank_from_ratio((768, 3072), 0.001) == 1
    assert rank_from_ratio((64, 64), 1.0, "paper") == 64
    assert count_from_ratio(10, 0.25, "paper") == 2  # int(2.5)
    assert count_from_ratio(10, 0.25) == 3  # round half up
    assert count_from_ratio(100, 0.29, "paper") == int(0.29 * 100)  # float noise as int() does
    with pytest.raises(ValueError, match="rounding must be one of"):
        rank_from_ratio((8, 8), 0.5, "floor")


SHAPES = [(40, 30), (30, 40), (64, 256), (256, 64), (96, 96)]
RANKS = [0.0, 0.01, 0.05, 0.2, 0.5]
KEEPS = [0.0, 0.1, 0.4, 1.0]


@pytest.mark.parametrize("shape", SHAPES)
def test_paper_mode_equals_authors_operation(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    for r in RANKS:
        ref = authors_svp(w, r)
        got = svp(w, r, rounding="paper")
        assert (got - ref).abs().max() <= 1e-6, (shape, r)
        for p in KEEPS:
            ref = authors_lors(w, r, p)
            got = lors_dense(w, r, p, rounding="paper")
            assert (got - ref).abs().max() <= 1e-6, (shape, r, p)
    for p in KEEPS:
        assert torch.equal(magnitude_prune(w, p, "paper"), authors_mp(w, p)), (shape, p)


def test_paper_rank_zero_is_pure_magnitude_pruning() -> None:
    w = torch.randn(64, 80, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    low, sparse = lors(w, 0.01, 0.3, rounding="paper")  # int(0.64) = 0
    assert not low.any()
    assert torch.equal(sparse, magnitude_prune(w, 0.3, "paper"))


def test_paper_mode_forces_the_exact_svd(monkeypatch) -> None:
    """256x64 at r = 5 % is where the default takes the randomized SVD."""
    from speechmerge import prune

    seen = spy_exact(monkeypatch, prune)
    w = torch.randn(256, 64, generator=torch.Generator().manual_seed(5))
    svp(w, 0.05, rounding="paper")
    svp(w, 0.05)
    assert seen == [True, None]


def test_merge_in_paper_mode_equals_reference() -> None:
    g = torch.Generator().manual_seed(11)
    names = ["model.encoder.layers.0.fc1.weight", "model.encoder.layers.0.fc1.bias"]
    shapes = [(48, 32), (48,)]
    base = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in zip(names, shapes)}
    tvs = [{n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in zip(names, shapes)}]
    tvs.append({n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in zip(names, shapes)})
    lam, params = 0.3, {"rank_ratio": 0.05, "keep_ratio": 0.4, "rounding": "paper"}
    refs = {"lors": lambda t: authors_lors(t, 0.05, 0.4), "svp": lambda t: authors_svp(t, 0.05)}
    refs["mp"] = lambda t: authors_mp(t, 0.4)
    for method, ref in refs.items():
        out = merge_state_dicts(base, tvs, method, lam, params)
        w = names[0]
        want = base[w] + lam * sum(ref(tv[w]) for tv in tvs)
        assert (out[w] - want).abs().max() <= 1e-6, method
        b = names[1]  # not prunable: plain task arithmetic in both modes
        assert torch.allclose(out[b], base[b] + lam * (tvs[0][b] + tvs[1][b]))


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("tsvm", {"exact": True}),
        ("tsvm", {"rounding": "paper"}),
        ("iso_cts", {"exact": True}),
        ("iso_cts", {"rounding": "paper"}),
        ("tsvm", {}),
    ],
)
def test_exact_reaches_tsvm_and_iso_cts(monkeypatch, method: str, params: dict) -> None:
    seen = spy_exact(monkeypatch, smsubspace)
    g = torch.Generator().manual_seed(2)
    name = "model.decoder.layers.0.self_attn.q_proj.weight"
    base = {name: torch.randn(64, 64, generator=g)}
    tvs = [{name: torch.randn(64, 64, generator=g)} for _ in range(8)]
    merge_state_dicts(base, tvs, method, 1.0, params)
    assert seen and all(e is (True if params else None) for e in seen), seen


def test_rounding_value_is_checked() -> None:
    with pytest.raises(ValueError, match=r"params\[0\].*rounding"):
        normalize_params("lors", 1, {"rank_ratio": 0.1, "keep_ratio": 0.1, "rounding": "floor"})


def test_cli_paper_exact_sets_rounding() -> None:
    parser = cli.build_parser()
    merge = ["merge", "--base", "b", "--finetuned", "a", "--method", "lors", "--out", "o"]
    for flags in (["--paper-exact"], ["--rounding", "paper"]):
        args = parser.parse_args([*merge, *flags])
        assert all(p["rounding"] == "paper" for p in cliparams.merge_params(args, ["a"]))
    args = parser.parse_args(merge)
    assert all("rounding" not in p for p in cliparams.merge_params(args, ["a"]))
    args = parser.parse_args([*merge, "--paper-exact", "--rounding", "ceil"])
    with pytest.raises(ValueError, match="contradicts"):
        cliparams.merge_params(args, ["a"])


def test_config_rounding_reaches_merge_params() -> None:
    cfg = {"merge": {"rank_ratio": {"default": 0.05}, "keep_ratio": {"default": 0.4}}}
    assert "rounding" not in smparams.merge_params(cfg, [("de", "asr")])[0]
    cfg["merge"]["rounding"] = "ceil"
    assert "rounding" not in smparams.merge_params(cfg, [("de", "asr")])[0]
    cfg["merge"]["rounding"] = "paper"
    assert smparams.merge_params(cfg, [("de", "asr")])[0]["rounding"] == "paper"


@pytest.mark.parametrize("rank_ratio", [0.1, 0.01])  # 96x64: int(6.4) = 6; int(0.64) = 0
def test_compress_in_paper_mode_stores_the_paper_lors(tmp_path, rank_ratio: float) -> None:
    from safetensors.torch import save_file

    from speechmerge.compress import compress_lors, open_task_vector

    name = "model.encoder.layers.0.fc1.weight"
    t = torch.randn(96, 64, generator=torch.Generator().manual_seed(9))
    save_file({name: t}, tmp_path / "tv.safetensors", metadata={"base": "b", "finetuned": "f"})
    meta = compress_lors(
        tmp_path / "tv.safetensors", tmp_path / "c.safetensors", rank_ratio, 0.3, rounding="paper"
    )
    assert meta["rounding"] == "paper"
    with open_task_vector(tmp_path / "c.safetensors") as r:
        got = r.get_tensor(name)
    want = authors_lors(t.double(), rank_ratio, 0.3).float()
    assert (got - want).abs().max() <= 1e-5  # float32 storage of a float64 reference
