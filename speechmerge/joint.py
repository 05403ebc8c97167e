"""Joint-training baselines and the training-then-merging settings of the paper's Table 4.

Joint models (config ``joint.settings``; the names are those of the merge settings, and a
joint model trains on exactly the (language, task) pairs that setting merges):

* ``ml-asr``, ``ml-st``: multi-lingual training, one model per task on all languages
  (Tables 1, 2: "Multi-lingual training");
* ``mt``: multi-task training, one model per language on ASR + ST (``mt-ca`` …; Table 3:
  "Multi-task training");
* ``mlmt``: one model on every (language, task) (Table 4: "ML and MT training").

Budget (paper section 4.3: "the same amount of training data is used from each language and
each task"): a joint model trains on the union of its pairs' fine-tuning data, for as many
optimiser steps as the fine-tunes of those pairs together (:func:`joint_steps`), so every
example is seen for the fine-tunes' number of epochs. Adam, batch size, accumulation and
micro-batch come from ``finetune``; the learning rate from ``joint.lr`` (one per joint model:
the paper's joint training has one configuration for all its languages and tasks).

Combined settings (``merge.settings``), merged with ``merge.combined_methods``:

* ``mttrain-mlmerge``: MT training, then ML merging: the task vectors θ_mt-{lang} − θ0 of
  the per-language multi-task models, merged across languages;
* ``mltrain-mtmerge``: ML training, then MT merging: the task vectors of the ``ml-asr`` and
  ``ml-st`` models, merged across tasks.

Each is scored on every (language, task) pair.
"""

from __future__ import annotations

import logging

from . import config as smcfg

log = logging.getLogger(__name__)

JOINT_SETTINGS = ("ml-asr", "ml-st", "mt", "mlmt")
DEFAULT_COMBINED_METHODS = ["ta", "lors"]


def joint_models(config: dict) -> dict[str, list[tuple[str, str]]]:
    """{joint model name: [(lang, task), ...] it trains on} for ``joint.settings``.

    Names and pairs are those of :func:`speechmerge.config.merge_settings` (``mt`` expands to
    ``mt-{lang}``; a setting of a single pair is skipped: it would be a fine-tune)."""
    settings = list((config.get("joint") or {}).get("settings") or [])
    sub = {"languages": config["languages"], "tasks": config["tasks"]}
    return smcfg.merge_settings({**sub, "merge": {"settings": settings}})


def joint_hparams(config: dict, name: str) -> dict:
    """Training hyper-parameters of joint model `name`: ``finetune``'s batch size,
    accumulation, epochs, micro-batch and checkpointing, and ``joint.lr`` looked up as
    ``name``, then its kind (``mt`` for ``mt-{lang}``), then ``default``; without
    ``joint.lr``, ``finetune.lr.default``."""
    ft = config["finetune"]
    lrs = (config.get("joint") or {}).get("lr") or {"default": ft["lr"]["default"]}
    lr = lrs.get(name, lrs.get(smcfg.setting_kind(name), lrs["default"]))
    return {
        "lr": lr,
        "batch_size": ft["batch_size"],
        "grad_accum": ft["grad_accum"],
        "epochs": ft["epochs"],
        "micro_batch_size": ft.get("micro_batch_size"),
        "gradient_checkpointing": ft.get("gradient_checkpointing", False),
    }


def combined_settings(config: dict) -> dict[str, dict]:
    """{combined setting: {"models": [joint model names merged], "pairs": [(lang, task)
    scored]}} for the combined settings in ``merge.settings``.

    Fails, naming the keys, when a setting's joint models are not in ``joint.settings``.
    Skipped when it would merge one model (one language, or one task)."""
    langs, tasks = config["languages"], config["tasks"]
    joint = joint_models(config)
    pairs = [(lang, t) for lang in langs for t in tasks]
    out: dict[str, dict] = {}
    for s in config["merge"]["settings"]:
        if s not in smcfg.COMBINED_SETTINGS:
            continue
        if len(langs) < 2 or len(tasks) < 2:
            continue
        if s == "mttrain-mlmerge":
            models, needs = [f"mt-{lang}" for lang in langs], "mt"
        else:  # mltrain-mtmerge
            models, needs = [f"ml-{t}" for t in tasks], " and ".join(f"ml-{t}" for t in tasks)
        if any(m not in joint for m in models):
            raise ValueError(
                f"config key 'merge.settings': {s!r} merges joint models; add {needs} to "
                f"'joint.settings' (now {(config.get('joint') or {}).get('settings')})"
            )
        out[s] = {"models": models, "pairs": pairs}
    return out


def combined_methods(config: dict) -> list[str]:
    return list(config["merge"].get("combined_methods", DEFAULT_COMBINED_METHODS))


def combined_params(config: dict, setting: str) -> list[dict]:
    """Per task vector (rank_ratio, keep_ratio) of a combined setting: a joint model's task
    vector spans several (language, task) pairs, so it takes the ``default`` ratios (plus the
    per-method sections, as :func:`speechmerge.config.merge_params`)."""
    m = config["merge"]
    sections = {k: dict(m[k]) for k in smcfg.METHOD_PARAM_SECTIONS if m.get(k)}
    n = len(combined_settings(config)[setting]["models"])
    return [
        {
            "rank_ratio": m["rank_ratio"]["default"],
            "keep_ratio": m["keep_ratio"]["default"],
            **{k: dict(v) for k, v in sections.items()},
        }
        for _ in range(n)
    ]


def joint_steps(sizes: list[int], batch_size: int, grad_accum: int, epochs: float) -> int:
    """The joint budget: the sum of the optimiser steps of one fine-tune per pair (`sizes`:
    each pair's number of training examples), as :func:`speechmerge.train.optimizer_steps`."""
    from .train import optimizer_steps

    return sum(optimizer_steps(n, batch_size, grad_accum, epochs) for n in sizes)


def pair_languages(pairs: list[tuple[str, str]]) -> list[str]:
    """The languages of `pairs`, each once, in order of first appearance."""
    return list(dict.fromkeys(lang for lang, _ in pairs))


def joint_examples(processor, pairs: list[tuple[str, str]], train_tsvs: dict[str, str]):
    """(examples, {(lang, task): number of examples}) of `pairs`, the union of the fine-tunes'
    training data (features are computed per batch while training)."""
    from .corpus import read_tsv
    from .train import load_examples

    langs = pair_languages(pairs)
    missing = [lang for lang in langs if lang not in train_tsvs]
    if missing:
        raise ValueError(f"joint training: no training TSV for languages {missing}")
    sources = [(train_tsvs[lang], lang, [t for lg, t in pairs if lg == lang]) for lang in langs]
    examples = load_examples(processor, sources)
    sizes = {(lang, t): len(read_tsv(train_tsvs[lang])) for lang, t in pairs}
    return examples, sizes


def train_joint(
    base_dir,
    train_tsvs: dict[str, str],
    pairs: list[tuple[str, str]],
    hp: dict,
    out_dir,
    seed: int,
    device: str = "cpu",
    runtime: dict | None = None,
) -> dict:
    """Full-parameter training of the base on the mixed data of `pairs` (shuffled together),
    for :func:`joint_steps` optimiser steps; saves the model dir atomically. `runtime`:
    checkpoints and data workers (:func:`speechmerge.train.run_training`)."""
    from .model import load_pretrained
    from .train import run_training

    model, processor = load_pretrained(str(base_dir))
    examples, sizes = joint_examples(processor, pairs, train_tsvs)
    steps = joint_steps(list(sizes.values()), hp["batch_size"], hp["grad_accum"], hp["epochs"])
    log.info(
        "joint training on %s: %d examples, %d optimiser steps (sum of the fine-tunes'), lr %g",
        ", ".join(f"{lang}-{t} ({n})" for (lang, t), n in sizes.items()),
        len(examples),
        steps,
        hp["lr"],
    )
    summary = run_training(
        model,
        processor,
        examples,
        out_dir,
        runtime,
        lr=hp["lr"],
        batch_size=hp["batch_size"],
        grad_accum=hp["grad_accum"],
        max_steps=steps,
        micro_batch_size=hp.get("micro_batch_size"),
        seed=seed,
        device=device,
        grad_checkpointing=hp.get("gradient_checkpointing", False),
        train_encoder=hp.get("train_encoder", True),
    )
    return {**summary, "pairs": [f"{lang}-{t}" for lang, t in pairs]}
