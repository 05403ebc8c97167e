"""Workflow tests: the smoke preset through the real `snakemake` CLI, in a temp directory."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import reversed_keys

from speechmerge.io.atomic import verify_tree
from speechmerge.plan.settings import setting_methods

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False, **kw
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("smoke")
    res = snakemake(
        workdir, "--cores", "2", "--configfile", str(REPO / "configs/smoke.yaml"), timeout=1200
    )
    assert res.returncode == 0, res.stderr[-5000:]
    return workdir


STUDY = str(REPO / "configs/smoke-study.yaml")


@pytest.fixture(scope="module")
def study_run(smoke_run: Path, tmp_path_factory) -> Path:
    """The study smoke preset (joint training, dev selection, Figures 3-5) in a copy of the
    smoke run: same corpus, base and fine-tunes, which it must reuse."""
    import shutil

    workdir = tmp_path_factory.mktemp("study") / "run"
    shutil.copytree(smoke_run, workdir, symlinks=True)
    res = snakemake(workdir, "--cores", "2", "--configfile", STUDY, timeout=1200)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    out = res.stdout + res.stderr
    for rule in ("base", "corpus_synthetic", "finetune", "taskvector"):
        assert f"rule {rule}:" not in out, rule
    # only the merges that read a dev selection rerun: LoRS ((r, p) and λ); WA and TA read
    # neither (TA's λ is not in merge.select.methods), so the smoke run's are reused
    merged = [wc for rule, wc in planned_jobs(out) if rule == "merge"]
    assert merged and {wc["method"] for wc in merged} == {"lors"}
    return workdir


METHOD_ROWS = ["Weight Averaging", "Task Arithmetic", "MP-Merging", "SVP-Merging", "LoRS-Merging"]


def check_tables(run: Path, config_path: Path) -> dict[str, pd.DataFrame]:
    config = yaml.safe_load(config_path.read_text())
    tables = {p.stem: p for p in (run / "results/tables").glob("table*.csv")}
    assert set(tables) == {"table1", "table2", "table3", "table4", "table11", "table5", "table6"}
    out = {}
    for name, path in tables.items():
        df = out[name] = pd.read_csv(path, index_col=0)
        if name not in ("table5", "table6"):  # hyper-parameter tables: one row per value
            setting = {"table1": "ml-asr", "table2": "ml-st", "table4": "mlmt"}.get(name, "mt")
            assert len(df) >= 2 + len(setting_methods(config, setting)), name
        assert df.map(lambda x: isinstance(x, float) and math.isfinite(x)).all().all(), name
        assert (run / f"results/tables/{name}.md").read_text().count("|") > 10
    langs = config["languages"]
    t1 = out["table1"]
    assert list(t1.columns) == [*langs, "Avg.", "Avg. CI low", "Avg. CI high"]
    assert t1["Avg."].tolist() == pytest.approx(t1[langs].mean(axis=1).tolist())
    assert (t1["Avg. CI low"] <= t1["Avg."] + 1e-6).all()
    assert (t1["Avg."] <= t1["Avg. CI high"] + 1e-6).all()
    return out


def test_smoke_tables_numeric(smoke_run: Path):
    tables = check_tables(smoke_run, REPO / "configs/smoke.yaml")
    assert list(tables["table1"].index) == ["Pretrained", "Finetuned", *METHOD_ROWS]
    # merge.setting_methods: Table 4 merges with TA and LoRS only, as the paper's
    assert list(tables["table4"].index) == [
        "Pretrained",
        "Finetuned",
        "ML and MT Task Arithmetic",
        "ML and MT LoRS-Merging",
    ]
    assert not (smoke_run / "results/merged/mlmt/wa").exists()
    assert not (smoke_run / "results/figures").exists()  # the studies are smoke-study's


def test_smoke_significance(smoke_run: Path):
    """Paired-bootstrap CIs of every comparison the verdicts state, finite, containing delta."""
    from speechmerge.report.significance import COLUMNS

    tables = smoke_run / "results/tables"
    sig = pd.read_csv(tables / "significance.csv")
    assert list(sig.columns) == COLUMNS
    assert set(sig["setting"]) == {"ml-asr", "ml-st", "mt", "mlmt"}
    assert sig[["delta", "ci_low", "ci_high", "p_value"]].map(math.isfinite).all().all()
    assert ((sig["ci_low"] <= sig["delta"]) & (sig["delta"] <= sig["ci_high"])).all()
    assert sig["p_value"].between(0, 1).all()
    assert set(sig["verdict"]) <= {"better", "worse", "no significant difference"}
    pairs = set(zip(sig["system_a"], sig["system_b"]))
    assert ("LoRS-Merging", "Task Arithmetic") in pairs
    assert ("Task Arithmetic", "Weight Averaging") in pairs
    assert {a for a, b in pairs if b == "Finetuned"} == set(METHOD_ROWS)
    assert "| setting" in (tables / "significance.md").read_text()
    score = json.loads((smoke_run / "results/scores/merged/ml-asr/lors/ca-asr.json").read_text())
    assert score["ci_low"] <= score["score"] <= score["ci_high"]


def test_study_tables_have_training_rows(study_run: Path):
    tables = check_tables(study_run, REPO / "configs/smoke-study.yaml")
    rows = ["Pretrained", "Finetuned", "Multi-lingual training"]
    rows += ["Weight Averaging", "Task Arithmetic", "LoRS-Merging"]
    assert list(tables["table1"].index) == rows
    assert "Multi-task training" in tables["table3"].index


def test_study_table4_training_and_combined_rows(study_run: Path):
    """Table 4 as the paper's: joint training rows, each followed by its merges."""
    t4 = pd.read_csv(study_run / "results/tables/table4.csv", index_col=0)
    rows = list(t4.index)
    expected = [  # smoke-study's combined_methods: LoRS (two methods: tests/test_joint.py)
        "ML and MT training",
        "MT training",
        "MT training + ML LoRS-Merging",
        "ML training",
        "ML training + MT LoRS-Merging",
    ]
    assert rows[:3] == ["Pretrained", "Finetuned", "ML and MT training"]
    assert rows[-4:] == expected[1:]
    assert t4.loc[expected].map(math.isfinite).all().all()
    info = json.loads((study_run / "results/merged/mltrain-mtmerge/lors/merge.json").read_text())
    assert info["method"] == "lors"
    log = (study_run / "logs/joint/mlmt.log").read_text()
    assert "optimiser steps (sum of the fine-tunes')" in log
    assert (study_run / "benchmarks/joint/mlmt.tsv").exists()


def test_study_figures(study_run: Path):
    figures = study_run / "results/figures"
    for name, x in (
        ("fig3-num-languages", "languages"),
        ("fig4-data-scale", "hours"),
        ("fig5-retain-ratio", "retain"),
    ):
        png = figures / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000, name
        df = pd.read_csv(figures / f"{name}.csv")
        assert len(df) and df["score"].map(math.isfinite).all() and df[x].notna().all(), name
    fig4 = pd.read_csv(figures / "fig4-data-scale.csv")
    assert sorted(set(fig4["scale"])) == [0.5, 1.0]
    systems = {"Finetuned", "LoRS-Merging", "Multi-lingual training"}  # data_scale.methods
    assert set(fig4["system"]) == systems  # smoke-study has joint ml-asr and ml-st
    # Multi-lingual training at every scale: below 1 from joint_scaled on train@{scale}
    assert set(fig4.loc[fig4["system"] == "Multi-lingual training", "scale"]) == {0.5, 1.0}
    log = (study_run / "logs/joint@0.5/ml-asr.log").read_text()
    full = (study_run / "logs/joint/ml-asr.log").read_text()
    steps = re.compile(r"(\d+) optimiser steps \(sum of the fine-tunes'\)")
    assert 0 < int(steps.search(log)[1]) < int(steps.search(full)[1])  # less data, fewer steps
    fig5 = pd.read_csv(figures / "fig5-retain-ratio.csv")
    assert set(fig5["prune"]) == {"svp", "mp"} and sorted(set(fig5["retain"])) == [0.1, 1.0]


def test_study_dev_selection(study_run: Path):
    """(r, p) per task vector and λ per setting come from the dev split and reach the merges."""
    import json

    config = yaml.safe_load(Path(STUDY).read_text())
    grid = config["merge"]["select"]
    sel = json.loads((study_run / "results/selection/taskvectors/ca-asr.json").read_text())
    assert sel["dev_split"].endswith("subsets/ca/dev.tsv")
    assert len(sel["grid"]) == len(grid["rank_grid"]) * len(grid["keep_grid"])
    lam = json.loads((study_run / "results/selection/lambda/ml-asr.json").read_text())
    assert set(lam["lambda"]) == set(grid["methods"])
    assert all(t.endswith("dev.tsv") for t in lam["dev_splits"])
    info = json.loads((study_run / "results/merged/ml-asr/lors/merge.json").read_text())
    assert info["lambda"] == lam["lambda"]["lors"]
    assert info["taskvectors"][0]["params"]["rank_ratio"] == sel["rank_ratio"]
    t5 = pd.read_csv(study_run / "results/tables/table5.csv", index_col=0)
    assert t5.loc["LoRS-Merging: SVP ratio r (%)", "ca"] == pytest.approx(100 * sel["rank_ratio"])


def test_study_html_report(study_run: Path):
    res = snakemake(study_run, "--report", "report.html", "--configfile", STUDY)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    html = (study_run / "report.html").read_text(errors="replace")
    for name in ("fig3-num-languages.png", "fig5-retain-ratio.png", "table5.csv", "table1.csv"):
        assert name in html, name


def test_study_results_section(study_run: Path, tmp_path: Path):
    """The README's Results section from the smoke-study run: every table and figure, and
    verdict numbers equal to the table CSVs."""
    from speechmerge.report.results_md import BEGIN, END, results_section

    section = results_section(study_run, tmp_path / "docs/results", tmp_path, "Smoke run.")
    assert section.startswith(BEGIN) and section.rstrip().endswith(END)
    for n in ("1", "2", "3", "4", "11", "5", "6"):
        assert f"**Table {n}**" in section, n
    for stem in ("fig3-num-languages", "fig4-data-scale", "fig5-retain-ratio"):
        assert f"(docs/results/{stem}.png)" in section
        assert (tmp_path / f"docs/results/{stem}.png").read_bytes()[:4] == b"\x89PNG"
    t1 = pd.read_csv(study_run / "results/tables/table1.csv", index_col=0)
    lors, joint = t1.loc["LoRS-Merging", "Avg."], t1.loc["Multi-lingual training", "Avg."]
    row = next(line for line in section.splitlines() if line.startswith("| ML ASR (Table 1)"))
    assert f"| {lors:.2f} " in row and f"| {joint:.2f} " in row


@pytest.fixture(scope="module")
def lowres_run(smoke_run: Path, tmp_path_factory) -> tuple[Path, str]:
    """The low-resource smoke preset in a copy of the smoke run: same corpus and base, so only
    nl and pt's subsets, fine-tunes, merges and scores run."""
    import shutil

    workdir = tmp_path_factory.mktemp("lowres") / "run"
    shutil.copytree(smoke_run, workdir, symlinks=True)
    cfg = str(REPO / "configs/smoke-lowres.yaml")
    res = snakemake(workdir, "--cores", "2", "--configfile", cfg)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    return workdir, res.stdout + res.stderr


def test_lowres_tables_7_to_10(lowres_run):
    workdir, out = lowres_run
    assert "rule base:" not in out and "rule corpus_synthetic:" not in out
    config = yaml.safe_load((REPO / "configs/smoke-lowres.yaml").read_text())
    for n in (7, 8, 9, 10):
        df = pd.read_csv(workdir / f"results/tables/table{n}.csv", index_col=0)
        assert len(df) >= 2 + len(config["merge"]["methods"]), n
        assert df.map(lambda x: isinstance(x, float) and math.isfinite(x)).all().all(), n
        assert f"Table {n}" in (workdir / f"results/tables/table{n}.md").read_text()
    t7 = pd.read_csv(workdir / "results/tables/table7.csv", index_col=0)
    assert list(t7.columns) == ["nl", "pt", "Avg.", "Avg. CI low", "Avg. CI high"]
    t9 = pd.read_csv(workdir / "results/tables/table9.csv", index_col=0)
    assert "WER nl" in t9.columns and "BLEU Avg." in t9.columns


def test_smoke_per_task_test_sets(smoke_run: Path):
    """subset.test_hours {default: 0.7, asr: 1}: each task decodes its own test set, of its
    own duration, whichever system (fine-tune or merge) is scored."""
    summary = json.loads((smoke_run / "results/subsets/ca/summary.json").read_text())
    assert set(summary) == {"train", "dev", "test-asr", "test-st"}
    asr, st = summary["test-asr"], summary["test-st"]
    assert asr["requested_seconds"] == pytest.approx(st["requested_seconds"] / 0.7)
    assert asr["seconds"] > st["seconds"] and asr["utterances"] > st["utterances"]
    assert not (smoke_run / "results/subsets/ca/test.tsv").exists()
    scores = smoke_run / "results/scores"
    for system in ("pretrained", "finetuned", "merged/mlmt/lors", "merged/mt-ca/wa"):
        for task in ("asr", "st"):
            s = json.loads((scores / system / f"ca-{task}.json").read_text())
            assert s["test_set"] == f"results/subsets/ca/test-{task}.tsv", system
            assert s["utterances"] == summary[f"test-{task}"]["utterances"], system


def test_smoke_scores_and_hypotheses(smoke_run: Path):
    score = json.loads((smoke_run / "results/scores/finetuned/ca-st.json").read_text())
    assert score["metric"] == "bleu" and "nrefs:1" in score["signature"]
    hyp = smoke_run / "results/scores/finetuned/ca-st.hyp.tsv"
    assert hyp.read_text().splitlines()[0] == "id\treference\thypothesis"
    merged = smoke_run / "results/scores/merged/mlmt/lors"
    assert sorted(p.name for p in merged.glob("*.json")) == [
        "ca-asr.json",
        "ca-st.json",
        "de-asr.json",
        "de-st.json",
    ]
    info = json.loads((smoke_run / "results/merged/mlmt/lors/merge.json").read_text())
    assert info["method"] == "lors"


def test_smoke_release_dirs(smoke_run: Path):
    """Every scored merge has a release dir: the merged model's files as hard links and its
    card with the Scores section; the merged dirs are left as their jobs wrote them."""
    # settings × methods: ml-asr, ml-st, mt-ca and mt-de with five, mlmt with TA and LoRS
    assert len(list((smoke_run / "results/release").glob("*/*"))) == 4 * 5 + 2
    release = smoke_run / "results/release/mlmt/lors"
    merged = smoke_run / "results/merged/mlmt/lors"
    assert (release / "model.safetensors").samefile(merged / "model.safetensors")
    card = (release / "README.md").read_text()
    assert card.startswith((merged / "README.md").read_text().partition("## Use")[0])
    assert "## Scores" in card and "## Scores" not in (merged / "README.md").read_text()
    rows = [("ca", "asr", "ASR (transcribe)", "WER %"), ("de", "st", "ST (translate)", "BLEU")]
    for lang, task, label, metric in rows:
        score = json.loads(
            (smoke_run / f"results/scores/merged/mlmt/lors/{lang}-{task}.json").read_text()
        )
        assert f"| {lang} | {label} | {metric} | {score['score']:.2f} |" in card
    checked, problems = verify_tree(smoke_run / "results")
    assert checked > 25 and problems == []


def test_smoke_rerun_is_noop(smoke_run: Path):
    res = snakemake(smoke_run, "-n", "--configfile", str(REPO / "configs/smoke.yaml"))
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr


def test_reordering_config_keys_reruns_nothing(smoke_run: Path, tmp_path: Path):
    config = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    shuffled = tmp_path / "shuffled.yaml"
    shuffled.write_text(yaml.safe_dump(reversed_keys(config), sort_keys=False))
    res = snakemake(smoke_run, "-n", "--configfile", str(shuffled))
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr, res.stdout[-3000:]


def planned_jobs(stdout: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job in a `snakemake -n` listing."""
    jobs, rule = [], None
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            rule = line.split()[1].rstrip(":")
            jobs.append((rule, {}))
        elif line.startswith("wildcards:") and jobs:
            for kv in line[len("wildcards:") :].split(","):
                k, _, v = kv.strip().partition("=")
                jobs[-1][1][k] = v
    return jobs


def plan_adding_es(run: Path, config: Path) -> dict[str, list[dict]]:
    """Dry-run `run` with `es` added to its languages; planned jobs grouped by rule."""
    res = snakemake(run, "-n", "--configfile", str(config), "--config", "languages=[ca,de,es]")
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = planned_jobs(res.stdout)
    assert jobs, res.stdout[-3000:]
    by_rule: dict[str, list[dict]] = {}
    for rule, wc in jobs:
        by_rule.setdefault(rule, []).append(wc)
    return by_rule


def test_adding_a_language_reruns_only_what_depends_on_it(smoke_run: Path):
    """After a complete run, adding `es` plans es's subset/fine-tunes/task vectors plus the
    merges, scores and tables that include it; no other language's fine-tune or task vector."""
    by_rule = plan_adding_es(smoke_run, REPO / "configs/smoke.yaml")
    assert sorted(wc["task"] for wc in by_rule["finetune"]) == ["asr", "st"]
    assert {wc["lang"] for wc in by_rule["finetune"]} == {"es"}
    assert {wc["lang"] for wc in by_rule["taskvector"]} == {"es"}
    assert {wc["lang"] for wc in by_rule["subset"]} == {"es"}
    assert "base" not in by_rule and "corpus_synthetic" not in by_rule
    assert {wc["lang"] for wc in by_rule["score_finetuned"]} == {"es"}
    assert {wc["lang"] for wc in by_rule["score_pretrained"]} == {"es"}
    # merges: every setting containing es, and none that does not (mt-ca, mt-de)
    settings = {wc["setting"] for wc in by_rule["merge"]}
    assert settings == {"ml-asr", "ml-st", "mt-es", "mlmt"}
    assert {wc["setting"] for wc in by_rule["release"]} == settings
    assert "tables" in by_rule
    assert "joint" not in by_rule  # joint training is the study preset's


def test_adding_a_language_to_the_study(study_run: Path):
    """With the study on, adding `es` retrains only the joint models that train on es and
    re-merges the combined settings; no other language's fine-tune."""
    by_rule = plan_adding_es(study_run, REPO / "configs/smoke-study.yaml")
    assert {wc["lang"] for wc in by_rule["finetune"]} == {"es"}
    assert "base" not in by_rule and "corpus_synthetic" not in by_rule
    # joint training: the models that train on es, not mt-ca / mt-de
    assert {wc["joint"] for wc in by_rule["joint"]} == {"ml-asr", "ml-st", "mt-es", "mlmt"}
    assert {wc["joint"] for wc in by_rule["joint_taskvector"]} == {"ml-asr", "ml-st", "mt-es"}
    assert {wc["combined"] for wc in by_rule["merge_combined"]} == {
        "mttrain-mlmerge",
        "mltrain-mtmerge",
    }


def test_unknown_language_fails_at_start(tmp_path: Path):
    res = snakemake(
        tmp_path,
        "-n",
        "--configfile",
        str(REPO / "configs/smoke.yaml"),
        "--config",
        "languages=[xx]",
    )
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "languages" in out and "xx" in out
    assert not (tmp_path / "results").exists()


def test_missing_key_fails_at_start(tmp_path: Path):
    config = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    del config["finetune"]["lr"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    res = snakemake(tmp_path, "-n", "--configfile", str(bad))
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "lr" in out and "finetune" in out


def test_killed_job_leaves_no_complete_output(tmp_path: Path):
    """Kill the whole workflow (SIGKILL, no clean-up possible) while the base model is being
    trained: the output folder must not exist, so Snakemake reruns the job."""
    config = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    config["base"]["synthetic"]["train"]["steps"] = 100_000  # never finishes on its own
    # the base's corpora only, and small: training starts a few seconds in
    config["base"]["synthetic"]["languages"] = config["languages"]
    config["corpus"]["synthetic"]["utterances"] = {"base": 16, "train": 8, "dev": 4, "test": 4}
    endless = tmp_path / "endless.yaml"
    endless.write_text(yaml.safe_dump(config))
    cmd = [
        SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
        "--configfile",
        str(endless),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    log = tmp_path / "logs/base/base.log"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if log.exists() and "train:" in log.read_text(errors="replace"):
                break
            if proc.poll() is not None:
                pytest.fail(f"snakemake exited early with code {proc.returncode}")
            time.sleep(1)
        else:
            pytest.fail("base training never started")
        time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "results/models/base").exists()
    # and Snakemake plans the base again
    res = snakemake(tmp_path, "-n", "--configfile", str(endless))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "rule base:" in res.stdout or "localrule base:" in res.stdout
