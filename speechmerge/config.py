"""Reading the workflow config: per-(language, task) values and the merge settings.

Each helper reads only the entries of the job it serves, so a job's params change only when
its own config entries do (adding a language never changes another language's params).
"""

from __future__ import annotations

import math
from pathlib import Path

SETTINGS_HELP = {
    "ml-asr": "multi-lingual ASR: the ASR task vectors of all languages",
    "ml-st": "multi-lingual ST: the ST task vectors of all languages",
    "mt": "multi-task, per language: that language's ASR and ST task vectors (mt-{lang})",
    "mlmt": "multi-lingual multi-task: every (language, task) task vector",
}

#: Training-then-merging settings of Table 4; they merge joint models' task vectors
#: (:func:`speechmerge.joint.combined_settings`), so :func:`merge_settings` leaves them out.
COMBINED_SETTINGS = {
    "mttrain-mlmerge": "MT training, then ML merging: the mt-{lang} joint models' task vectors",
    "mltrain-mtmerge": "ML training, then MT merging: the ml-asr and ml-st joint models'",
}


def combo(lang: str, task: str) -> str:
    return f"{lang}-{task}"


def per_combination(section: dict, lang: str, task: str):
    """``section['{lang}-{task}']`` if present, else ``section['default']``."""
    return section.get(combo(lang, task), section["default"])


def train_hours(config: dict, lang: str) -> float:
    return config["subset"]["train_hours"].get(lang, config["subset"]["train_hours"]["default"])


def finetune_hparams(config: dict, lang: str, task: str) -> dict:
    ft = config["finetune"]
    return {
        "lr": per_combination(ft["lr"], lang, task),
        "batch_size": ft["batch_size"],
        "grad_accum": ft["grad_accum"],
        "epochs": ft["epochs"],
        "gradient_checkpointing": ft.get("gradient_checkpointing", False),
        # only when set, so that configs without it keep their fine-tunes' params
        **({"micro_batch_size": ft["micro_batch_size"]} if ft.get("micro_batch_size") else {}),
        **({"train_encoder": False} if ft.get("train_encoder") is False else {}),
    }


#: ``finetune`` keys that change how a training job runs, not what it computes, with their
#: schema defaults: workflow scripts read them from the config (never rule params, so
#: changing them reruns nothing).
TRAINING_RUNTIME = {"checkpoint_every_steps": 0, "checkpoint_every_minutes": 20, "data_workers": 0}


def training_runtime(config: dict) -> dict:
    """Checkpointing and data-loading options of training jobs (fine-tune, joint, base)."""
    ft = config.get("finetune") or {}
    return {k: ft.get(k, default) for k, default in TRAINING_RUNTIME.items()}


def merge_settings(config: dict) -> dict[str, list[tuple[str, str]]]:
    """{setting name: [(lang, task), ...]} for the configured settings.

    ``mt`` expands to one setting per language (``mt-ca`` …). A setting that would merge a
    single task vector (e.g. ``ml-asr`` with one language) is skipped: it is the fine-tuned
    model itself.
    """
    langs, tasks = config["languages"], config["tasks"]
    out: dict[str, list[tuple[str, str]]] = {}
    for s in config["merge"]["settings"]:
        if s in ("ml-asr", "ml-st"):
            task = s.split("-")[1]
            if task in tasks and len(langs) > 1:
                out[s] = [(lang, task) for lang in langs]
        elif s == "mt":
            if len(tasks) > 1:
                for lang in langs:
                    out[f"mt-{lang}"] = [(lang, t) for t in tasks]
        elif s == "mlmt":
            if len(tasks) > 1 and len(langs) > 1:
                out[s] = [(lang, t) for lang in langs for t in tasks]
        elif s not in COMBINED_SETTINGS:
            raise ValueError(
                f"merge.settings: unknown setting {s!r}; known: "
                f"{sorted(SETTINGS_HELP) + sorted(COMBINED_SETTINGS)}"
            )
    return out


def setting_kind(setting: str) -> str:
    return "mt" if setting.startswith("mt-") else setting


def merge_lambda(config: dict, setting: str) -> float:
    lam = config["merge"]["lambda"]
    return lam.get(setting_kind(setting), lam["default"])


#: Methods whose optional hyper-parameter sections ``merge.<method>`` are passed through.
METHOD_PARAM_SECTIONS = ("ties", "dare", "tsvm", "iso_cts", "cart")


def rounding_params(config: dict) -> dict:
    """``{"rounding": "paper"}`` when ``merge.rounding`` is ``paper``, else ``{}``.

    The default ``ceil`` is left out of the parameters, so the params of every job stay what
    they were before the key existed (no reruns of existing results).
    """
    rounding = config["merge"].get("rounding", "ceil")
    return {} if rounding == "ceil" else {"rounding": rounding}


def merge_params(config: dict, pairs: list[tuple[str, str]]) -> list[dict]:
    """Each task vector's own (rank_ratio, keep_ratio), in the order of `pairs`.

    Configured per-method sections (``merge.ties``, ``merge.dare``, ``merge.tsvm``,
    ``merge.iso_cts``, ``merge.cart``) are added to every dict under the method's name, e.g.
    ``{"rank_ratio": 0.05, "keep_ratio": 0.4, "ties": {"keep_ratio": 0.2}}``; the merge
    methods read their own section first (``speechmerge.merge.method_param``).
    ``merge.rounding: paper`` adds ``"rounding": "paper"`` (:func:`rounding_params`).
    """
    m = config["merge"]
    sections = {k: dict(m[k]) for k in METHOD_PARAM_SECTIONS if m.get(k)}
    return [
        {
            "rank_ratio": per_combination(m["rank_ratio"], lang, task),
            "keep_ratio": per_combination(m["keep_ratio"], lang, task),
            **{k: dict(v) for k, v in sections.items()},
            **rounding_params(config),
        }
        for lang, task in pairs
    ]


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
        from .convert import ConversionError, check_whisper_base

        path = base.get("ct2", {}).get("path")
        if path is None:
            try:
                check_whisper_base()
            except ConversionError as err:
                raise ValueError(f"config key 'base.source' is 'ct2': {err}") from None
        elif not (Path(path) / "model.bin").is_file():
            raise ValueError(f"config key 'base.ct2.path': {path}/model.bin does not exist")


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
                sub["test_hours"],
            )
            * sub["scale"]
        )
        if cap < need:
            raise ValueError(
                f"config key 'corpus.covost2.max_hours_per_split': {cap} h is less than the "
                f"{need:g} h the subsets need (subset.*_hours × subset.scale)"
            )


def write_effective_config(config: dict, path: str | Path) -> Path:
    """Write the config a run actually uses (preset + ``--config`` overrides + schema
    defaults) as YAML, atomically: what produced the results beside it."""
    import yaml

    from .io.atomic import atomic_write_text

    text = (
        "# The effective config of the last run (written by the workflow at start).\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    )
    atomic_write_text(path, text)
    return Path(path)


def load_config(path: str | Path) -> dict:
    """Load a YAML config and validate it against ``schemas/config.schema.yaml`` (defaults
    filled in). Errors name the offending key."""
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    validate_config(config)
    return config


def validate_config(config: dict) -> None:
    import jsonschema
    import yaml

    schema_path = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"
    schema = yaml.safe_load(schema_path.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=str)
    if errors:
        e = errors[0]
        key = ".".join(map(str, e.absolute_path)) or "(top level)"
        raise ValueError(f"config key '{key}': {e.message}")
    check_config(config)
