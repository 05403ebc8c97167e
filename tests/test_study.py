"""Tests for the paper's studies: their plan (speechmerge.plan.settings), speechmerge.select,
Tables 5-6 (speechmerge.report.hparams) and the figures (speechmerge.report.figures)."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pandas as pd
import pytest

from speechmerge.config import check_study, load_config
from speechmerge.plan import settings as study
from speechmerge.plan.params import lambda_methods
from speechmerge.plan.settings import merge_settings
from speechmerge.report import hparams
from speechmerge.select import (
    edge_warnings,
    grid_edge,
    grid_search,
    objective,
    select_lambda,
    select_taskvector,
    selected_lambda,
    selected_params,
)

ROOT = Path(__file__).resolve().parent.parent
HIGH = ["ca", "de", "es", "fr", "it"]


@pytest.fixture
def smoke() -> dict:
    return copy.deepcopy(load_config(ROOT / "configs" / "smoke-study.yaml"))


@pytest.mark.parametrize(
    "path",
    [
        "configs/synthetic-lowres.yaml",
        "configs/smoke-lowres.yaml",
        "config.yaml",
        "configs/smoke.yaml",
        "configs/smoke-study.yaml",
        "configs/synthetic-study.yaml",
        "configs/whisper-base-study.yaml",
    ],
)
def test_presets_validate(path):
    config = load_config(ROOT / path)
    check_study(config)
    expected = "low" if "lowres" in path else "high"
    assert study.language_set(config) == expected


# --- Figure 3: language combinations ---------------------------------------------------------


def test_combinations_all_sizes():
    combs = study.language_combinations(HIGH, [2, 3, 4, 5])
    assert {k: len(v) for k, v in combs.items()} == {2: 10, 3: 10, 4: 5, 5: 1}
    assert combs[2][0] == ("ca", "de") and combs[5] == [tuple(HIGH)]
    assert combs[3] == list(itertools.combinations(HIGH, 3))


def test_combinations_skip_impossible_sizes():
    assert study.language_combinations(["ca", "de"], [1, 2, 3]) == {2: [("ca", "de")]}


def test_combinations_cap_is_seeded_sample():
    a = study.language_combinations(HIGH, [2, 3], max_per_size=4, seed=3)
    b = study.language_combinations(HIGH, [2, 3], max_per_size=4, seed=3)
    c = study.language_combinations(HIGH, [2, 3], max_per_size=4, seed=4)
    assert a == b and {k: len(v) for k, v in a.items()} == {2: 4, 3: 4}
    assert a != c
    full = set(itertools.combinations(HIGH, 2))
    assert set(a[2]) <= full and len(set(a[2])) == 4
    # kept in enumeration order
    assert a[2] == sorted(a[2], key=list(itertools.combinations(HIGH, 2)).index)
    # a cap above the count keeps all
    assert len(study.language_combinations(HIGH, [4], max_per_size=9)[4]) == 5


def test_study_settings_and_reuse(smoke):
    smoke["languages"] = ["ca", "de", "es"]
    smoke["study"]["num_languages"] = {"sizes": [2, 3], "methods": ["ta", "lors"]}
    st = study.study_settings(smoke)
    assert "comb-asr-ca+de" in st and "comb-st-de+es" in st and "comb-asr-ca+de+es" in st
    assert st["comb-asr-ca+de"] == {
        "pairs": [("ca", "asr"), ("de", "asr")],
        "scale": 1.0,
        "kind": "ml-asr",
    }
    assert st["data0.5-st"]["scale"] == 0.5 and st["data1-st"]["kind"] == "ml-st"
    settings = merge_settings(smoke)
    # all languages at full data is the main ml-asr merge; subsets and other scales are not
    assert study.main_equivalent(smoke, settings, "comb-asr-ca+de+es", "lors") == "ml-asr"
    assert study.main_equivalent(smoke, settings, "data1-asr", "ta") == "ml-asr"
    assert study.main_equivalent(smoke, settings, "comb-asr-ca+de", "ta") is None
    assert study.main_equivalent(smoke, settings, "data0.5-asr", "ta") is None
    assert study.reduced_scales(smoke) == ["0.5"]


def test_check_study_names_key(smoke):
    smoke["study"]["num_languages"]["methods"] = ["ties"]
    with pytest.raises(ValueError, match="study.num_languages.methods"):
        check_study(smoke)


# --- Tables 7-10 ---------------------------------------------------------------------------


def test_table_names_low_resource(smoke):
    assert study.table_name_map(smoke)["table1"] == "table1"
    smoke["languages"] = ["nl", "pt"]
    assert study.table_name_map(smoke) == {
        "table1": "table7",
        "table2": "table8",
        "table11": "table9",
        "table4": "table10",
    }
    smoke["language_set"] = "high"
    assert study.table_name_map(smoke)["table4"] == "table4"


def _write_score(folder: Path, lang: str, task: str, value: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{lang}-{task}.json").write_text(json.dumps({"score": value}))


def test_write_tables_low_resource(tmp_path, smoke):
    from speechmerge.report.tables import write_tables

    smoke["languages"] = ["nl", "pt"]
    # Merges only: the joint-training rows have their own tests (tests/test_joint.py).
    smoke.pop("joint", None)
    smoke["merge"]["settings"] = [s for s in smoke["merge"]["settings"] if "train" not in s]
    settings = merge_settings(smoke)
    root = tmp_path / "scores"
    for i, (lang, task) in enumerate(itertools.product(["nl", "pt"], ["asr", "st"])):
        _write_score(root / "pretrained", lang, task, 30 + i)
        _write_score(root / "finetuned", lang, task, 20 + i)
        for s, pairs in settings.items():
            if (lang, task) in pairs:
                for m in smoke["merge"]["methods"]:
                    _write_score(root / "merged" / s / m, lang, task, 25 + i)
    out = tmp_path / "tables"
    paths = [str(out / f"table{n}.csv") for n in (7, 8, 9, 10)]
    write_tables(smoke, settings, root, paths)
    t9 = pd.read_csv(out / "table9.csv", index_col=0)
    assert "WER nl" in t9.columns and "BLEU Avg." in t9.columns
    assert "Table 7" in (out / "table7.md").read_text()
    with pytest.raises(ValueError, match="table1"):
        write_tables(smoke, settings, root, [str(out / "table1.csv")])


# --- dev selection -------------------------------------------------------------------------


def test_objective_and_grid_search():
    assert objective([("asr", 20.0), ("st", 30.0)]) == 5.0
    best, results = grid_search([1, 2, 3], lambda x: -((x - 2) ** 2))
    assert best == 2 and [s for _, s in results] == [-1, 0, -1]
    # ties go to the first candidate
    assert grid_search(["a", "b"], lambda x: 1.0)[0] == "a"
    with pytest.raises(ValueError):
        grid_search([], lambda x: 0)


def test_select_taskvector_on_toy_score():
    cfg = {"rank_grid": [0.01, 0.02, 0.03, 0.05], "keep_grid": [0.1, 0.2, 0.4, 0.6]}
    calls = []

    def toy(r, p):  # ASR objective = -WER; WER smallest at r=0.03, p=0.2
        calls.append((r, p))
        return -(10 + 100 * abs(r - 0.03) + 10 * abs(p - 0.2))

    sel = select_taskvector("base", "tv", "ca", "asr", "dev.tsv", cfg, {}, score_fn=toy)
    assert (sel["rank_ratio"], sel["keep_ratio"]) == (0.03, 0.2)
    assert len(calls) == 16 and len(sel["grid"]) == 16
    assert sel["dev_split"] == "dev.tsv"


def test_select_lambda_per_method_on_toy_score():
    cfg = {"lambda_grid": [0.1, 0.15, 0.3, 0.6]}
    best = {"ta": 0.15, "lors": 0.3}
    sel = select_lambda(
        "base",
        ["a", "b"],
        [("ca", "asr"), ("de", "asr")],
        [{}, {}],
        ["ca/dev.tsv", "de/dev.tsv"],
        ["ta", "lors"],
        cfg,
        {},
        setting="ml-asr",
        score_fn=lambda m, lam: -abs(lam - best[m]),
    )
    assert sel["lambda"] == best and sel["setting"] == "ml-asr"
    assert all("test" not in d for d in sel["dev_splits"])
    assert sel["edges"] == [] and edge_warnings(sel) == []


def test_grid_edge():
    assert grid_edge(0.2, [0.2, 0.4, 0.6]) == "lowest"
    assert grid_edge(0.6, [0.4, 0.6, 0.2]) == "highest"  # config order need not be sorted
    assert grid_edge(0.4, [0.2, 0.4, 0.6]) is None
    assert grid_edge(0.4, [0.4]) is None and grid_edge(0.4, [0.4, 0.4]) is None  # no edge


def test_selection_at_grid_edge_is_recorded_and_warned():
    """The study run of 7f373bc chose lambda 0.2, the lowest of [0.2, 0.4, 0.6], in ML+MT with
    the objective still rising towards it: such a choice is flagged, not silent."""
    cfg = {"lambda_grid": [0.2, 0.4, 0.6]}
    sel = select_lambda(
        "base",
        ["a"],
        [("ca", "asr")],
        [{}],
        ["ca/dev.tsv"],
        ["ta", "lors"],
        cfg,
        {},
        score_fn=lambda m, lam: -lam if m == "ta" else -abs(lam - 0.4),
    )
    assert sel["lambda"] == {"ta": 0.2, "lors": 0.4}
    assert sel["edges"] == [["lambda[ta]", 0.2, [0.2, 0.4, 0.6], "lowest"]]
    (line,) = edge_warnings(sel)
    assert "lambda[ta] = 0.2" in line and "lowest" in line
    tv = {"rank_grid": [0.02, 0.05], "keep_grid": [0.2, 0.4, 0.6]}
    sel = select_taskvector(
        "base", "tv", "ca", "asr", "dev.tsv", tv, {}, score_fn=lambda r, p: r - abs(p - 0.4)
    )
    assert sel["edges"] == [["rank_ratio", 0.05, [0.02, 0.05], "highest"]]


def test_selected_params_and_lambda(tmp_path):
    tv = tmp_path / "ca-asr.json"
    tv.write_text(json.dumps({"rank_ratio": 0.02, "keep_ratio": 0.6}))
    lam = tmp_path / "ml-asr.json"
    lam.write_text(json.dumps({"lambda": {"lors": 0.15}}))
    params = selected_params([{"rank_ratio": 0.05, "keep_ratio": 0.4, "ties": {}}], [tv])
    assert params == [{"rank_ratio": 0.02, "keep_ratio": 0.6, "ties": {}}]
    assert selected_lambda(0.4, "lors", lam) == 0.15
    assert selected_lambda(0.4, "ta", lam) == 0.4  # not selected: config value
    assert selected_lambda(0.4, "lors", None) == 0.4
    with pytest.raises(ValueError, match="selection files"):
        selected_params([{}, {}], [tv])


def test_lambda_methods(smoke):
    assert lambda_methods(smoke) == ["lors"]  # merge.select.methods
    smoke["merge"]["select"]["methods"] = ["wa", "ta", "lors"]
    assert lambda_methods(smoke) == ["ta", "lors"]  # WA has no λ
    del smoke["merge"]["select"]["methods"]
    smoke["merge"]["methods"] = ["wa", "ta", "mp", "svp", "lors"]
    assert lambda_methods(smoke) == ["ta", "mp", "svp", "lors"]  # every method but WA


# --- Tables 5 and 6 -----------------------------------------------------------------------


def test_hparam_tables_from_config_and_selection(tmp_path, smoke):
    settings = merge_settings(smoke)
    t = hparams.hparam_tables(smoke, settings)
    t5 = t["table5"]
    assert list(t5.columns) == ["ca", "de"]
    assert t5.loc["LoRS-Merging: SVP ratio r (%)", "ca"] == pytest.approx(10.0)
    assert t5.loc["LoRS-Merging: scaling factor λ", "de"] == pytest.approx(0.3)
    assert t["table6"].loc["Finetuned: learning rate", "de"] == pytest.approx(5e-5)
    sel = tmp_path / "de-st.json"
    sel.write_text(json.dumps({"rank_ratio": 0.01, "keep_ratio": 0.1}))
    lam = tmp_path / "ml-st.json"
    lam.write_text(json.dumps({"lambda": {"ta": 0.15}}))
    t6 = hparams.hparam_tables(smoke, settings, {"de-st": str(sel)}, {"ml-st": str(lam)})["table6"]
    assert t6.loc["LoRS-Merging: MP ratio p (%)", "de"] == pytest.approx(10.0)
    assert t6.loc["Task Arithmetic: scaling factor λ", "ca"] == pytest.approx(0.15)
    assert t6.notna().all().all()
    # joint training (issue 5a's `joint` section) adds its learning rate
    smoke["joint"] = {"settings": ["ml-asr"], "lr": {"default": 1e-4, "ml-asr": 2e-4}}
    t5 = hparams.hparam_tables(smoke, settings)["table5"]
    assert t5.loc["Multi-lingual training: learning rate", "de"] == pytest.approx(2e-4)
    del smoke["joint"]
    out = tmp_path / "tables"
    hparams.write_hparam_tables(smoke, settings, [str(out / "table5.csv"), str(out / "table6.csv")])
    assert "Table 6" in (out / "table6.md").read_text()


# --- Figures ---------------------------------------------------------------------------------


def test_figure3_data_and_plot(tmp_path):
    from speechmerge.report.figures import num_languages_data, write_figure

    langs = ["ca", "de", "es"]
    ft = tmp_path / "finetuned"
    settings, dirs = {}, {}
    for i, lang in enumerate(langs):
        _write_score(ft, lang, "asr", 10.0 + i)
        _write_score(ft, lang, "st", 20.0 + i)
    for task in ("asr", "st"):
        for k in (2, 3):
            for c in itertools.combinations(langs, k):
                name = study.comb_setting(task, c)
                settings[name] = {"pairs": [(lang, task) for lang in c]}
                for m in ("ta", "lors"):
                    folder = tmp_path / name / m
                    for lang in c:
                        _write_score(folder, lang, task, 15.0 + k + (m == "lors"))
                    dirs[f"{name}/{m}"] = str(folder)
    df = num_languages_data(settings, ft, dirs, ["ta", "lors"])
    ft2 = df[(df.task == "asr") & (df.languages == 2) & (df.system == "Finetuned")]
    assert ft2["score"].item() == pytest.approx(11.0)  # mean over 3 pairs of pair means
    assert ft2["combinations"].item() == 3
    lors3 = df[(df.task == "st") & (df.languages == 3) & (df.system == "LoRS-Merging")]
    assert lors3["score"].item() == pytest.approx(19.0)
    png = tmp_path / "fig" / "fig3-num-languages.png"
    write_figure("fig3", df, png, "test")
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(png.with_suffix(".csv"))) == len(df)


def test_figure4_data_and_plot(tmp_path):
    from speechmerge.report.figures import data_scale_data, write_figure

    langs, tasks, scales = ["ca", "de"], ["asr", "st"], [0.5, 1.0]
    fts, merged, joint = {}, {}, {}
    for s in ("0.5", "1"):
        fts[s] = str(tmp_path / f"ft{s}")
        joint[f"{s}/asr"] = str(tmp_path / f"joint{s}")
        for lang in langs:
            for task in tasks:
                _write_score(Path(fts[s]), lang, task, 10.0 * float(s))
                _write_score(tmp_path / f"joint{s}", lang, task, 12.0)
                for m in ("ta", "lors"):
                    folder = tmp_path / f"m{s}{task}{m}"
                    _write_score(folder, lang, task, 11.0)
                    merged[f"{s}/{task}/{m}"] = str(folder)
    hours = {"ca": 5, "de": 5}
    df = data_scale_data(langs, tasks, scales, hours, fts, merged, ["ta", "lors"], joint)
    assert sorted(set(df["hours"])) == [2.5, 5.0]
    assert "Multi-lingual training" in set(df[df.task == "asr"]["system"])
    assert "Multi-lingual training" not in set(df[df.task == "st"]["system"])
    png = tmp_path / "fig4.png"
    write_figure("fig4", df, png, "test")
    assert png.stat().st_size > 5000


def test_figure5_data_and_plot(tmp_path):
    from speechmerge.report.figures import retain_data, write_figure

    paths = []
    for scale in (0.5, 1.0):
        for lang, off in (("ca", 0.0), ("de", 2.0)):
            sweeps = [
                {
                    "lang": lang,
                    "task": "asr",
                    "prune": prune,
                    "scale": scale,
                    "hours": 5 * scale,
                    "points": [{"retain": r, "score": 10 + off + r} for r in (0.1, 0.5, 1.0)],
                }
                for prune in ("svp", "mp")
            ]
            p = tmp_path / f"{scale}-{lang}.json"
            p.write_text(json.dumps({"sweeps": sweeps}))
            paths.append(p)
    df = retain_data(paths)
    assert len(df) == 2 * 2 * 3
    row = df[(df.prune == "mp") & (df.scale == 1.0) & (df.retain == 0.5)]
    assert row["score"].item() == pytest.approx(11.5) and row["languages"].item() == 2
    png = tmp_path / "fig5.png"
    write_figure("fig5", df, png, "test")
    assert png.stat().st_size > 5000


def test_write_figure_rejects_empty(tmp_path):
    from speechmerge.report.figures import write_figure

    with pytest.raises(ValueError, match="no or empty"):
        write_figure("fig3", pd.DataFrame(columns=["task", "score"]), tmp_path / "x.png", "t")
