"""Merged models that deploy (issue 16 item 4): a merged dir of a tiny Whisper, made through the
CLI, loads with ``transformers.pipeline`` and transcribes, carries a model card, and exports
to CTranslate2 (``export-ct2``) with the same greedy tokens as the HF model."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ARCH_TINY, write_scores

from speechmerge import cli
from speechmerge.card import release_model
from speechmerge.model import build_synthetic_base, build_tokenizer, save_model_dir

LANG = "de"
PROMPT = ["<|startoftranscript|>", f"<|{LANG}|>", "<|transcribe|>", "<|notimestamps|>"]


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> Path:
    """A LoRS merge (CLI, paper-exact) of two perturbed copies of a tiny random Whisper."""
    from num2words import num2words

    texts = [num2words(n, lang=lg) for lg in ("ca", "de", "en") for n in range(0, 300, 7)]
    tok = build_tokenizer(texts, ["ca", "de"], vocab_size=300)
    model, processor = build_synthetic_base(tok, dict(ARCH_TINY), chunk_seconds=1, seed=4)
    root = tmp_path_factory.mktemp("deploy")
    save_model_dir(model, processor, root / "base")
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        save_model_dir(model, processor, root / f"ft{i}")
    args = ["merge", "--base", str(root / "base"), "--finetuned", str(root / "ft0")]
    args += [str(root / "ft1"), "--method", "lors", "--paper-exact", "--quiet"]
    assert cli.main([*args, "--out", str(root / "merged")]) == 0
    return root / "merged"


def audio(n: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(16_000).astype(np.float32) * 0.1 for _ in range(n)]


def test_merged_dir_has_a_model_card(merged: Path) -> None:
    card = (merged / "README.md").read_text()
    assert "pipeline_tag: automatic-speech-recognition" in card
    assert "`lors`" in card and "rounding" in card and "paper" in card
    manifest = json.loads((merged / "speechmerge-manifest.json").read_text())["files"]
    assert "README.md" in manifest


@pytest.mark.parametrize("release", [False, True])
def test_merged_dir_loads_in_a_transformers_pipeline(merged: Path, tmp_path: Path, release) -> None:
    """The merged dir, and its release dir (hard links of its files, the card with scores)."""
    from transformers import pipeline

    model = merged
    if release:
        scores = write_scores(tmp_path / "scores", pairs=[(LANG, "asr")])
        model, linked, copied = release_model(merged, scores, tmp_path / "release")
        assert linked > 0 and copied == 0
        assert "## Scores" in (model / "README.md").read_text()
        assert (model / "model.safetensors").samefile(merged / "model.safetensors")
    asr = pipeline("automatic-speech-recognition", model=str(model), device="cpu")
    out = asr(
        {"raw": audio(1)[0], "sampling_rate": 16_000},
        generate_kwargs={"language": LANG, "task": "transcribe", "max_new_tokens": 6},
    )
    assert isinstance(out["text"], str)


@pytest.mark.parametrize("quantization", ["float32", "int8"])
def test_export_ct2_gives_the_hf_greedy_tokens(merged: Path, tmp_path: Path, quantization) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    from speechmerge.model import load_pretrained

    out = tmp_path / "ct2"
    assert cli.main(["export-ct2", str(merged), str(out), "--quantization", quantization]) == 0
    record = json.loads((out / "export.json").read_text())
    assert record["quantization"] == quantization
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    hf, proc = load_pretrained(str(merged))
    feats = proc.feature_extractor(audio(), sampling_rate=16_000, return_tensors="np")
    feats = feats.input_features.astype(np.float32)
    with torch.inference_mode():
        ids = hf.generate(
            input_features=torch.from_numpy(feats),
            language=LANG,
            task="transcribe",
            num_beams=1,
            do_sample=False,
            max_new_tokens=6,
        )
    tok = proc.tokenizer
    prompt = tok.convert_tokens_to_ids(PROMPT)
    ct = ctranslate2.models.Whisper(str(out), device="cpu", compute_type="float32")
    res = ct.generate(
        ctranslate2.StorageView.from_array(feats),
        [prompt] * len(feats),
        beam_size=1,
        max_length=10,
        suppress_blank=False,
        suppress_tokens=[],
    )
    if quantization != "float32":
        assert all(r.sequences_ids[0] for r in res)  # int8 weights: it runs, tokens may differ
        return
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    for row, r in zip(ids.tolist(), res, strict=True):
        if row[: len(prompt)] == prompt:  # transformers 5 returns the new tokens only
            row = row[len(prompt) :]
        hf_tokens = [t for t in row if t != eot]
        n = min(len(hf_tokens), len(r.sequences_ids[0]))
        assert n > 0 and hf_tokens[:n] == r.sequences_ids[0][:n]


def test_export_ct2_of_a_sharded_dir(merged: Path, tmp_path: Path) -> None:
    """A sharded model dir exports to the same model.bin; export.json names every shard."""
    pytest.importorskip("ctranslate2")
    from speechmerge.io.atomic import MANIFEST
    from speechmerge.io.shards import INDEX_NAME
    from speechmerge.io.weights import SafetensorsReader, nbytes, save_model_weights

    sharded = tmp_path / "sharded"  # the merge with its weights rewritten as 4 shards
    shutil.copytree(merged, sharded, ignore=shutil.ignore_patterns("model.safetensors", MANIFEST))
    with SafetensorsReader(merged / "model.safetensors") as r:
        specs = [(k, r.dtype(k), r.shape(k)) for k in r]
        limit = sum(nbytes(dt, sh) for _, dt, sh in specs) // 4 + 1
        files = save_model_weights(sharded, specs, r.get_tensor, {"format": "pt"}, limit)
    assert len(files) >= 4 and files[-1].name == INDEX_NAME
    for src in (merged, sharded):
        assert cli.main(["export-ct2", str(src), str(tmp_path / f"ct2-{src.name}")]) == 0
    one, many = tmp_path / f"ct2-{merged.name}", tmp_path / "ct2-sharded"
    assert (one / "model.bin").read_bytes() == (many / "model.bin").read_bytes()
    record = json.loads((many / "export.json").read_text())
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert record["source_weights_sha256"] == digest.pop(INDEX_NAME)
    assert record["source_shards_sha256"] == digest
    assert "source_shards_sha256" not in json.loads((one / "export.json").read_text())


def test_export_ct2_refuses_existing_out_and_bad_dirs(merged: Path, tmp_path: Path) -> None:
    from speechmerge.convert import ConversionError, export_ct2

    with pytest.raises(ConversionError, match="tokenizer.json"):  # config + weights only
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "model.safetensors").write_bytes((merged / "model.safetensors").read_bytes())
        (bad / "config.json").write_text((merged / "config.json").read_text())
        export_ct2(bad, tmp_path / "out")
    with pytest.raises(ConversionError, match="quantization"):
        export_ct2(merged, tmp_path / "out", quantization="int4")
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    assert cli.main(["export-ct2", str(merged), str(tmp_path / "taken")]) != 0


def test_console_entry_point() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["speechmerge"] == "speechmerge.console:main"
    assert callable(cli.main)
