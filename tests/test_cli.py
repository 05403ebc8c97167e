"""Tests for the command line (python -m speechmerge), run as a subprocess on a tiny Whisper."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speechmerge.cli import main
from speechmerge.merge import METHODS, merge_models
from speechmerge.taskvector import compute_task_vector


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "speechmerge", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("whisper")
    cfg = WhisperConfig(
        vocab_size=64, num_mel_bins=8, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_source_positions=16, max_target_positions=16, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    base = WhisperForConditionalGeneration(cfg).eval()
    base.generation_config = GenerationConfig(decoder_start_token_id=1, max_length=10)
    base.save_pretrained(root / "base", safe_serialization=True)
    (root / "base" / "preprocessor_config.json").write_text('{"feature_size": 8}')
    fts = []
    for i in range(2):
        ft = WhisperForConditionalGeneration.from_pretrained(root / "base")
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(0.01 * torch.randn_like(p))
        ft.save_pretrained(root / f"ft{i}", safe_serialization=True)
        fts.append(root / f"ft{i}")
    return root, root / "base", fts


def library_merge(root: Path, base: Path, fts: list[Path], method: str, lam: float, params):
    tvs = [compute_task_vector(base, d, root / f"lib-tv{i}.safetensors") for i, d in enumerate(fts)]
    return merge_models(base, tvs, method, lam, params, root / f"lib-{method}", progress=False)


def inproc(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (subprocesses cost seconds of imports each)."""
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse errors
        rc = int(e.code or 0)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def test_help_lists_every_method_and_option(capsys) -> None:
    r = cli("merge", "--help")
    assert r.returncode == 0
    for name in METHODS:
        assert f"\n  {name} " in r.stdout
    for opt in ("--base", "--finetuned", "--taskvectors", "--method", "--lambda", "--rank-ratio",
                "--keep-ratio", "--drop-rate", "--seed", "--common-fraction", "--rank-fraction",
                "--param", "--model-params", "--out"):  # fmt: skip
        assert opt in r.stdout
    top = inproc(capsys, "--help")
    assert top.returncode == 0 and "compress" in top.stdout


def test_cli_merge_loads_and_equals_library(whisper) -> None:
    from transformers import WhisperForConditionalGeneration

    root, base, fts = whisper
    out = root / "cli-lors"
    r = cli(
        "merge", "--base", str(base), "--finetuned", *map(str, fts), "--method", "lors",
        "--lambda", "0.5", "--rank-ratio", "0.25", "--keep-ratio", "0.3",
        "--model-params", f"{fts[1]}:rank_ratio=0.5,keep_ratio=0.1", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "merge[lors]" in r.stderr  # progress bar over tensors
    params = [{"rank_ratio": 0.25, "keep_ratio": 0.3}, {"rank_ratio": 0.5, "keep_ratio": 0.1}]
    ref = library_merge(root, base, fts, "lors", 0.5, params)
    a, b = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    model = WhisperForConditionalGeneration.from_pretrained(out)
    for k, v in model.state_dict().items():
        if k in a:
            torch.testing.assert_close(v, a[k], msg=k)
    for f in ("config.json", "generation_config.json", "preprocessor_config.json"):
        assert (out / f).read_text() == (base / f).read_text()
    assert not [p for p in root.iterdir() if p.name.startswith(".speechmerge-tv")]


def test_cli_other_methods_and_defaults(whisper, capsys) -> None:
    root, base, fts = whisper
    out = root / "cli-dare"
    r = inproc(capsys, "merge", "--base", str(base), "--finetuned", *map(str, fts), "--method", "dare",
            "--drop-rate", "0.5", "--seed", "3", "--out", str(out), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    ref = library_merge(root, base, fts, "dare", 0.3, {"drop_rate": 0.5, "seed": 3})
    a, b = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_cli_compress_then_merge(whisper, capsys) -> None:
    root, base, fts = whisper
    c = root / "c0.safetensors"
    r = inproc(capsys, "compress", "--base", str(base), "--finetuned", str(fts[0]), "--rank-ratio", "0.25",
            "--keep-ratio", "0.1", "--exact-svd", "--out", str(c), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "compression ratio" in r.stdout
    out = root / "cli-from-compressed"
    r = inproc(capsys, "merge", "--base", str(base), "--taskvectors", str(c), "--method", "ta",
            "--lambda", "1", "--out", str(out), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    ref = library_merge(root, base, fts[:1], "lors", 1.0,
                        {"rank_ratio": 0.25, "keep_ratio": 0.1, "exact": True})  # fmt: skip
    a, b = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_cli_errors(whisper, tmp_path: Path, capsys) -> None:
    _, base, fts = whisper
    r = cli("merge", "--base", str(tmp_path / "nope"), "--finetuned", str(fts[0]),
            "--method", "ta", "--out", str(tmp_path / "o"))  # fmt: skip
    assert r.returncode == 1 and "--base directory not found" in r.stderr and "nope" in r.stderr
    r = inproc(capsys, "merge", "--base", str(base), "--finetuned", str(tmp_path / "gone"),
            "--method", "ta", "--out", str(tmp_path / "o"))  # fmt: skip
    assert r.returncode == 1 and "gone" in r.stderr
    r = inproc(capsys, "merge", "--base", str(base), "--finetuned", str(fts[0]), "--method", "nosuch",
            "--out", str(tmp_path / "o"))  # fmt: skip
    assert r.returncode == 2 and "invalid choice" in r.stderr and "lors" in r.stderr
    r = inproc(capsys, "merge", "--base", str(base), "--finetuned", str(fts[0]), "--method", "lors",
            "--model-params", "elsewhere:rank_ratio=0.1", "--out", str(tmp_path / "o"))  # fmt: skip
    assert r.returncode == 1 and "not one of the merged models" in r.stderr
    assert not (tmp_path / "o").exists()
