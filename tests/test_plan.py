"""speechmerge.plan.files.Plan: one run's file names, job inputs and rule all's targets."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from speechmerge.config import load_config
from speechmerge.plan import RESULTS, SCORES, Plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study_config() -> dict:
    return load_config(ROOT / "configs" / "smoke-study.yaml")


def test_paths_are_the_rules_patterns_too(study_config):
    """Called with wildcards, a path method gives the pattern a rule writes; with values, the
    file another rule reads: one name for both."""
    p = Plan(study_config)
    assert (
        p.taskvector("{lang}", "{task}") == f"{RESULTS}/taskvectors/{{lang}}-{{task}}.safetensors"
    )
    assert p.taskvector("ca", "asr", "0.5") == f"{RESULTS}/taskvectors@0.5/ca-asr.safetensors"
    assert p.finetuned("ca", "asr", "1") == p.finetuned("ca", "asr")
    assert p.score_file("pretrained", "de", "st") == f"{SCORES}/pretrained/de-st.json"
    assert p.finetuned_scores("0.5") == f"{SCORES}/finetuned@0.5"


def test_targets_of_the_study_preset(study_config):
    p = Plan(study_config)
    targets = p.final_targets()
    for name in ("table1", "table2", "table3", "table11", "table4", "significance", "table5"):
        assert p.table(name, "csv") in targets and p.table(name, "md") in targets
    for name in ("fig3-num-languages", "fig4-data-scale", "fig5-retain-ratio"):
        assert p.figure(name, "png") in targets
    releases = [p.release(s, m) for s in p.settings for m in p.methods]
    releases += [p.release(s, m) for s in p.combined for m in p.combined_methods]
    assert p.combined and [t for t in targets if t.startswith(f"{RESULTS}/release/")] == releases
    assert p.release("ml-asr", "lors") == f"{RESULTS}/release/ml-asr/lors"
    assert len(targets) == len(set(targets))


def test_selection_inputs_only_where_they_can_change_the_merge(study_config):
    p = Plan(study_config)
    pairs = p.settings["ml-asr"]
    assert p.tv_selections(pairs, "ta") == []  # TA reads neither r nor p
    assert p.tv_selections(pairs, "lors") == [p.tv_selection(lang, t) for lang, t in pairs]
    assert p.lambda_selections("ml-asr", "wa") == []  # WA has no λ
    assert p.lambda_selections("ml-asr", "lors") == [p.lambda_selection("ml-asr")]
    config = copy.deepcopy(study_config)
    del config["merge"]["select"]
    plain = Plan(config)
    assert plain.tv_selections(pairs, "lors") == [] and plain.hparam_selections() == ({}, {})


def test_a_study_merge_equal_to_a_main_merge_reuses_its_scores(study_config):
    p = Plan(study_config)
    full = "comb-asr-" + "+".join(p.langs)
    assert p.study_scores(full, "lors") == p.scores("merged/ml-asr/lors")
    assert p.study_scores("data0.5-asr", "lors") == p.scores("study/data0.5-asr/lors")


def test_wildcard_constraints_never_empty(study_config):
    config = copy.deepcopy(study_config)
    config["study"] = None
    config["joint"] = None
    config["merge"]["settings"] = ["ml-asr"]
    constraints = Plan(config).wildcard_constraints()
    assert constraints["joint"] == constraints["ssetting"] == constraints["scale"] == "NONE"
    assert constraints["setting"] == "ml\\-asr"
