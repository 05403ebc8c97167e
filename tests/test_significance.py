"""significance.csv and the tables' CI columns from score files with hypotheses."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from speechmerge.hypotheses import files_ci, files_compare, read_hypotheses, write_hypotheses
from speechmerge.metrics import score
from speechmerge.plan.settings import merge_settings
from speechmerge.report.significance import COLUMNS, write_significance
from speechmerge.report.tables import build_tables, to_markdown

REPO = Path(__file__).resolve().parent.parent
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
N = 40  # utterances per test set


def references(lang: str, task: str) -> list[str]:
    rng = random.Random(f"{lang}-{task}")
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(N)]


def put(folder: Path, lang: str, task: str, keep: float) -> None:
    """A score file and its hypotheses: each reference word kept with probability `keep`."""
    refs = references(lang, task)
    rng = random.Random(f"{folder}-{lang}-{task}")
    hyps = [" ".join(w if rng.random() < keep else "zero" for w in r.split()) for r in refs]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{lang}-{task}.json"
    out.write_text(json.dumps(score(task, refs, hyps, key=f"{lang}-{task}")))
    write_hypotheses(out, [f"{lang}{i}" for i in range(N)], refs, hyps)


#: How good each system is: finetuned best, LoRS ≈ TA, WA clearly worse, joint in between.
QUALITY = {"finetuned": 0.95, "lors": 0.7, "ta": 0.7, "wa": 0.3, "joint": 0.8, "pretrained": 0.1}


@pytest.fixture
def run(tmp_path: Path):
    config = yaml.safe_load((REPO / "configs/smoke-study.yaml").read_text())
    config["merge"]["settings"] = ["ml-asr", "ml-st", "mt", "mlmt"]
    config["merge"]["methods"] = ["wa", "ta", "lors"]
    config["joint"] = {"settings": ["ml-asr", "mt"]}
    settings = merge_settings(config)
    root = tmp_path / "scores"
    for lang in config["languages"]:
        for task in ("asr", "st"):
            put(root / "pretrained", lang, task, QUALITY["pretrained"])
            put(root / "finetuned", lang, task, QUALITY["finetuned"])
    for s, pairs in settings.items():
        for lang, task in pairs:
            for m in config["merge"]["methods"]:
                q = QUALITY[m]
                put(root / "merged" / s / m, lang, task, q)
    for name in ("ml-asr", "mt-ca", "mt-de"):
        for lang, task in settings[name]:
            put(root / "joint" / name, lang, task, QUALITY["joint"])
    return config, settings, root


def test_significance_table(run, tmp_path):
    config, settings, root = run
    df = write_significance(config, settings, root, tmp_path / "significance.csv")
    back = pd.read_csv(tmp_path / "significance.csv")
    assert list(back.columns) == COLUMNS
    assert "| setting" in (tmp_path / "significance.md").read_text()
    assert set(df["setting"]) == {"ml-asr", "ml-st", "mt", "mlmt"}
    assert set(zip(df["setting"], df["metric"])) == {
        ("ml-asr", "WER"),
        ("ml-st", "BLEU"),
        ("mt", "WER"),
        ("mt", "BLEU"),
        ("mlmt", "WER"),
        ("mlmt", "BLEU"),
    }
    assert back[["delta", "ci_low", "ci_high", "p_value"]].map(math.isfinite).all().all()
    assert ((back.ci_low <= back.delta) & (back.delta <= back.ci_high)).all()
    rows = df.set_index(["setting", "metric", "system_a", "system_b"])
    # TA vs WA: TA clearly better on both metrics (lower WER, higher BLEU)
    for key in (("ml-asr", "WER"), ("ml-st", "BLEU"), ("mt", "BLEU")):
        r = rows.loc[(*key, "Task Arithmetic", "Weight Averaging")]
        assert r["verdict"] == "better" and r["p_value"] < 0.05, key
        assert (r["delta"] < 0) == (key[1] == "WER")
    # each merge vs the fine-tuned models: worse
    assert rows.loc[("ml-asr", "WER", "Weight Averaging", "Finetuned"), "verdict"] == "worse"
    # joint training only where configured (ml-asr, mt); the best merge of the tables
    joint = df[df.system_b == "Joint training"]
    assert set(zip(joint.setting, joint.metric)) == {
        ("ml-asr", "WER"),
        ("mt", "WER"),
        ("mt", "BLEU"),
    }
    assert set(joint.system_a) <= {"Task Arithmetic", "LoRS-Merging"}
    # the Avg. over the setting's test sets: delta = difference of the tables' averages
    t1 = build_tables(config, settings, root)["table1"]
    r = rows.loc[("ml-asr", "WER", "LoRS-Merging", "Task Arithmetic")]
    assert r["delta"] == pytest.approx(
        t1.loc["LoRS-Merging", "Avg."] - t1.loc["Task Arithmetic", "Avg."]
    )


def test_files_compare_checks_pairing(run):
    _, _, root = run
    a = [root / "finetuned" / "ca-asr.json"]
    with pytest.raises(ValueError, match="cannot compare wer with bleu"):
        files_compare(a, [root / "finetuned" / "ca-st.json"])
    ids, refs, hyps = read_hypotheses(a[0])
    other = root / "x" / "ca-asr.json"
    other.parent.mkdir()
    other.write_text(a[0].read_text())
    write_hypotheses(other, [f"z{i}" for i in ids], refs, hyps)
    with pytest.raises(ValueError, match="different utterances"):
        files_compare(a, [other])
    with pytest.raises(FileNotFoundError, match="hyp.tsv"):
        files_ci([root / "missing" / "ca-asr.json"])


def test_score_json_ci_is_the_files_ci(run):
    _, _, root = run
    path = root / "merged" / "ml-st" / "ta" / "de-st.json"
    data = json.loads(path.read_text())
    ci = files_ci([path])
    assert data["ci_low"] <= data["score"] <= data["ci_high"]
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((data["ci_low"], data["ci_high"]))


def test_tables_have_ci_columns(run):
    config, settings, root = run
    tables = build_tables(config, settings, root)
    t1 = tables["table1"]
    langs = config["languages"]
    assert list(t1.columns) == [*langs, "Avg.", "Avg. CI low", "Avg. CI high"]
    assert ((t1["Avg. CI low"] <= t1["Avg."]) & (t1["Avg."] <= t1["Avg. CI high"] + 1e-9)).all()
    assert (t1["Avg. CI high"] > t1["Avg. CI low"]).loc["Weight Averaging"]
    assert list(tables["table3"].columns) == [
        "Avg. WER",
        "Avg. BLEU",
        "Avg. WER CI low",
        "Avg. WER CI high",
        "Avg. BLEU CI low",
        "Avg. BLEU CI high",
    ]
    assert "WER Avg. CI low" in tables["table4"].columns
    md = to_markdown(t1, "T")
    lo, hi = t1.loc["Finetuned", "Avg. CI low"], t1.loc["Finetuned", "Avg. CI high"]
    assert f"{t1.loc['Finetuned', 'Avg.']:.2f} [{lo:.2f}, {hi:.2f}]" in md
    assert "CI low" not in md


def test_figures_carry_cis(run, tmp_path):
    from speechmerge.hypotheses import file_stats
    from speechmerge.report.figures import (
        data_scale_data,
        num_languages_data,
        retain_data,
        write_figure,
    )

    config, _, root = run
    langs = config["languages"]
    merged = {t: str(root / "merged" / f"ml-{t}" / "ta") for t in ("asr", "st")}
    fig3 = num_languages_data(
        {"comb-asr-x": {"pairs": [(lang, "asr") for lang in langs]}},
        root / "finetuned",
        {"comb-asr-x/ta": merged["asr"]},
        ["ta"],
    )
    fig4 = data_scale_data(
        langs,
        ["asr", "st"],
        [1.0],
        dict.fromkeys(langs, 5),
        {"1": str(root / "finetuned")},
        {f"1/{t}/ta": merged[t] for t in ("asr", "st")},
        ["ta"],
    )
    for df in (fig3, fig4):
        assert ((df.ci_low <= df.score + 1e-9) & (df.score <= df.ci_high + 1e-9)).all()
        assert (df.ci_high > df.ci_low).all()
    sweeps = []
    for lang in langs:
        path = root / "finetuned" / f"{lang}-asr.json"
        stats = file_stats(path)[2].tolist()
        score_ = json.loads(path.read_text())["score"]
        points = [{"retain": r, "score": score_, "stats": stats} for r in (0.5, 1.0)]
        sweeps.append(
            {"lang": lang, "task": "asr", "prune": "svp", "scale": 1, "hours": 5, "points": points}
        )
    (tmp_path / "sweep.json").write_text(json.dumps({"sweeps": sweeps}))
    fig5 = retain_data([tmp_path / "sweep.json"])
    assert ((fig5.ci_low <= fig5.score + 1e-9) & (fig5.score <= fig5.ci_high + 1e-9)).all()
    png = tmp_path / "fig4.png"
    write_figure("fig4", fig4, png, "test")
    assert {"ci_low", "ci_high"} <= set(pd.read_csv(png.with_suffix(".csv")).columns)
