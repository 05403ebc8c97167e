"""Loading and checking the workflow config: the JSON schema (shipped in the package, see
:data:`SCHEMA`) and what the schema cannot say. What a config asks for (settings, jobs, file
names) is :mod:`speechmerge.plan`'s.
"""

from __future__ import annotations

import math
from importlib.resources import files
from pathlib import Path

import jsonschema
import yaml

from .io.atomic import atomic_write_text
from .plan.params import merge_max_shard_size, test_hours, train_hours
from .plan.settings import data_scales, study_methods, study_section

#: The JSON schema of the config (package data: found after a wheel install too).
SCHEMA = files(__package__) / "schemas" / "config.schema.yaml"


def canonicalize(config: dict) -> dict:
    """Sort the keys of every mapping in ``config``, in place (lists keep their order).

    Snakemake compares a job's params by their ``repr``, in which a dict's key order counts:
    without this, reordering keys in a YAML file would change every param built from a config
    section and rerun those jobs and everything downstream. Returns ``config``.
    """
    for value in config.values():
        _canonical_value(value)
    items = sorted(config.items(), key=lambda kv: str(kv[0]))
    config.clear()
    config.update(items)
    return config


def _canonical_value(value: object) -> None:
    if isinstance(value, dict):
        canonicalize(value)
    elif isinstance(value, list):
        for v in value:
            _canonical_value(v)


def check_config(config: dict) -> None:
    """What the JSON schema cannot say, checked before any job runs; errors name the key."""
    check_finite(config)
    check_bounds(config)
    check_languages(config)
    check_setting_methods(config)
    merge_max_shard_size(config)  # a size of 0 bytes passes the schema's pattern


def check_finite(value: object, key: str = "") -> None:
    """Every number of the config is finite (YAML's .nan and .inf pass the schema's bounds)."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{key}.{i}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config key '{key}': must be a finite number, got {value!r}")


#: The [low, high] ranges of a synthetic domain (corpus.synthetic.domains.<domain>.<key>).
DOMAIN_RANGES = ("numbers_per_utterance", "rate", "pitch", "snr_db")


def check_bounds(config: dict) -> None:
    """Bounds between keys: ordered ranges, split fractions that leave training texts."""
    syn = config.get("corpus", {}).get("synthetic")
    if not syn:
        return
    dev, test = syn["dev_fraction"], syn["test_fraction"]
    if dev + test >= 1:
        raise ValueError(
            f"config keys 'corpus.synthetic.dev_fraction' + 'corpus.synthetic.test_fraction' "
            f"must be below 1 (no texts would be left for training), got {dev} + {test}"
        )
    for name, domain in syn["domains"].items():
        for k in DOMAIN_RANGES:
            if k in domain and domain[k][0] > domain[k][1]:
                raise ValueError(
                    f"config key 'corpus.synthetic.domains.{name}.{k}': [low, high] with "
                    f"low <= high, got {domain[k]}"
                )


def check_languages(config: dict) -> None:
    """Fail early, naming the key, where the config asks for what the source cannot give."""
    if config["source"] == "synthetic" and config["base"]["source"] == "synthetic":
        base_langs = config["base"]["synthetic"]["languages"]
        extra = [lang for lang in config["languages"] if lang not in base_langs]
        if extra:
            raise ValueError(
                f"config key 'languages': {extra} are not in 'base.synthetic.languages' "
                f"{base_langs}; the synthetic base must be pretrained on every language"
            )
    if config["source"] == "synthetic" and "synthetic" not in config.get("corpus", {}):
        raise ValueError("config key 'corpus.synthetic' is required when source is 'synthetic'")
    if config["source"] == "covost2":
        check_covost2(config)
    check_base(config)


def check_base(config: dict) -> None:
    """A ct2 base from the installed whisper-base packages: check them (present, SHA-256)
    before any job runs, so a damaged package fails at start naming what to reinstall."""
    base = config["base"]
    if base["source"] == "synthetic" and "synthetic" not in base:
        raise ValueError("config key 'base.synthetic' is required when base.source is 'synthetic'")
    if base["source"] == "ct2":
        path = base.get("ct2", {}).get("path")
        if path is None:
            # deferred: convert loads torch (its weight mapping); the Snakefile imports this
            # module, so every snakemake start would pay for it
            from .convert import ConversionError, check_whisper_base

            try:
                check_whisper_base()
            except ConversionError as err:
                raise ValueError(f"config key 'base.source' is 'ct2': {err}") from None
        elif not (Path(path) / "model.bin").is_file():
            raise ValueError(f"config key 'base.ct2.path': {path}/model.bin does not exist")


def check_setting_methods(config: dict) -> None:
    """``merge.setting_methods`` picks from ``merge.methods`` (their merges' rules and files)."""
    methods = config["merge"]["methods"]
    for kind, chosen in (config["merge"].get("setting_methods") or {}).items():
        extra = [m for m in chosen if m not in methods]
        if extra:
            raise ValueError(
                f"config key 'merge.setting_methods.{kind}': {extra} are not in "
                f"'merge.methods' {methods}"
            )


def check_covost2(config: dict) -> None:
    """CoVoST-2 needs a pretrained base (a real Whisper), and enough audio per split for the
    subsets the config asks for."""
    if config["base"]["source"] == "synthetic":
        raise ValueError(
            "config key 'base.source' must be 'pretrained' or 'ct2' when source is 'covost2' "
            "(the synthetic base knows only the synthetic benchmark); set base.pretrained, e.g. "
            "openai/whisper-small"
        )
    cap = config.get("corpus", {}).get("covost2", {}).get("max_hours_per_split")
    if cap:
        sub = config["subset"]
        need = (
            max(
                max(train_hours(config, lang) for lang in config["languages"]),
                sub["dev_hours"],
                *(test_hours(config, task) for task in config["tasks"]),
            )
            * sub["scale"]
        )
        if cap < need:
            raise ValueError(
                f"config key 'corpus.covost2.max_hours_per_split': {cap} h is less than the "
                f"{need:g} h the subsets need (subset.*_hours × subset.scale)"
            )


def check_study(config: dict) -> None:
    """Fail early, naming the key, on study settings the workflow cannot serve."""
    merge_methods = set(config["merge"]["methods"])
    for key in ("num_languages", "data_scale"):
        extra = [m for m in study_methods(config, key) if m not in merge_methods]
        if extra:
            raise ValueError(
                f"config key 'study.{key}.methods': {extra} are not in 'merge.methods' "
                f"{sorted(merge_methods)}"
            )
    if study_section(config, "retain") and not data_scales(config):
        raise ValueError("config key 'study.retain' needs 'study.data_scale' (its data sizes)")
    if study_section(config, "retain") and "asr" not in config["tasks"]:
        raise ValueError("config key 'study.retain' needs 'asr' in 'tasks' (Figure 5 is ASR)")


def write_effective_config(config: dict, path: str | Path) -> Path:
    """Write the config a run actually uses (preset + ``--config`` overrides + schema
    defaults) as YAML, atomically: what produced the results beside it."""
    text = (
        "# The effective config of the last run (written by the workflow at start).\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    )
    atomic_write_text(path, text)
    return Path(path)


def load_config(path: str | Path) -> dict:
    """Load a YAML config and validate it against :data:`SCHEMA`. Errors name the
    offending key."""
    config = yaml.safe_load(Path(path).read_text())
    validate_config(config)
    return config


def validate_config(config: dict) -> None:
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=str)
    if errors:
        e = errors[0]
        key = ".".join(map(str, e.absolute_path)) or "(top level)"
        raise ValueError(f"config key '{key}': {e.message}")
    check_config(config)
