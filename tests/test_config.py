"""Tests for speechmerge.config (schema validation) and the per-job helpers of speechmerge.plan."""

from __future__ import annotations

import ast
import copy
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from speechmerge.config import SCHEMA, load_config, validate_config
from speechmerge.plan.params import (
    TRAINING_RUNTIME,
    finetune_hparams,
    merge_lambda,
    merge_params,
    per_combination,
    train_hours,
    training_runtime,
)
from speechmerge.plan.settings import merge_settings, setting_kind

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.yaml"
IGNORE = shutil.ignore_patterns("__pycache__")


@pytest.fixture(scope="module")
def smoke_config() -> dict:
    return load_config(ROOT / "configs" / "smoke.yaml")


@pytest.fixture
def smoke(smoke_config) -> dict:
    return copy.deepcopy(smoke_config)


@pytest.mark.parametrize(
    "path",
    [
        "config.yaml",
        "configs/smoke.yaml",
        "configs/smoke-study.yaml",
        "configs/whisper-base-study.yaml",
    ],
)
def test_shipped_configs_validate(path):
    config = load_config(ROOT / path)
    assert config["languages"]
    validate_config(config)


def test_whisper_base_study_is_the_default_plus_the_study():
    """The study preset trains and decodes as the default (its fine-tunes are the default's:
    the corpus draws each split from its own seed, so the test split's size does not change the
    others), and merges at least the default's settings with its methods. Its test sets are
    the ones its committed results were measured on (docs/whisper-base-study.md): one 360-s
    set per language, from a 280-utterance test split, as the default had until it gave ASR a
    larger set of its own."""
    default = load_config(ROOT / "config.yaml")
    study = load_config(ROOT / "configs" / "whisper-base-study.yaml")
    for key in ("seed", "source", "languages", "tasks", "base", "finetune", "decode"):
        assert study[key] == default[key], key

    def without_test(config):
        corpus = copy.deepcopy(config["corpus"])
        del corpus["synthetic"]["utterances"]["test"]
        return corpus, {k: v for k, v in config["subset"].items() if k != "test_hours"}

    assert without_test(study) == without_test(default)
    assert study["subset"]["test_hours"] == 0.1
    assert study["corpus"]["synthetic"]["utterances"]["test"] == 280
    for key in ("methods", "lambda", "rank_ratio", "keep_ratio"):
        assert study["merge"][key] == default["merge"][key], key
    # the default's settings first, then the study's training-then-merging ones
    n = len(default["merge"]["settings"])
    assert study["merge"]["settings"][:n] == default["merge"]["settings"]
    assert "joint" not in default and "study" not in default and "select" not in default["merge"]
    assert study["joint"]["settings"] and study["merge"]["select"] and study["study"]


def test_load_config_accepts_str_path():
    assert load_config(str(ROOT / "configs" / "smoke.yaml"))["preset"] == "smoke"


def raises(config: dict, *fragments: str) -> str:
    with pytest.raises(ValueError) as err:
        validate_config(config)
    msg = str(err.value)
    for f in fragments:
        assert f in msg, msg
    return msg


def test_unknown_language(smoke):
    smoke["languages"] = ["xx"]
    raises(smoke, "languages", "xx")


def test_missing_finetune_lr(smoke):
    del smoke["finetune"]["lr"]
    raises(smoke, "finetune", "lr")


def test_missing_lr_default(smoke):
    del smoke["finetune"]["lr"]["default"]
    raises(smoke, "finetune.lr", "default")


def test_unknown_top_level_key(smoke):
    smoke["lerning_rate"] = 1e-4
    raises(smoke, "lerning_rate")


def test_unknown_nested_key(smoke):
    smoke["merge"]["lamda"] = {"default": 0.3}
    raises(smoke, "merge", "lamda")


def test_bad_override_key(smoke):
    smoke["finetune"]["lr"]["de-mt"] = 1e-4
    raises(smoke, "finetune.lr", "de-mt")


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("merge", "keep_ratio", {"default": 1.5}),
        ("merge", "rank_ratio", {"default": 0}),
        ("merge", "settings", ["ml-asr", "everything"]),
        ("merge", "methods", []),
        ("decode", "beam_size", 0),
        ("subset", "scale", 2),
    ],
)
def test_out_of_range_values(smoke, section, key, value):
    smoke[section][key] = value
    raises(smoke, f"{section}.{key}")


def test_language_not_in_synthetic_base(smoke):
    smoke["languages"] = ["ca", "de", "sv"]
    raises(smoke, "base.synthetic.languages", "sv")


def test_synthetic_source_needs_corpus_section(smoke):
    del smoke["corpus"]
    raises(smoke, "corpus.synthetic")


def test_pretrained_base_may_have_any_language(smoke):
    smoke["languages"] = ["ca", "de", "es"]
    smoke["base"] = {"source": "pretrained", "pretrained": "openai/whisper-small"}
    validate_config(smoke)


def test_merge_settings(smoke):
    assert merge_settings(smoke) == {
        "ml-asr": [("ca", "asr"), ("de", "asr")],
        "ml-st": [("ca", "st"), ("de", "st")],
        "mt-ca": [("ca", "asr"), ("ca", "st")],
        "mt-de": [("de", "asr"), ("de", "st")],
        "mlmt": [("ca", "asr"), ("ca", "st"), ("de", "asr"), ("de", "st")],
    }


def test_merge_settings_skip_single_task_vector(smoke):
    smoke["languages"] = ["ca"]
    assert merge_settings(smoke) == {"mt-ca": [("ca", "asr"), ("ca", "st")]}
    smoke["languages"] = ["ca", "de"]
    smoke["tasks"] = ["asr"]
    assert merge_settings(smoke) == {"ml-asr": [("ca", "asr"), ("de", "asr")]}


def test_merge_settings_unknown(smoke):
    smoke["merge"]["settings"] = ["everything"]
    with pytest.raises(ValueError, match="everything"):
        merge_settings(smoke)


def test_per_combination_overrides(smoke):
    lr = smoke["finetune"]["lr"]
    assert per_combination(lr, "de", "st") == 5e-5
    assert per_combination(lr, "de", "asr") == 1e-4
    assert per_combination(lr, "ca", "st") == 1e-4
    assert finetune_hparams(smoke, "de", "st") == {
        "lr": 5e-5,
        "batch_size": 8,
        "grad_accum": 1,
        "epochs": 1,
        "gradient_checkpointing": False,
        "micro_batch_size": 4,
    }
    assert finetune_hparams(smoke, "ca", "asr")["lr"] == 1e-4
    del smoke["finetune"]["micro_batch_size"]  # absent: not in the params (no reruns)
    assert "micro_batch_size" not in finetune_hparams(smoke, "ca", "asr")


def test_training_runtime_options_stay_out_of_the_params(smoke):
    """Checkpoint frequency and data workers change how a training job runs, not its
    result: schema defaults, read by the scripts, never in a rule's params (no reruns)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    ft = schema["properties"]["finetune"]["properties"]
    assert training_runtime(smoke) == {k: ft[k]["default"] for k in TRAINING_RUNTIME}
    before = finetune_hparams(smoke, "de", "st")
    smoke["finetune"].update(checkpoint_every_steps=50, data_workers=2)
    validate_config(smoke)
    assert finetune_hparams(smoke, "de", "st") == before
    assert training_runtime(smoke)["checkpoint_every_steps"] == 50
    smoke["finetune"]["checkpoint_every_minutes"] = -1
    with pytest.raises(Exception, match="checkpoint_every_minutes"):
        validate_config(smoke)


def test_train_hours(smoke):
    assert train_hours(smoke, "ca") == 5
    smoke["subset"]["train_hours"]["de"] = 1
    assert train_hours(smoke, "de") == 1
    assert train_hours(smoke, "ca") == 5


def test_merge_lambda(smoke):
    assert setting_kind("mt-ca") == "mt"
    assert merge_lambda(smoke, "mt-ca") == 0.5
    assert merge_lambda(smoke, "mt-de") == 0.5
    assert merge_lambda(smoke, "ml-asr") == 0.3
    assert merge_lambda(smoke, "mlmt") == 0.3


def test_merge_params(smoke):
    pairs = [("ca", "asr"), ("ca", "st"), ("de", "asr"), ("de", "st")]
    assert merge_params(smoke, pairs) == [
        {"rank_ratio": 0.1, "keep_ratio": 0.4},
        {"rank_ratio": 0.05, "keep_ratio": 0.4},
        {"rank_ratio": 0.05, "keep_ratio": 0.4},
        {"rank_ratio": 0.05, "keep_ratio": 0.6},
    ]
    assert merge_params(smoke, [("de", "st"), ("ca", "asr")]) == [
        {"rank_ratio": 0.05, "keep_ratio": 0.6},
        {"rank_ratio": 0.1, "keep_ratio": 0.4},
    ]


def test_helpers_read_only_their_own_entries(smoke):
    # Adding a language must not change another language's params.
    before = merge_params(smoke, [("ca", "asr")]), finetune_hparams(smoke, "ca", "asr")
    smoke["languages"].append("es")
    smoke["finetune"]["lr"]["es-asr"] = 3e-4
    smoke["merge"]["rank_ratio"]["es-asr"] = 0.2
    after = merge_params(smoke, [("ca", "asr")]), finetune_hparams(smoke, "ca", "asr")
    assert before == after


# ------------------------------------------- bounds the code needs (issue 14, items 3 and 5)


@pytest.mark.parametrize("key", ["rank_ratio", "keep_ratio"])
def test_per_pair_ratio_above_one(smoke, key):
    smoke["merge"][key]["ca-asr"] = 5
    raises(smoke, f"merge.{key}.ca-asr", "5")


@pytest.mark.parametrize(
    "key,value",
    [("numbers_per_utterance", [4, 2]), ("rate", [220, 190]), ("snr_db", [25, 15])],
)
def test_ranges_are_ordered(smoke, key, value):
    smoke["corpus"]["synthetic"]["domains"]["target"][key] = value
    raises(smoke, f"corpus.synthetic.domains.target.{key}", "low <= high")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_lambda_must_be_finite(smoke, value):
    smoke["merge"]["lambda"]["mt"] = value
    raises(smoke, "merge.lambda.mt", "finite")


def test_split_fractions_leave_training_texts(smoke):
    smoke["corpus"]["synthetic"]["dev_fraction"] = 0.6
    smoke["corpus"]["synthetic"]["test_fraction"] = 0.6
    raises(smoke, "dev_fraction", "test_fraction", "below 1")


def test_schema_ships_inside_the_package():
    assert SCHEMA.is_file() and "speechmerge" in str(SCHEMA)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["package-data"]["speechmerge"] == ["schemas/*.yaml"]


def python(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], check=False, capture_output=True, text=True, **kw
    )


def test_validation_works_from_an_installed_wheel(tmp_path):
    """Built and unpacked as pip installs it, away from the repository: the schema is found."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "speechmerge", src / "speechmerge", ignore=IGNORE)
    shutil.copy2(ROOT / "pyproject.toml", src)
    build = ["-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    res = python(*build, str(src))
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = tmp_path.glob("speechmerge-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = f"from speechmerge.config import load_config; load_config({str(SMOKE)!r})"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    res = python("-c", code, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]


def loaded(modules: list[str], packages: list[str]) -> list[str]:
    """Which of `packages` a fresh interpreter has loaded after importing `modules`."""
    code = "; ".join(
        [f"import {m}" for m in modules]
        + ["import sys", f"print([m for m in {packages!r} if m in sys.modules])"]
    )
    res = python("-c", code, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    return ast.literal_eval(res.stdout.strip())


LIGHT = ["speechmerge", "speechmerge.plan", "speechmerge.config", "speechmerge.report"]
LIGHT += ["speechmerge.report.tables", "speechmerge.report.significance"]
LIGHT += ["speechmerge.report.results_md", "speechmerge.report.hparams"]
LIGHT += ["speechmerge.report.figures", "speechmerge.merge.registry"]


def test_importing_the_library_pulls_in_no_optional_dependency():
    """The library's modules import none of the workflow's or the optional extras' packages:
    they load only where they are used."""
    heavy = ["snakemake", "datasets", "espeakng_loader", "num2words", "matplotlib", "scipy"]
    assert loaded([*LIGHT, "speechmerge.joint", "speechmerge.select"], heavy) == []


def test_the_planning_and_report_code_loads_no_torch():
    """The Snakefile imports the plan and the config (every snakemake start, dry runs
    included) and the table/figure jobs import the report code: none loads torch or
    transformers (seconds of import each)."""
    assert loaded(LIGHT, ["torch", "transformers"]) == []


def test_setting_methods_must_be_configured_methods(smoke):
    cfg = copy.deepcopy(smoke)
    cfg["merge"]["methods"] = ["ta", "lors"]
    cfg["merge"]["setting_methods"] = {"mlmt": ["ta", "wa"]}
    raises(cfg, "merge.setting_methods.mlmt", "['wa']", "merge.methods")
    cfg["merge"]["setting_methods"] = {"mt-ca": ["ta"]}  # a kind, not a setting
    raises(cfg, "merge.setting_methods")


def test_test_hours_per_task_schema(smoke):
    cfg = copy.deepcopy(smoke)
    cfg["subset"]["test_hours"] = {"asr": 1.5}
    raises(cfg, "subset.test_hours")  # no default
    cfg["subset"]["test_hours"] = {"default": 1, "mt": 2}
    raises(cfg, "subset.test_hours")
    cfg["subset"]["test_hours"] = {"default": 1, "asr": 0}
    raises(cfg, "subset.test_hours")
    cfg["subset"]["test_hours"] = {"default": 1, "st": 0.5}
    validate_config(cfg)


def test_covost2_split_cap_counts_the_largest_test_set():
    from speechmerge.config import check_covost2

    cfg = load_config(ROOT / "configs" / "covost2-whisper-small.yaml")
    cfg["corpus"]["covost2"]["max_hours_per_split"] = 3
    cfg["subset"].update(scale=1, dev_hours=1, train_hours={"default": 1})
    cfg["subset"]["test_hours"] = {"default": 1, "asr": 4}
    with pytest.raises(ValueError, match="max_hours_per_split.*4 h"):
        check_covost2(cfg)
    cfg["subset"]["test_hours"] = {"default": 1, "asr": 2}
    check_covost2(cfg)
