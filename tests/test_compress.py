"""Tests for speechmerge.compress (LoRS task vectors as factors + sparse residual)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from speechmerge.architecture import is_prunable
from speechmerge.compress import (
    CompressedTaskVector,
    compress_lors,
    decompress,
    open_task_vector,
)
from speechmerge.io.weights import SafetensorsReader
from speechmerge.merge import merge_models
from speechmerge.prune import lors_dense

SHAPES = {
    "model.encoder.layers.0.fc1.weight": (96, 64),
    "model.encoder.layers.0.self_attn.q_proj.weight": (64, 64),
    "model.encoder.layers.0.fc1.bias": (96,),
    "model.decoder.embed_tokens.weight": (50, 64),
    "model.encoder.conv1.weight": (8, 4, 3),
}


@pytest.fixture
def files(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    base["model.some_int_buffer"] = torch.arange(4)
    (tmp_path / "base").mkdir()
    save_file(base, tmp_path / "base" / "model.safetensors")
    tvs = []
    for i in range(2):
        tv = {k: 0.1 * torch.randn(s, generator=g) for k, s in SHAPES.items()}
        p = tmp_path / f"tv{i}.safetensors"
        save_file(tv, p, metadata={"base": "b", "finetuned": f"f{i}"})
        tvs.append(p)
    return tmp_path, base, tvs


def test_compress_round_trip(files) -> None:
    tmp, _, tvs = files
    out = tmp / "c.safetensors"
    meta = compress_lors(tvs[0], out, 0.1, 0.05, exact=True)
    tv = load_file(tvs[0])
    stored = load_file(out)
    q = "model.encoder.layers.0.fc1.weight"
    assert stored[f"{q}::us"].shape == (96, 7) and stored[f"{q}::v"].shape == (64, 7)
    assert stored[f"{q}::idx"].dtype == torch.int64
    assert stored[f"{q}::idx"].numel() == round(0.05 * 96 * 64)
    assert "model.encoder.layers.0.fc1.bias" in stored  # dense, unchanged
    with safe_open(str(out), framework="pt") as f:
        m = f.metadata()
    assert m["speechmerge_format"] == "lors-compressed" and m["format_version"] == "1"
    assert m["finetuned"] == "f0"
    assert float(m["compression_ratio"]) == pytest.approx(
        int(m["dense_bytes"]) / int(m["compressed_bytes"]), rel=1e-3
    )
    assert int(m["dense_bytes"]) == sum(t.numel() * 4 for t in tv.values())
    assert float(meta["compression_ratio"]) > 1.5
    with open_task_vector(out) as r:
        assert isinstance(r, CompressedTaskVector)
        assert sorted(r.keys()) == sorted(SHAPES)
        for k, t in tv.items():
            assert r.shape(k) == tuple(t.shape)
            expected = lors_dense(t, 0.1, 0.05, exact=True) if is_prunable(k, t) else t
            torch.testing.assert_close(r.get_tensor(k), expected, msg=k)
    dense = tmp / "d.safetensors"
    decompress(out, dense)
    with SafetensorsReader(dense) as r:
        for k, t in tv.items():
            expected = lors_dense(t, 0.1, 0.05, exact=True) if is_prunable(k, t) else t
            torch.testing.assert_close(r.get_tensor(k), expected, msg=k)


def test_merge_compressed_ta_equals_dense_lors(files) -> None:
    tmp, _, tvs = files
    cs = []
    for i, p in enumerate(tvs):
        cs.append(
            compress_lors(p, tmp / f"c{i}.safetensors", 0.1, 0.2, exact=True)
            and tmp / f"c{i}.safetensors"
        )
    a = merge_models(tmp / "base", cs, "ta", 0.4, out_dir=tmp / "a", progress=False)
    params = {"rank_ratio": 0.1, "keep_ratio": 0.2, "exact": True}
    b = merge_models(tmp / "base", tvs, "lors", 0.4, params, out_dir=tmp / "b", progress=False)
    ma, mb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(ma) == set(mb)
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], msg=k)


def test_full_rank_and_tiny_matrices_stay_dense(files) -> None:
    tmp, _, tvs = files
    out = tmp / "c.safetensors"
    compress_lors(tvs[0], out, 1.0, 0.3)
    assert not [k for k in load_file(out) if "::" in k]
    compress_lors(tvs[0], out, 0.5, 0.9)  # factors + 90 % residual are larger than dense
    stored = load_file(out)
    assert not [k for k in stored if "::" in k]
    q = "model.encoder.layers.0.fc1.weight"  # stored dense, but as LoRS(τ), not τ
    torch.testing.assert_close(stored[q], lors_dense(load_file(tvs[0])[q], 0.5, 0.9))


def test_compress_errors(files) -> None:
    tmp, _, tvs = files
    with pytest.raises(ValueError, match="keep_ratio"):
        compress_lors(tvs[0], tmp / "x.safetensors", 0.1, 1.5)
    compress_lors(tvs[0], tmp / "c.safetensors", 0.1, 0.1)
    with pytest.raises(ValueError, match="already a compressed"):
        compress_lors(tmp / "c.safetensors", tmp / "x.safetensors", 0.1, 0.1)
    with pytest.raises(ValueError, match="not a compressed"):
        CompressedTaskVector(tvs[0])
    (tmp / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(ValueError, match="junk.safetensors"):
        SafetensorsReader(tmp / "junk.safetensors")
    assert not (tmp / "x.safetensors").exists()
