"""Tests for speechmerge.merge and speechmerge.taskvector (paper Sec. 3, 4.3)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from speechmerge.architecture import is_prunable
from speechmerge.io.weights import model_weights_path, open_model_weights
from speechmerge.merge import METHODS, merge_models, merge_state_dicts, register
from speechmerge.prune import lors
from speechmerge.taskvector import compute_task_vector

SHAPES: dict[str, tuple[int, ...]] = {
    "model.encoder.conv1.weight": (8, 4, 3),
    "model.encoder.conv1.bias": (8,),
    "model.encoder.embed_positions.weight": (16, 8),
    "model.encoder.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.encoder.layers.0.self_attn.q_proj.bias": (8,),
    "model.encoder.layers.0.self_attn.k_proj.weight": (8, 8),
    "model.encoder.layers.0.fc1.weight": (32, 8),
    "model.encoder.layers.0.fc2.weight": (8, 32),
    "model.encoder.layer_norm.weight": (8,),
    "model.decoder.embed_tokens.weight": (64, 8),
}
INT_NAME = "model.decoder.some_int_buffer"


def make_base(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    sd[INT_NAME] = torch.arange(5)
    return sd


def make_finetuned(base: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
        for k, v in base.items()
    }


def task_vector(base: dict, ft: dict) -> dict[str, torch.Tensor]:
    return {k: ft[k] - base[k] for k in base if base[k].is_floating_point()}


def assert_sd_close(a: dict, b: dict, **kw: float) -> None:
    assert set(a) == set(b)
    for k, v in a.items():
        assert v.dtype == b[k].dtype, k
        torch.testing.assert_close(v, b[k], msg=lambda m, k=k: f"{k}: {m}", **kw)


@pytest.fixture
def three() -> tuple[dict, list[dict], list[dict]]:
    base = make_base()
    fts = [make_finetuned(base, s) for s in (1, 2, 3)]
    return base, fts, [task_vector(base, f) for f in fts]


# ---------------------------------------------------------------- in-memory merge


def test_methods_registered() -> None:
    assert {"wa", "ta", "mp", "svp", "lors"} <= set(METHODS)


def test_ta_single_reproduces_finetuned(three) -> None:
    base, fts, tvs = three
    merged = merge_state_dicts(base, tvs[:1], "ta", lam=1.0)
    assert_sd_close(merged, fts[0])
    assert torch.equal(merged[INT_NAME], base[INT_NAME])


def test_ta_formula(three) -> None:
    base, _, tvs = three
    merged = merge_state_dicts(base, tvs, "ta", lam=0.3)
    for k, v in base.items():
        if v.is_floating_point():
            torch.testing.assert_close(merged[k], v + 0.3 * sum(tv[k] for tv in tvs))


def test_wa_is_mean_of_finetuned(three) -> None:
    base, fts, tvs = three
    merged = merge_state_dicts(base, tvs, "wa", lam=123.0)  # λ ignored
    mean = {k: torch.stack([f[k] for f in fts]).float().mean(0) for k in SHAPES}
    mean[INT_NAME] = base[INT_NAME]
    assert_sd_close(merged, mean)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("mp", {"keep_ratio": 1.0}),
        ("svp", {"rank_ratio": 1.0}),
        ("lors", {"rank_ratio": 1.0, "keep_ratio": 0.3}),
        ("lors", {"rank_ratio": 1.0, "keep_ratio": 0.0}),
    ],
)
def test_no_pruning_equals_ta(three, method: str, params: dict) -> None:
    base, _, tvs = three
    ta = merge_state_dicts(base, tvs, "ta", lam=0.7)
    merged = merge_state_dicts(base, tvs, method, lam=0.7, params=params)
    assert_sd_close(merged, ta)


def test_lors_by_hand(three) -> None:
    base, _, tvs = three
    params = [
        {"rank_ratio": 0.1, "keep_ratio": 0.2},
        {"rank_ratio": 0.3, "keep_ratio": 0.05},
        {"rank_ratio": 0.5, "keep_ratio": 0.6},
    ]
    lam = 0.4
    merged = merge_state_dicts(base, tvs, "lors", lam=lam, params=params)
    for k, v in base.items():
        if not v.is_floating_point():
            assert torch.equal(merged[k], v)
            continue
        total = torch.zeros_like(v)
        for tv, p in zip(tvs, params, strict=True):
            if is_prunable(k, v):
                low, sparse = lors(tv[k], p["rank_ratio"], p["keep_ratio"])
                total += low + sparse
            else:
                total += tv[k]
        torch.testing.assert_close(merged[k], v + lam * total, msg=k)
    # pruning actually changed the prunable tensors
    ta = merge_state_dicts(base, tvs, "ta", lam=lam)
    q = "model.encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged[q], ta[q])
    b = "model.encoder.layers.0.self_attn.q_proj.bias"
    torch.testing.assert_close(merged[b], ta[b])


def test_mp_svp_by_hand(three) -> None:
    from speechmerge.prune import magnitude_prune, svp

    base, _, tvs = three
    q = "model.encoder.layers.0.fc1.weight"
    m = merge_state_dicts(base, tvs, "mp", lam=0.5, params={"keep_ratio": 0.2})
    torch.testing.assert_close(m[q], base[q] + 0.5 * sum(magnitude_prune(tv[q], 0.2) for tv in tvs))
    s = merge_state_dicts(base, tvs, "svp", lam=0.5, params={"rank_ratio": 0.25})
    torch.testing.assert_close(s[q], base[q] + 0.5 * sum(svp(tv[q], 0.25) for tv in tvs))


def test_half_precision_base(three) -> None:
    base, _, tvs = three
    hb = {k: v.half() if v.is_floating_point() else v for k, v in base.items()}
    merged = merge_state_dicts(hb, tvs, "ta", lam=0.5)
    k = "model.encoder.layers.0.fc2.weight"
    assert merged[k].dtype == torch.float16
    ref = (base[k].half().float() + 0.5 * sum(tv[k] for tv in tvs)).half()
    torch.testing.assert_close(merged[k], ref)


def test_errors_in_memory(three) -> None:
    base, _, tvs = three
    with pytest.raises(ValueError, match="known methods: .*lors.*ta"):
        merge_state_dicts(base, tvs, "no_such_method", lam=1.0)
    with pytest.raises(ValueError, match="keep_ratio"):
        merge_state_dicts(base, tvs, "lors", lam=1.0, params={"rank_ratio": 0.1})
    with pytest.raises(ValueError, match="2 parameter dicts for 3"):
        merge_state_dicts(base, tvs, "mp", params=[{"keep_ratio": 0.1}] * 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        merge_state_dicts(base, tvs, "mp", params={"keep_ratio": 2.0})
    bad = dict(tvs[0])
    del bad["model.encoder.layers.0.fc1.weight"]
    with pytest.raises(ValueError, match="fc1.weight.*task vector 0"):
        merge_state_dicts(base, [bad], "ta")
    with pytest.raises(ValueError, match="already registered"):
        register("ta")(lambda *a: a[1])


# ---------------------------------------------------------------- files


def write_model(d: Path, sd: dict[str, torch.Tensor], extra_files: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"model_type": "whisper", "d_model": 8}))
    if extra_files:
        (d / "tokenizer.json").write_text("{}")
        (d / "preprocessor_config.json").write_text("{}")
        (d / "pytorch_model.bin").write_bytes(b"stale")
    return d


#: What a merge of a :func:`write_model` base holds: its model files (not the stale .bin).
MERGED_FILES = {
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "preprocessor_config.json",
    "merge.json",
    "README.md",
    "speechmerge-manifest.json",
}


@pytest.fixture
def model_dirs(tmp_path: Path, three):
    base, fts, _ = three
    base_dir = write_model(tmp_path / "base", base)
    ft_dirs = [write_model(tmp_path / f"ft{i}", f, extra_files=False) for i, f in enumerate(fts)]
    tv_paths = []
    for i, d in enumerate(ft_dirs):
        p = tmp_path / "tv" / f"tv{i}.safetensors"
        compute_task_vector(base_dir, d, p)
        tv_paths.append(p)
    return base_dir, tv_paths


def test_compute_task_vector_round_trip(tmp_path: Path, model_dirs, three) -> None:
    base, fts, _ = three
    base_dir, tv_paths = model_dirs
    tv = load_file(tv_paths[0])
    assert set(tv) == set(SHAPES)  # non-float tensors are not stored
    for k in SHAPES:
        torch.testing.assert_close(base[k] + tv[k], fts[0][k])
    with safe_open(str(tv_paths[0]), framework="pt") as f:
        meta = f.metadata()
    assert meta == {"base": str(base_dir), "finetuned": str(tmp_path / "ft0")}
    assert not [p for p in tv_paths[0].parent.iterdir() if p.name.startswith(".")]


def test_compute_task_vector_errors(tmp_path: Path, three) -> None:
    base, fts, _ = three
    base_dir = write_model(tmp_path / "base", base)
    ft = dict(fts[0])
    del ft["model.encoder.layers.0.fc2.weight"]
    d = write_model(tmp_path / "missing", ft)
    with pytest.raises(ValueError, match="fc2.weight.*missing"):
        compute_task_vector(base_dir, d, tmp_path / "tv.safetensors")
    ft = dict(fts[0])
    ft["model.encoder.layers.0.fc2.weight"] = torch.zeros(8, 31)
    d = write_model(tmp_path / "shape", ft)
    with pytest.raises(ValueError, match="fc2.weight.*base.*shape"):
        compute_task_vector(base_dir, d, tmp_path / "tv.safetensors")
    ft = dict(fts[0])
    ft["model.encoder.layer_norm.weight"] = torch.full((8,), float("inf"))
    d = write_model(tmp_path / "inf", ft)
    with pytest.raises(ValueError, match="layer_norm.weight.*inf"):
        compute_task_vector(base_dir, d, tmp_path / "tv.safetensors")
    assert not (tmp_path / "tv.safetensors").exists()


def test_model_weights_path(tmp_path: Path) -> None:
    """A dir's weights: model.safetensors, else a sharded checkpoint's index (read by
    tests/test_sharded.py); a malformed index is refused when opened, naming it."""
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        model_weights_path(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{}")
    assert model_weights_path(tmp_path) == index
    with pytest.raises(ValueError, match=f"malformed.*{index}"):
        open_model_weights(tmp_path)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ta", None),
        ("wa", None),
        ("lors", [{"rank_ratio": 0.2, "keep_ratio": 0.1}, {"rank_ratio": 0.4, "keep_ratio": 0.3}]),
    ],
)
def test_merge_models_matches_in_memory(
    tmp_path: Path, model_dirs, three, method: str, params
) -> None:
    base, _, tvs = three
    base_dir, tv_paths = model_dirs
    out = tmp_path / "out" / "merged"
    res = merge_models(
        base_dir, tv_paths[:2], method, lam=0.6, params=params, out_dir=out, progress=False
    )
    assert res == out
    ref = merge_state_dicts(base, tvs[:2], method, lam=0.6, params=params)
    assert_sd_close(load_file(out / "model.safetensors"), ref)
    names = {p.name for p in out.iterdir()}
    assert names == MERGED_FILES
    assert (out / "config.json").read_text() == (base_dir / "config.json").read_text()
    rec = json.loads((out / "merge.json").read_text())
    assert rec["method"] == method and rec["lambda"] == 0.6
    assert [t["path"] for t in rec["taskvectors"]] == [str(p) for p in tv_paths[:2]]
    if params:
        assert [t["params"] for t in rec["taskvectors"]] == params
    card = (out / "README.md").read_text()  # the model card names method, λ and input hashes
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f"`{method}`" in card and "**λ**: 0.6" in card
    for p in [base_dir / "model.safetensors", *tv_paths[:2]]:
        assert hashlib.sha256(p.read_bytes()).hexdigest() in card
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]  # no temp leftovers


def test_merge_models_replaces_only_its_own_output(tmp_path: Path, model_dirs) -> None:
    base_dir, tv_paths = model_dirs
    out = tmp_path / "merged"
    merge_models(base_dir, tv_paths, "ta", lam=0.2, out_dir=out, progress=False)
    (out / "stale.txt").write_text("x")
    merge_models(base_dir, tv_paths, "ta", lam=0.3, out_dir=out, progress=False)  # a previous
    assert not (out / "stale.txt").exists()  # merge output (merge.json): replaced
    assert json.loads((out / "merge.json").read_text())["lambda"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_merge_models_refuses_a_users_folder(tmp_path: Path, model_dirs) -> None:
    base_dir, tv_paths = model_dirs
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(FileExistsError, match="not an output of speechmerge"):
        merge_models(base_dir, tv_paths, "ta", lam=0.2, out_dir=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    merge_models(base_dir, tv_paths, "ta", lam=0.2, out_dir=out, progress=False, force=True)
    assert not (out / "thesis.tex").exists() and (out / "model.safetensors").is_file()


def test_merge_models_copies_only_model_files(tmp_path: Path, model_dirs) -> None:
    """Not folders (checkpoint-500/), not other files, not symlinks to elsewhere."""
    base_dir, tv_paths = model_dirs
    (base_dir / "checkpoint-500").mkdir()
    (base_dir / "checkpoint-500" / "optimizer.pt").write_bytes(b"x" * 100)
    (base_dir / "notes.txt").write_text("n")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (base_dir / "vocab.json").symlink_to(secret)
    out = tmp_path / "merged"
    merge_models(base_dir, tv_paths, "ta", lam=0.2, out_dir=out, progress=False)
    names = {p.name for p in out.iterdir()}
    assert names == MERGED_FILES
    assert json.loads((out / "merge.json").read_text())["copied_files"] == [
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
    ]


@pytest.mark.parametrize("kind", ["nan", "shape", "missing"])
def test_merge_models_bad_task_vector(tmp_path: Path, model_dirs, kind: str) -> None:
    base_dir, tv_paths = model_dirs
    name = "model.encoder.layers.0.self_attn.k_proj.weight"
    tv = load_file(tv_paths[1])
    if kind == "nan":
        tv[name][2, 3] = float("nan")
    elif kind == "shape":
        tv[name] = torch.zeros(8, 7)
    else:
        del tv[name]
    bad = tmp_path / "bad.safetensors"
    save_file(tv, bad)
    out = tmp_path / "merged"
    with pytest.raises(ValueError) as ei:
        merge_models(
            base_dir,
            [tv_paths[0], bad],
            "lors",
            1.0,
            params={"rank_ratio": 0.5, "keep_ratio": 0.5},
            out_dir=out,
            progress=False,
        )
    assert name in str(ei.value) and str(bad) in str(ei.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # an existing output is left untouched on error (even one --force would replace)
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError):
        merge_models(base_dir, [bad], "ta", 1.0, out_dir=out, progress=False, force=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_merge_models_refuses_to_overwrite_inputs(model_dirs) -> None:
    base_dir, tv_paths = model_dirs
    with pytest.raises(ValueError, match="overwrite"):
        merge_models(base_dir, tv_paths, "ta", out_dir=base_dir, progress=False)
    with pytest.raises(ValueError, match="overwrite"):
        merge_models(base_dir, tv_paths, "ta", out_dir=base_dir.parent, progress=False)


# ---------------------------------------------------------------- real (tiny) Whisper


def test_tiny_whisper_end_to_end(tmp_path: Path) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=64,
        num_mel_bins=8,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=16,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    base = WhisperForConditionalGeneration(cfg).eval()
    base.save_pretrained(tmp_path / "base", safe_serialization=True)
    ft = WhisperForConditionalGeneration.from_pretrained(tmp_path / "base")
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ft.save_pretrained(tmp_path / "ft", safe_serialization=True)
    stored = set(load_file(tmp_path / "base" / "model.safetensors"))
    assert "proj_out.weight" not in stored  # tied to model.decoder.embed_tokens.weight

    tv = compute_task_vector(tmp_path / "base", tmp_path / "ft", tmp_path / "tv.safetensors")
    out = merge_models(
        tmp_path / "base", [tv], "ta", lam=1.0, out_dir=tmp_path / "m", progress=False
    )
    merged = WhisperForConditionalGeneration.from_pretrained(out)
    ft_params = dict(ft.named_parameters())
    m_params = dict(merged.named_parameters())
    assert set(m_params) == set(ft_params)
    for k, v in ft_params.items():
        torch.testing.assert_close(m_params[k], v, msg=k)
    assert merged.proj_out.weight.data_ptr() == merged.model.decoder.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(merged.proj_out.weight, ft.proj_out.weight)
    # LoRS also yields a loadable model
    out2 = merge_models(
        tmp_path / "base",
        [tv],
        "lors",
        lam=0.5,
        params={"rank_ratio": 0.25, "keep_ratio": 0.2},
        out_dir=tmp_path / "m2",
        progress=False,
    )
    WhisperForConditionalGeneration.from_pretrained(out2)


def test_damaged_model_folder_is_refused(tmp_path: Path, model_dirs) -> None:
    """A merged model (with its manifest) whose weights were truncated is refused as an input,
    naming the file, where Snakemake would take the folder as complete."""
    base_dir, tv_paths = model_dirs
    out = tmp_path / "merged"
    merge_models(base_dir, tv_paths, "ta", lam=0.2, out_dir=out, progress=False)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(ValueError, match="damaged output folder") as ei:
        compute_task_vector(base_dir, out, tmp_path / "tv.safetensors")
    assert str(weights) in str(ei.value)
    weights.unlink()
    with pytest.raises(ValueError, match="missing"):
        compute_task_vector(base_dir, out, tmp_path / "tv.safetensors")


def test_task_vector_metadata_marks_model_weights_only_by_format() -> None:
    """Model weights (``save_pretrained``: ``format``) are refused as τ; a hand-made τ with
    metadata of its own (``merge_bench.py``'s ``{"bench": i}``) or none is accepted."""
    from speechmerge.taskvector import check_task_vector_metadata

    for meta in (None, {}, {"bench": "0"}, {"base": "b", "finetuned": "f"}):
        check_task_vector_metadata("tv.safetensors", meta)
    with pytest.raises(ValueError, match=r"tv\.safetensors is not a task-vector file"):
        check_task_vector_metadata("tv.safetensors", {"format": "pt"})
