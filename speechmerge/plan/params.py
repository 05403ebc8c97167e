"""Each job's own values: hyper-parameters, λ, pruning ratios, device, selection.

A helper reads only the config entries of the job it serves, so a job's params change only
when its own entries do (adding a language never changes another language's params).
"""

from __future__ import annotations

from ..io.shards import parse_shard_size
from ..merge.registry import METHODS, RATIO_FREE
from .settings import combined_settings, setting_kind

#: Methods whose optional hyper-parameter sections ``merge.<method>`` are passed through.
METHOD_PARAM_SECTIONS = ("ties", "dare", "tsvm", "iso_cts", "cart")

#: Methods that read neither a rank ratio r nor a keep ratio p (from their declarations in
#: the registry): a dev-selected (r, p) cannot change their merges, so they do not wait for it.
RATIO_FREE_METHODS = RATIO_FREE

#: ``finetune`` keys that change how a training job runs, not what it computes, with their
#: schema defaults: workflow scripts read them from the config (never rule params, so
#: changing them reruns nothing).
TRAINING_RUNTIME = {"checkpoint_every_steps": 0, "checkpoint_every_minutes": 20, "data_workers": 0}


def combo(lang: str, task: str) -> str:
    return f"{lang}-{task}"


def per_combination(section: dict, lang: str, task: str):
    """``section['{lang}-{task}']`` if present, else ``section['default']``."""
    return section.get(combo(lang, task), section["default"])


def device(config: dict) -> str:
    """The device of GPU-capable jobs (``auto``: CUDA, then MPS, then CPU)."""
    return config.get("device", "auto")


def train_hours(config: dict, lang: str) -> float:
    return config["subset"]["train_hours"].get(lang, config["subset"]["train_hours"]["default"])


def test_hours(config: dict, task: str) -> float:
    """Hours of test audio per language for `task`: ``subset.test_hours`` (a number, or
    ``default`` plus optional ``asr`` / ``st``)."""
    hours = config["subset"]["test_hours"]
    return hours.get(task, hours["default"]) if isinstance(hours, dict) else hours


def test_splits(config: dict) -> dict[str, str]:
    """{task: the subset split its test set is}: one ``test`` set per language that both tasks
    read when their hours are equal (each utterance has a transcript and a translation),
    else ``test-asr`` and ``test-st``."""
    tasks = config["tasks"]
    if len({test_hours(config, t) for t in tasks}) <= 1:
        return dict.fromkeys(tasks, "test")
    return {t: f"test-{t}" for t in tasks}


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


def training_runtime(config: dict) -> dict:
    """Checkpointing and data-loading options of training jobs (fine-tune, joint, base)."""
    ft = config.get("finetune") or {}
    return {k: ft.get(k, default) for k, default in TRAINING_RUNTIME.items()}


def merge_lambda(config: dict, setting: str) -> float:
    lam = config["merge"]["lambda"]
    return lam.get(setting_kind(setting), lam["default"])


def merge_max_shard_size(config: dict) -> int | None:
    """``merge.max_shard_size`` in bytes (None: unsharded merged weights, the default).

    Like :data:`TRAINING_RUNTIME`, it changes how a merge job stores its output, not what it
    computes (the same tensors, in one file or in shards): the merge script reads it from the
    config, never a rule's params, so setting or changing it reruns nothing (merges made
    before keep their layout; ``--forcerun merge`` rewrites them). A bad value is a ValueError
    naming the key (checked at start by :func:`speechmerge.config.check_config`).
    """
    return parse_shard_size(
        config["merge"].get("max_shard_size"), "config key 'merge.max_shard_size'"
    )


def rounding_params(config: dict) -> dict:
    """``{"rounding": "paper"}`` when ``merge.rounding`` is ``paper``, else ``{}``.

    The default ``ceil`` is left out of the parameters, so the params of every job stay what
    they were before the key existed (no reruns of existing results).
    """
    rounding = config["merge"].get("rounding", "ceil")
    return {} if rounding == "ceil" else {"rounding": rounding}


def _ratios(m: dict, rank_ratio, keep_ratio, extra: dict) -> dict:
    sections = {k: dict(m[k]) for k in METHOD_PARAM_SECTIONS if m.get(k)}
    return {"rank_ratio": rank_ratio, "keep_ratio": keep_ratio, **sections, **extra}


def merge_params(config: dict, pairs: list[tuple[str, str]]) -> list[dict]:
    """Each task vector's own (rank_ratio, keep_ratio), in the order of `pairs`.

    Configured per-method sections (``merge.ties``, ``merge.dare``, ``merge.tsvm``,
    ``merge.iso_cts``, ``merge.cart``) are added to every dict under the method's name, e.g.
    ``{"rank_ratio": 0.05, "keep_ratio": 0.4, "ties": {"keep_ratio": 0.2}}``; the merge
    methods read their own section first. ``merge.rounding: paper`` adds ``"rounding":
    "paper"`` (:func:`rounding_params`).
    """
    m = config["merge"]
    return [
        _ratios(
            m,
            per_combination(m["rank_ratio"], lang, task),
            per_combination(m["keep_ratio"], lang, task),
            rounding_params(config),
        )
        for lang, task in pairs
    ]


def combined_params(config: dict, setting: str) -> list[dict]:
    """Per task vector (rank_ratio, keep_ratio) of a combined setting: a joint model's task
    vector spans several (language, task) pairs, so it takes the ``default`` ratios (plus the
    per-method sections, as :func:`merge_params`)."""
    m = config["merge"]
    n = len(combined_settings(config)[setting]["models"])
    return [_ratios(m, m["rank_ratio"]["default"], m["keep_ratio"]["default"], {})] * n


def select_config(config: dict) -> dict | None:
    """``merge.select`` (dev-set selection) with ``merge.rounding``, or None without it."""
    sel = config["merge"].get("select")
    return None if sel is None else {**sel, **rounding_params(config)}


def lambda_methods(config: dict) -> list[str]:
    """Methods whose λ is selected: ``merge.select.methods``, default every configured method;
    only those that use a λ (the registry's ``uses_lambda``: all but Weight Averaging)."""
    sel = config["merge"].get("select") or {}
    methods = sel.get("methods") or config["merge"]["methods"]
    return [m for m in methods if METHODS[m].uses_lambda]


def joint_hparams(config: dict, name: str) -> dict:
    """Training hyper-parameters of joint model `name`: ``finetune``'s batch size,
    accumulation, epochs, micro-batch and checkpointing, and ``joint.lr`` looked up as
    ``name``, then its kind (``mt`` for ``mt-{lang}``), then ``default``; without
    ``joint.lr``, ``finetune.lr.default``."""
    ft = config["finetune"]
    lrs = (config.get("joint") or {}).get("lr") or {"default": ft["lr"]["default"]}
    lr = lrs.get(name, lrs.get(setting_kind(name), lrs["default"]))
    return {
        "lr": lr,
        "batch_size": ft["batch_size"],
        "grad_accum": ft["grad_accum"],
        "epochs": ft["epochs"],
        "micro_batch_size": ft.get("micro_batch_size"),
        "gradient_checkpointing": ft.get("gradient_checkpointing", False),
    }
