"""Shared test helpers: tiny Whisper model dirs, the CLI and the snakemake CLI as a user runs
them, a repository copy to run presets in, score files in the format of the scoring code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from speechmerge.hypotheses import write_hypotheses
from speechmerge.metrics import score

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

# On a shared, oversubscribed CPU a single example can exceed Hypothesis' 200 ms deadline
# for reasons unrelated to the code under test: `pytest --hypothesis-profile=no-deadline`.
settings.register_profile("no-deadline", deadline=None)

#: The smallest Whisper architecture the library's base builder accepts; shared by the tests
#: that need a real (tiny) WhisperForConditionalGeneration.
ARCH_TINY = {
    "num_mel_bins": 80,
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "attention_heads": 2,
    "ffn_dim": 32,
    "max_target_positions": 16,
}


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (they are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def arch_tiny() -> dict:
    return dict(ARCH_TINY)


def reversed_keys(value):
    """The same config with every mapping's keys in reverse order (for rerun checks)."""
    if isinstance(value, dict):
        return {k: reversed_keys(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [reversed_keys(v) for v in value]
    return value


# ------------------------------------------------------------------ the command line


def cli(
    *args: str, cwd: Path | None = None, umask: int | None = None
) -> subprocess.CompletedProcess:
    """``python -m speechmerge ARGS`` in a subprocess (in `cwd`, under `umask` if given)."""
    cmd = [sys.executable, "-m", "speechmerge", *args]
    if umask is not None:  # set in the child only: os.umask is process-wide (and tests thread)
        cmd = ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, check=False)


def merge_args(base: Path, fts: list[Path], out: Path | str, *extra: str) -> list[str]:
    return ["merge", "--base", str(base), "--finetuned", *map(str, fts), "--method", "ta",
            "--out", str(out), "--quiet", *extra]  # fmt: skip


def tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    """A tiny saved Whisper base and two fine-tunes of it: (root, base dir, [ft dirs])."""
    import torch
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


# ------------------------------------------------------------------ score files

#: References and hypotheses of fabricated score files (tests/test_card.py, test_deploy.py).
REFS = {
    ("ca", "asr"): ["u n dos", "tres quatre", "cinc sis set", "vuit"],
    ("de", "asr"): ["eins zwei", "drei vier fünf", "sechs", "sieben acht"],
    ("ca", "st"): ["one two", "three four", "five six seven", "eight"],
    ("de", "st"): ["one two", "three four five", "six", "seven eight"],
}
HYPS = {
    ("ca", "asr"): ["u dos", "tres quatre", "cinc sis", "vuit nou"],
    ("de", "asr"): ["eins zwei", "drei vier", "sechs", "sieben acht"],
    ("ca", "st"): ["one two", "three four", "five six", "eight"],
    ("de", "st"): ["one two", "three five", "six", "seven eight"],
}


def write_scores(folder: Path, pairs=tuple(REFS), hypotheses: bool = True) -> Path:
    """Score files as ``speechmerge.decode.score_model`` writes them (its keys, real scores and
    CIs of the texts above, the hypotheses beside them) for `pairs` of (lang, task)."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang, task in pairs:
        refs, hyps = REFS[lang, task], HYPS[lang, task]
        result = {
            "system": "merged/mlmt/lors",
            "model": "results/merged/mlmt/lors",
            "lang": lang,
            "task": task,
            "test_set": f"results/subsets/{lang}/test.tsv",
            "utterances": len(refs),
            "beam_size": 2,
            **score(task, refs, hyps, key=f"{lang}-{task}"),
            "seconds": 0.1,
        }
        out = folder / f"{lang}-{task}.json"
        if hypotheses:
            write_hypotheses(out, [f"{lang}-{i}" for i in range(len(refs))], refs, hyps)
        out.write_text(json.dumps(result, indent=2))
    return folder


# ------------------------------------------------------------------ the workflow

#: What a user's checkout has at its root (results/, .snakemake/ and tests/ left out).
REPO_ENTRIES = [
    "Snakefile",
    "config.yaml",
    "configs",
    "rules",
    "workflow_scripts",
    "report",
    "envs",
    "profiles",
    "speechmerge",
]


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """A copy of the repository (what a user's checkout has), to run the workflow in."""
    root = tmp_path_factory.mktemp("repo")
    for name in REPO_ENTRIES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, root / name)
    return root


def smk(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The snakemake CLI in `root` (a repository copy), as a user runs it there."""
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=root, capture_output=True, text=True, timeout=600, check=False
    )
