"""Tests for the command line (python -m speechmerge), run as a subprocess on a tiny Whisper."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli, merge_args, tree
from safetensors.torch import load_file

from speechmerge.cli import main
from speechmerge.merge import METHODS, merge_models
from speechmerge.taskvector import compute_task_vector


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
                "--param", "--model-params", "--out", "--max-shard-size"):  # fmt: skip
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


# ------------------------------------------------ outputs the user owns (issue 14)


def test_merge_out_refuses_a_users_folder_and_file(whisper, tmp_path: Path, capsys) -> None:
    _, base, fts = whisper
    notes = tmp_path / "notes"
    (notes / "src").mkdir(parents=True)
    (notes / "src" / "main.py").write_text("print('mine')")
    (notes / "data.csv").write_text("a,b\n")
    before = tree(notes)
    r = inproc(capsys, *merge_args(base, fts, notes))
    assert (
        r.returncode == 1 and "not an output of speechmerge" in r.stderr and "--force" in r.stderr
    )
    assert tree(notes) == before
    plain = tmp_path / "plain.txt"
    plain.write_text("keep")
    r = inproc(capsys, *merge_args(base, fts, plain))
    assert r.returncode == 1 and "is a file" in r.stderr and plain.read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    r = inproc(capsys, *merge_args(base, fts, notes, "--force"))
    assert r.returncode == 0, r.stderr
    assert (notes / "model.safetensors").is_file() and not (notes / "src").exists()


def test_merge_out_current_folder_is_a_named_error(whisper, tmp_path: Path, capsys, monkeypatch):
    _, base, fts = whisper
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("x")
    for out in (".", "..", str(tmp_path)):
        r = inproc(capsys, *merge_args(base, fts, out, "--force"))
        assert r.returncode == 1 and "current folder" in r.stderr, (out, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_merge_replaces_its_own_output_and_records_no_temp_path(whisper, tmp_path: Path, capsys):
    _, base, fts = whisper
    out = tmp_path / "m"
    assert inproc(capsys, *merge_args(base, fts, out)).returncode == 0
    first = (out / "merge.json").read_text()
    assert inproc(capsys, *merge_args(base, fts, out)).returncode == 0  # a previous output
    assert (out / "merge.json").read_text() == first  # identical merges, identical records
    paths = [t["path"] for t in json.loads(first)["taskvectors"]]
    assert paths == [str(d) for d in fts]


def test_outputs_get_umask_permissions(whisper, tmp_path: Path, capsys) -> None:
    _, base, fts = whisper
    old = os.umask(0o022)
    try:
        assert inproc(capsys, *merge_args(base, fts, tmp_path / "m")).returncode == 0
        c = tmp_path / "c.safetensors"
        r = inproc(capsys, "compress", "--base", str(base), "--finetuned", str(fts[0]),
                   "--rank-ratio", "0.25", "--keep-ratio", "0.1", "--out", str(c), "--quiet")  # fmt: skip
        assert r.returncode == 0, r.stderr
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "m/model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "m/merge.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(c.stat().st_mode) == 0o644


def test_stale_temps_of_a_killed_run_are_removed(whisper, tmp_path: Path, capsys) -> None:
    from speechmerge.io.atomic import TMP_TAG, _host

    _, base, fts = whisper
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    stale = tmp_path / f".m{TMP_TAG}{_host()}-{pid}-abc123"
    (stale / "x").mkdir(parents=True)
    alive = tmp_path / f".m{TMP_TAG}{_host()}-{os.getppid()}-def456"  # a live process's
    alive.mkdir()
    foreign = tmp_path / f".m{TMP_TAG}otherhost-{pid}-ghi789"  # another machine's
    foreign.mkdir()
    assert inproc(capsys, *merge_args(base, fts, tmp_path / "m")).returncode == 0
    assert not stale.exists() and alive.exists() and foreign.exists()


def test_sigterm_cleans_up_like_sigint(tmp_path: Path) -> None:
    from speechmerge.io.atomic import atomic_dir, terminate_on_sigterm

    with pytest.raises(SystemExit) as ei, terminate_on_sigterm(), atomic_dir(tmp_path / "o") as t:
        (t / "part").write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert ei.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_cli_refuses_typos_bad_ranges_and_model_files(whisper, tmp_path: Path, capsys) -> None:
    _, base, fts = whisper
    out = tmp_path / "o"
    r = inproc(capsys, *merge_args(base, fts, out, "--param", "rank_ration=0.1"))
    assert r.returncode == 1 and "unknown parameter 'rank_ration'" in r.stderr
    r = inproc(capsys, *merge_args(base, fts, out, "--model-params", f"{fts[0]}:keep_ratoi=0.1"))
    assert r.returncode == 1 and "keep_ratoi" in r.stderr
    r = inproc(capsys, *merge_args(base, fts, out, "--rank-ratio", "0"))
    assert r.returncode == 1 and "rank_ratio must be in (0, 1]" in r.stderr
    r = inproc(capsys, *merge_args(base, fts, out, "--param", "drop_rate=1"))
    assert r.returncode == 1 and "drop_rate" in r.stderr
    r = inproc(capsys, *merge_args(base, fts, out, "--lambda", "nan"))
    assert r.returncode == 1 and "--lambda" in r.stderr
    r = inproc(capsys, "merge", "--base", str(base), "--taskvectors", str(fts[0] / "model.safetensors"),
               "--method", "ta", "--out", str(out), "--quiet")  # fmt: skip
    assert (
        r.returncode == 1
        and "not a task-vector file" in r.stderr
        and "model.safetensors" in r.stderr
    )
    r = inproc(capsys, "compress", "--taskvector", str(fts[0] / "model.safetensors"),
               "--rank-ratio", "0.1", "--keep-ratio", "0.1", "--out", str(tmp_path / "c.st"))  # fmt: skip
    assert r.returncode == 1 and "not a task-vector file" in r.stderr
    assert not out.exists()


def test_cli_os_errors_are_named(whisper, tmp_path: Path, capsys) -> None:
    _, base, fts = whisper
    (tmp_path / "afile").write_text("x")
    r = inproc(capsys, *merge_args(base, fts, tmp_path / "afile" / "out"))
    assert r.returncode == 1 and "afile is not a directory" in r.stderr
    folder = tmp_path / "folder"
    folder.mkdir()
    r = inproc(capsys, "compress", "--base", str(base), "--finetuned", str(fts[0]),
               "--rank-ratio", "0.1", "--keep-ratio", "0.1", "--out", str(folder))  # fmt: skip
    assert r.returncode == 1 and "is a folder" in r.stderr
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        r = inproc(capsys, *merge_args(base, fts, ro / "out"))
        assert r.returncode == 1 and "Permission denied" in r.stderr


def test_compressed_factor_shapes_are_checked(whisper, tmp_path: Path, capsys) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    _, base, fts = whisper
    c = tmp_path / "c.safetensors"
    r = inproc(capsys, "compress", "--base", str(base), "--finetuned", str(fts[0]),
               "--rank-ratio", "0.25", "--keep-ratio", "0.1", "--out", str(c), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    with safe_open(str(c), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = next(k for k in tensors if k.endswith("::v"))
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1] + 1)
    save_file(tensors, c, metadata=meta)
    r = inproc(capsys, "merge", "--base", str(base), "--taskvectors", str(c), "--method", "ta",
               "--out", str(tmp_path / "o"), "--quiet")  # fmt: skip
    assert r.returncode == 1 and str(c) in r.stderr and name[: -len("::v")] in r.stderr


def test_verify_finds_damaged_outputs(whisper, tmp_path: Path, capsys) -> None:
    _, base, fts = whisper
    out = tmp_path / "results" / "merged" / "m"
    assert inproc(capsys, *merge_args(base, fts, out)).returncode == 0
    r = inproc(capsys, "verify", str(tmp_path / "results"))
    assert r.returncode == 0 and "1 output folders checked" in r.stdout and "0 problems" in r.stdout
    cfg = (out / "config.json").read_bytes()
    (out / "config.json").write_bytes(cfg.replace(b"whisper", b"WHISPER"))  # same size
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (out / "generation_config.json").unlink()
    r = inproc(capsys, "verify", str(tmp_path / "results"))
    assert r.returncode == 1
    for name, why in (("config.json", "content differs"), ("model.safetensors", "bytes"),
                      ("generation_config.json", "missing")):  # fmt: skip
        assert f"{out / name}: " in r.stdout and why in r.stdout, r.stdout
