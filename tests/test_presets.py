"""Presets run from the repository root: a preset is complete on its own (config.yaml is not
merged under it) and the run's effective config is written to results/config.effective.yaml.

The workflow tests run presets with ``--directory`` elsewhere, where config.yaml is absent;
these run in a copy of the repository, where it is present, like a user would.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SNAKEMAKE, reversed_keys, smk

from speechmerge.config import SCHEMA

pytestmark = pytest.mark.workflow


def effective_config(root: Path, preset: str | None, target: str) -> dict:
    """Start a run of `preset` from the repository root (``--touch``: no job computes, but
    the run starts, so the effective config is written) and read its effective config."""
    out = root / "results/config.effective.yaml"
    out.unlink(missing_ok=True)
    res = smk(
        root, target, "--cores", "1", "--touch", *(["--configfile", preset] if preset else [])
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return yaml.safe_load(out.read_text())


def with_schema_defaults(config: dict) -> dict:
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, str(SCHEMA))
    return config


def test_smoke_preset_from_the_repo_root_is_the_preset(repo_copy: Path):
    preset = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    eff = effective_config(repo_copy, "configs/smoke.yaml", "results/subsets/ca/train.tsv")
    assert eff["finetune"]["lr"] == {"default": 1.0e-4, "de-st": 5.0e-5}  # not config.yaml's
    assert "snr_db" not in eff["corpus"]["synthetic"]["domains"]["base"]  # config.yaml has noise
    assert eff == with_schema_defaults(preset)


def test_paper_preset_merges_with_its_own_lambda(repo_copy: Path):
    preset = yaml.safe_load((REPO / "configs/covost2-whisper-small.yaml").read_text())
    eff = effective_config(
        repo_copy, "configs/covost2-whisper-small.yaml", "results/subsets/ca/train.tsv"
    )
    assert eff["merge"]["lambda"] == {"default": 0.15}  # the paper's, for every setting
    assert eff == with_schema_defaults(preset)


def test_without_configfile_config_yaml_is_the_config(repo_copy: Path):
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    langs = default["languages"]
    eff = effective_config(repo_copy, None, f"results/subsets/{langs[0]}/train.tsv")
    assert eff == with_schema_defaults(default)


@pytest.mark.parametrize(
    "path,value,key",
    [
        (["merge", "rank_ratio", "ca-asr"], 5, "ca-asr"),
        (
            ["corpus", "synthetic", "domains", "base", "numbers_per_utterance"],
            [4, 2],
            "low <= high",
        ),
        (["merge", "lambda", "mt"], float("nan"), "merge.lambda.mt"),
        (["corpus", "synthetic", "test_fraction"], 0.95, "dev_fraction"),
    ],
)
def test_bad_values_fail_before_any_job(repo_copy: Path, tmp_path: Path, path, value, key):
    config = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    node = config
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    res = smk(repo_copy, "-n", "--configfile", str(bad))
    assert res.returncode != 0
    assert key in res.stdout + res.stderr


def test_reordering_keys_reruns_nothing(repo_copy: Path, tmp_path: Path):
    """A job whose params are a whole config section (the corpus): the same config with its
    keys in another order plans nothing after a run."""
    config = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    shuffled = tmp_path / "shuffled.yaml"
    shuffled.write_text(yaml.safe_dump(reversed_keys(config), sort_keys=False))
    target = "results/corpus/ca"
    res = smk(repo_copy, target, "--cores", "1", "--configfile", "configs/smoke.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    res = smk(repo_copy, target, "-n", "--configfile", str(shuffled))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Nothing to be done" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]


def test_sigterm_leaves_no_temp_output(repo_copy: Path):
    """SIGTERM to the whole run (as a scheduler or `kill -- -PGID` sends it) while the corpus
    is being written: the job removes its temp folder like on Ctrl-C."""
    import os
    import signal
    import time

    corpus = repo_copy / "results/corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    # A corpus far larger than the smoke one, so the job is still writing when the signal
    # comes, however fast the machine (the smoke corpus can finish within the 1-s wait).
    config = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    config["corpus"]["synthetic"]["utterances"].update(base=20000, train=20000)
    slow = repo_copy / "configs/slow-corpus.yaml"
    slow.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [SNAKEMAKE, "results/corpus/de", "--cores", "1", "--configfile", str(slow)]
    proc = subprocess.Popen(
        cmd,
        cwd=repo_copy,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not list(corpus.glob(".de.*")):
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("the corpus job never started writing")
            time.sleep(0.2)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(1)
    assert not (corpus / "de").exists()
    assert not list(corpus.glob(".de.*")) if corpus.exists() else True
