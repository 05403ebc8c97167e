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
    releases = [p.release(s, m) for s in p.settings for m in p.methods_of(s)]
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


def with_subset(config: dict, test_hours, tasks=("asr", "st")) -> dict:
    config = copy.deepcopy(config)
    config["subset"]["test_hours"] = test_hours
    config["tasks"] = list(tasks)
    return config


@pytest.mark.parametrize(
    "test_hours, splits",
    [
        (1, {"asr": "test", "st": "test"}),  # one set, both tasks
        ({"default": 1}, {"asr": "test", "st": "test"}),
        ({"default": 1, "asr": 1}, {"asr": "test", "st": "test"}),  # equal: still one
        ({"default": 1, "asr": 1.5}, {"asr": "test-asr", "st": "test-st"}),
        ({"default": 2, "st": 1}, {"asr": "test-asr", "st": "test-st"}),
    ],
)
def test_test_sets_per_task_only_when_their_hours_differ(study_config, test_hours, splits):
    """A run whose tasks share test hours keeps one ``test.tsv`` per language (its files and
    params are those of runs made before per-task hours existed, so nothing reruns)."""
    p = Plan(with_subset(study_config, test_hours))
    assert p.test_splits == splits
    assert p.test_tsv("ca", "st") == f"{RESULTS}/subsets/ca/{splits['st']}.tsv"
    assert p.subset_splits == ["train", "dev", *dict.fromkeys(splits.values())]
    hours = p.subset_hours({"train": 5, "dev": 1})
    assert list(hours) == p.subset_splits
    for task, split in splits.items():
        expected = test_hours if not isinstance(test_hours, dict) else test_hours.get(task)
        assert hours[split] == (expected or test_hours["default"])


def test_one_task_run_has_one_test_set(study_config):
    p = Plan(with_subset(study_config, {"default": 1, "asr": 2}, tasks=["st"]))
    assert p.test_splits == {"st": "test"} and p.subset_splits == ["train", "dev", "test"]


def test_setting_methods(study_config):
    """``merge.setting_methods`` by setting kind (mt-{lang} as mt), in merge.methods' order;
    the targets hold only those merges' scores and release dirs."""
    config = copy.deepcopy(study_config)
    config["merge"]["methods"] = ["wa", "ta", "mp", "svp", "lors"]
    config["merge"]["setting_methods"] = {"mlmt": ["lors", "ta"], "mt": ["wa"]}
    p = Plan(config)
    assert p.methods_of("mlmt") == ["ta", "lors"]
    assert p.methods_of("mt-ca") == ["wa"]
    assert p.methods_of("ml-asr") == config["merge"]["methods"]
    scored = {s for s in p.score_files() if s.startswith(f"{SCORES}/merged/mlmt/")}
    assert scored == {f"{SCORES}/merged/mlmt/ta", f"{SCORES}/merged/mlmt/lors"}
    released = [d for d in p.release_dirs() if "/release/mt-de/" in d]
    assert released == [p.release("mt-de", "wa")]
