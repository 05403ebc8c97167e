"""Fault injection: the hostile-user probes of issue 14, replayed.

Each probe does what the issue's tester did — mostly through the real command line
(``python -m speechmerge`` in a subprocess), the config files as a user edits them, and
``snakemake -n`` — and must end in a named error (non-zero exit, the file / key / tensor in
the message, no traceback) or in correct behaviour. The ids carry the issue's item number;
the deeper regression test of each item is named beside it:

========  ===========================================  ===========================================
item      probe (this module)                          regression tests
========  ===========================================  ===========================================
1         a preset over a config.yaml that would break  test_presets: effective config of the
          the run if merged under it: ``snakemake -n``  smoke and paper presets from the repo root
2         ``merge --out`` a user's folder, a plain      test_cli.test_merge_out_*, test_merge.
          file, ``.``: refused, nothing changed         test_merge_models_refuses_a_users_folder
3         split fractions 0.6 + 0.6: the config is      test_config.test_split_fractions_*,
          refused; the corpus job itself fails fast     test_corpus.test_sampling_fails_*
4         the same config with its lines/keys           test_workflow / test_presets:
          reordered gives the same job params           test_reordering_*_reruns_nothing
5         per-pair rank_ratio 5, [4, 2] ranges, λ .nan  test_config.test_per_pair_*, _ranges_*,
          and .inf written into a preset file           _lambda_*; test_presets.test_bad_values_*
6         a merged model without its weights, a         test_cli.test_verify_finds_damaged_outputs,
          truncated FLAC: ``verify`` and the input      test_merge.test_damaged_model_folder_*,
          check name the file                           test_corpus.test_subset_refuses_*
7         ``--taskvectors ft/model.safetensors``        test_cli.test_cli_refuses_typos_*
8         a base with ``checkpoint-500/`` and a         test_merge.test_merge_models_copies_only_*
          symlinked secret: neither is copied
9         SIGTERM / SIGKILL during a CLI merge: no      test_cli.test_stale_temps_*,
          temp folder left / the next run removes it    test_cli.test_sigterm_*, test_presets.
                                                        test_sigterm_leaves_no_temp_output
10        output parent a file, unwritable parent,      test_cli.test_cli_os_errors_are_named,
          ``compress --out`` a folder, bad factor       test_cli.test_compressed_factor_shapes_*
11        outputs under umask 027 are 0750 / 0640       test_cli.test_outputs_get_umask_*
12        two identical merges: identical merge.json    test_cli.test_merge_replaces_its_own_*
13        ``--param rank_ration=0.1``,                  test_cli.test_cli_refuses_typos_*
          ``--rank-ratio 0``
========  ===========================================  ===========================================

Every probe starts a Python or snakemake process (seconds of imports), so the probes run
side by side, as many at a time as there are CPUs, in one module fixture; each test case
reports its own probe's outcome. Workflow runs are not replayed (minutes): the
workflow-level faults (items 6 and 9) call the library functions the jobs call.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli, merge_args, reversed_keys, smk, tree

from speechmerge.io.atomic import TMP_TAG

Models = tuple[Path, Path, list[Path]]  # the `whisper` fixture: (root, base, fine-tunes)
Probe = Callable[[Path, dict], None]  # (its own empty folder, shared inputs)
PROBES: dict[str, Probe] = {}


def probe(name: str) -> Callable[[Probe], Probe]:
    def register(fn: Probe) -> Probe:
        PROBES[name] = fn
        return fn

    return register


def named_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 1 with an ``error:`` line naming every fragment, and no traceback."""
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "error: " in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    for f in fragments:
        assert f in r.stderr, (f, r.stderr[-2000:])


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if TMP_TAG in p.name or p.name.startswith("..")]


# ---------------------------------------------------------------- shared inputs


@pytest.fixture(scope="module")
def shared(whisper, tmp_path_factory) -> dict:
    """A base booby-trapped like the issue's (a checkpoint folder, a symlinked secret),
    merged twice and compressed through the CLI under umask 027 (items 6, 8, 10, 11, 12)."""
    _, base, fts = whisper
    work = tmp_path_factory.mktemp("shared")
    trapped = work / "base"
    shutil.copytree(base, trapped)
    (trapped / "checkpoint-500").mkdir()
    (trapped / "checkpoint-500" / "optimizer.pt").write_bytes(b"x" * 4096)
    (work / "secret.txt").write_text("password")
    (trapped / "vocab.json").symlink_to(work / "secret.txt")
    jobs = {
        "m1": merge_args(trapped, fts, work / "m1"),
        "m2": merge_args(trapped, fts, work / "m2"),
        "c": ["compress", "--base", str(base), "--finetuned", str(fts[0]), "--rank-ratio", "0.25",
              "--keep-ratio", "0.1", "--out", str(work / "c.safetensors"), "--quiet"],
    }  # fmt: skip
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        runs = dict(zip(jobs, pool.map(lambda a: cli(*a, umask=0o027), jobs.values()), strict=True))
    for name, r in runs.items():
        assert r.returncode == 0, (name, r.stderr[-3000:])
    return {"models": whisper, "work": work, "trapped": trapped}


def this_modules_probes(session: pytest.Session) -> list[str]:
    """The probes of the test cases pytest will run (so ``-k item02`` replays only those)."""
    return [
        item.callspec.params["name"]
        for item in session.items
        if item.module.__name__ == __name__ and item.originalname == "test_probe"
    ]


@pytest.fixture(scope="module")
def replayed(request, tmp_path_factory) -> dict[str, BaseException | None]:
    """Run the selected probes side by side; what each raised (None: it held)."""
    names = this_modules_probes(request.session) or list(PROBES)
    inputs: dict = {}
    if any(not n.startswith(("item03", "item04", "item05")) for n in names):
        inputs = request.getfixturevalue("shared")
    if any(n.startswith("item01") for n in names):
        inputs["repo"] = request.getfixturevalue("repo_copy")

    def run(name: str) -> BaseException | None:
        try:
            PROBES[name](tmp_path_factory.mktemp(name), inputs)
        except BaseException as e:  # noqa: BLE001 - AssertionError, pytest.skip, ...
            return e
        return None

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return dict(zip(names, pool.map(run, names), strict=True))


# ---------------------------------------------------------------- 1: presets are complete


@probe("item01-preset-ignores-config-yaml")
def _(tmp: Path, inputs: dict) -> None:
    """config.yaml with a key the schema refuses: a run of a preset does not see it (it would
    fail validation if config.yaml were merged under the preset); a run without one does."""
    repo = inputs["repo"]
    (repo / "config.yaml").write_text(
        (REPO / "config.yaml").read_text() + "\npoisoned_by_config_yaml: 1\n"
    )
    r = smk(repo, "-n", "--configfile", "configs/smoke.yaml")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "poisoned_by_config_yaml" not in r.stdout + r.stderr
    r = smk(repo, "-n")
    assert r.returncode != 0 and "poisoned_by_config_yaml" in r.stdout + r.stderr


# ---------------------------------------------------------------- 2: --out never deletes


@probe("item02-out-users-folder")
def _(tmp: Path, inputs: dict) -> None:
    _, base, fts = inputs["models"]
    notes = tmp / "notes"
    (notes / "src").mkdir(parents=True)
    (notes / "src" / "main.py").write_text("print('mine')")
    (notes / "README").write_text("notes")
    before = tree(notes)
    named_error(cli(*merge_args(base, fts, notes)), str(notes), "--force")
    assert tree(notes) == before and not temps(tmp)


@probe("item02-out-plain-file")
def _(tmp: Path, inputs: dict) -> None:
    _, base, fts = inputs["models"]
    (tmp / "results.txt").write_text("keep")
    named_error(cli(*merge_args(base, fts, tmp / "results.txt")), "results.txt")
    assert (tmp / "results.txt").read_text() == "keep" and not temps(tmp)


@probe("item02-out-dot")
def _(tmp: Path, inputs: dict) -> None:
    _, base, fts = inputs["models"]
    (tmp / "x.txt").write_text("x")
    named_error(cli(*merge_args(base, fts, "."), cwd=tmp), "current folder")
    assert sorted(p.name for p in tmp.iterdir()) == ["x.txt"]  # no ..old-* folder
    assert not temps(tmp.parent)


# ---------------------------------------------------------------- 3-5: the config


def edited_preset(tmp: Path, *edits: tuple[str, str]) -> Path:
    """configs/smoke.yaml with text replaced, as a user edits the file."""
    text = (REPO / "configs/smoke.yaml").read_text()
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp / "edited.yaml"
    path.write_text(text)
    return path


def refused(path: Path, *fragments: str) -> None:
    from speechmerge.config import load_config

    with pytest.raises(ValueError) as ei:
        load_config(path)
    for f in fragments:
        assert f in str(ei.value), (f, str(ei.value))


FRACTIONS = (
    ("dev_fraction: 0.1", "dev_fraction: 0.6"),
    ("test_fraction: 0.1", "test_fraction: 0.6"),
)


@probe("item03-split-fractions-config")
def _(tmp: Path, inputs: dict) -> None:
    refused(edited_preset(tmp, *FRACTIONS), "dev_fraction", "test_fraction")


@probe("item03-split-fractions-corpus-job")
def _(tmp: Path, inputs: dict) -> None:
    """The corpus job's function given the config the schema once accepted: an error naming
    the keys within the timeout (it looped forever)."""
    cfg = yaml.safe_load(edited_preset(tmp, *FRACTIONS).read_text())["corpus"]["synthetic"]
    cfg["utterances"] = {"base": 1, "train": 2, "dev": 1, "test": 1}
    code = (
        "import json, sys; from speechmerge.corpus import synthesize_language; "
        "synthesize_language('de', sys.argv[1], json.loads(sys.argv[2]), 7, progress=False)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp / "de"), json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode != 0 and "dev_fraction" in r.stderr, r.stderr[-2000:]
    assert not (tmp / "de").exists() and not temps(tmp)


@probe("item04-reordered-config-same-params")
def _(tmp: Path, inputs: dict) -> None:
    """Snakemake reruns a job when the repr of its params changes: two lines of config.yaml
    swapped, or every mapping reversed, must give the same params (the whole config, of which
    job params are parts, after the workflow's canonicalisation)."""
    from speechmerge.config import canonicalize
    from speechmerge.plan.params import finetune_hparams, merge_params

    text = (REPO / "config.yaml").read_text()
    lines = text.splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if line.startswith("languages:"))
    j = next(n for n, line in enumerate(lines) if line.startswith("tasks:"))
    lines[i], lines[j] = lines[j], lines[i]
    original = yaml.safe_load(text)
    variants = [yaml.safe_load("".join(lines)), reversed_keys(original)]
    want = canonicalize(yaml.safe_load(text))
    for v in variants:
        assert repr(v) != repr(original)  # the probe reorders something
        got = canonicalize(v)
        assert repr(got) == repr(want)
        assert repr(got["corpus"]) == repr(want["corpus"])  # a job whose param is a section
        lang, task = want["languages"][0], want["tasks"][0]
        assert repr(finetune_hparams(got, lang, task)) == repr(finetune_hparams(want, lang, task))
        pairs = [(lang, t) for t in want["tasks"]]
        assert repr(merge_params(got, pairs)) == repr(merge_params(want, pairs))


@probe("item05-per-pair-rank-ratio-5")
def _(tmp: Path, inputs: dict) -> None:
    path = edited_preset(tmp, ("ca-asr: 0.1}", "ca-asr: 5}"))
    refused(path, "merge.rank_ratio.ca-asr")


@probe("item05-numbers-per-utterance-4-2")
def _(tmp: Path, inputs: dict) -> None:
    path = edited_preset(tmp, ("numbers_per_utterance: [2, 4]", "numbers_per_utterance: [4, 2]"))
    refused(path, "corpus.synthetic.domains.target.numbers_per_utterance", "low <= high")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_item05_lambda_not_finite(tmp_path: Path, value: str) -> None:
    """λ ``.nan`` / ``.inf`` in the YAML file (in-process: no process to start)."""
    refused(edited_preset(tmp_path, ("mt: 0.5}", f"mt: {value}}}")), "merge.lambda.mt")


# ---------------------------------------------------------------- 6: damaged outputs


@probe("item06-damaged-model-and-flac")
def _(tmp: Path, inputs: dict) -> None:
    """A merged model without its weights and a corpus with a truncated FLAC, both complete
    for Snakemake: ``verify`` names both files, and so does the check every job makes on its
    input folders."""
    import numpy as np
    import soundfile as sf

    from speechmerge.io.atomic import atomic_dir, check_folder, verify_tree

    results = tmp / "results"
    model = results / "merged" / "ml-asr" / "ta"
    shutil.copytree(inputs["work"] / "m1", model)
    corpus = results / "corpus" / "ca"
    with atomic_dir(corpus) as t:
        (t / "clips").mkdir()
        sf.write(t / "clips" / "u1.flac", np.sin(np.arange(1600) / 5.0), 16000)
        (t / "train.tsv").write_text("id\taudio\nu1\tclips/u1.flac\n")
    assert verify_tree(results) == (2, [])
    (model / "model.safetensors").unlink()
    flac = corpus / "clips" / "u1.flac"
    flac.write_bytes(flac.read_bytes()[:-50])
    r = cli("verify", str(results))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{model / 'model.safetensors'}: missing" in r.stdout, r.stdout
    assert f"{flac}: " in r.stdout and "bytes" in r.stdout, r.stdout
    for folder, name in ((model, "model.safetensors"), (corpus, "u1.flac")):
        with pytest.raises(ValueError, match=re.escape(name)):
            check_folder(folder)


# ---------------------------------------------------------------- 7, 13: what the CLI accepts


@probe("item07-model-file-as-taskvector")
def _(tmp: Path, inputs: dict) -> None:
    _, base, fts = inputs["models"]
    weights = str(fts[0] / "model.safetensors")
    r = cli("merge", "--base", str(base), "--taskvectors", weights, "--method", "ta",
            "--out", str(tmp / "o"), "--quiet")  # fmt: skip
    named_error(r, weights, "not a task-vector file")
    assert not (tmp / "o").exists()


@probe("item13-param-typo")
def _(tmp: Path, inputs: dict) -> None:
    _, base, fts = inputs["models"]
    args = merge_args(base, fts, tmp / "o", "--method", "lors", "--param", "rank_ration=0.1")
    named_error(cli(*args), "rank_ration")
    assert not (tmp / "o").exists()


@probe("item13-rank-ratio-0")
def _(tmp: Path, inputs: dict) -> None:
    _, base, fts = inputs["models"]
    args = merge_args(base, fts, tmp / "o", "--method", "lors", "--rank-ratio", "0")
    named_error(cli(*args), "rank_ratio", "(0, 1]")
    assert not (tmp / "o").exists()


# ---------------------------------------------------------------- 8, 11, 12: merged outputs


@probe("item08-base-copied-wholesale")
def _(tmp: Path, inputs: dict) -> None:
    out = inputs["work"] / "m1"
    assert not (out / "checkpoint-500").exists()
    assert not (out / "vocab.json").exists() and not (out / "vocab.json").is_symlink()
    assert not any(p.is_symlink() or p.is_dir() for p in out.iterdir())
    assert b"password" not in b"".join(tree(out).values())
    assert json.loads((out / "merge.json").read_text())["copied_files"] == [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
    ]


@probe("item11-umask-027-permissions")
def _(tmp: Path, inputs: dict) -> None:
    work = inputs["work"]
    assert stat.S_IMODE((work / "m1").stat().st_mode) == 0o750
    for f in (work / "m1").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f
    assert stat.S_IMODE((work / "c.safetensors").stat().st_mode) == 0o640


@probe("item12-identical-merges-identical-records")
def _(tmp: Path, inputs: dict) -> None:
    work = inputs["work"]
    a, b = (tree(work / m) for m in ("m1", "m2"))
    assert a.keys() == b.keys() and a == b  # weights, merge.json and manifest alike
    assert TMP_TAG.encode() not in a["merge.json"]


# ---------------------------------------------------------------- 9: killed merges

#: The CLI with the merge stalled after the task vectors were written into their temp folder
#: (a tiny merge is over before a signal could land), printing "ready" when it stalls.
STALLED_CLI = """
import sys, time
import speechmerge.cli as cli
import speechmerge.cli.commands as commands
def stall(*args, **kwargs):
    print("ready", flush=True)
    for _ in range(3000):  # short sleeps: the handler runs even if another thread got the signal
        time.sleep(0.1)
commands.merge_models = stall
sys.exit(cli.main(sys.argv[1:]))
"""


def kill_mid_merge(tmp: Path, inputs: dict, sig: signal.Signals) -> subprocess.Popen:
    _, base, fts = inputs["models"]
    cmd = [sys.executable, "-c", STALLED_CLI, *merge_args(base, fts, tmp / "m")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        [tv_dir] = temps(tmp)  # the task vectors, mid-merge
        assert sorted(p.name for p in tv_dir.iterdir()) == ["tv0.safetensors", "tv1.safetensors"]
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


@probe("item09-sigterm-mid-merge")
def _(tmp: Path, inputs: dict) -> None:
    proc = kill_mid_merge(tmp, inputs, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(tmp.iterdir()) == []


@probe("item09-sigkill-mid-merge-then-rerun")
def _(tmp: Path, inputs: dict) -> None:
    _, base, fts = inputs["models"]
    proc = kill_mid_merge(tmp, inputs, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert len(temps(tmp)) == 1  # nothing can clean up after SIGKILL ...
    r = cli(*merge_args(base, fts, tmp / "m"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.name for p in tmp.iterdir()] == ["m"]  # ... the next run does


# ---------------------------------------------------------------- 10: OS errors, bad factors


@probe("item10-out-parent-is-a-file")
def _(tmp: Path, inputs: dict) -> None:
    _, base, fts = inputs["models"]
    (tmp / "afile").write_text("x")
    named_error(cli(*merge_args(base, fts, tmp / "afile" / "out")), f"{tmp / 'afile'}")


@probe("item10-out-parent-unwritable")
def _(tmp: Path, inputs: dict) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    _, base, fts = inputs["models"]
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        named_error(cli(*merge_args(base, fts, ro / "out")), "Permission denied", str(ro))
    finally:
        ro.chmod(0o755)


@probe("item10-compress-out-is-a-folder")
def _(tmp: Path, inputs: dict) -> None:
    _, base, fts = inputs["models"]
    (tmp / "folder").mkdir()
    r = cli("compress", "--base", str(base), "--finetuned", str(fts[0]), "--rank-ratio", "0.1",
            "--keep-ratio", "0.1", "--out", str(tmp / "folder"))  # fmt: skip
    named_error(r, str(tmp / "folder"), "is a folder")
    assert list((tmp / "folder").iterdir()) == []


@probe("item10-compressed-bad-factor-shape")
def _(tmp: Path, inputs: dict) -> None:
    """A compressed task vector whose ``::us`` factor (U·S) has one row too many, metadata intact."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    _, base, _ = inputs["models"]
    with safe_open(str(inputs["work"] / "c.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = min(k for k in tensors if k.endswith("::us"))
    tensors[name] = torch.cat([tensors[name], tensors[name][:1]])
    bad = tmp / "bad.safetensors"
    save_file(tensors, bad, metadata=meta)
    r = cli("merge", "--base", str(base), "--taskvectors", str(bad), "--method", "ta",
            "--out", str(tmp / "o"), "--quiet")  # fmt: skip
    named_error(r, str(bad), name[: -len("::us")])
    assert not (tmp / "o").exists()


# ---------------------------------------------------------------- the cases


@pytest.mark.parametrize("name", list(PROBES))
def test_probe(name: str, replayed: dict[str, BaseException | None]) -> None:
    error = replayed[name]
    if error is not None:
        raise error
