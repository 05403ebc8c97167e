"""Joint-training baselines and the training-then-merging settings of the paper's Table 4.

Joint models (config ``joint.settings``; the names are those of the merge settings, and a
joint model trains on exactly the (language, task) pairs that setting merges; which ones a
config asks for, and their hyper-parameters, is planned in :mod:`speechmerge.plan`):

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

from .corpus import read_tsv
from .model import load_pretrained
from .plan.settings import pair_languages
from .train import hparam_options, load_examples, optimizer_steps, run_training

log = logging.getLogger(__name__)


def joint_steps(sizes: list[int], batch_size: int, grad_accum: int, epochs: float) -> int:
    """The joint budget: the sum of the optimiser steps of one fine-tune per pair (`sizes`:
    each pair's number of training examples), as :func:`speechmerge.train.optimizer_steps`."""
    return sum(optimizer_steps(n, batch_size, grad_accum, epochs) for n in sizes)


def joint_examples(processor, pairs: list[tuple[str, str]], train_tsvs: dict[str, str]):
    """(examples, {(lang, task): number of examples}) of `pairs`, the union of the fine-tunes'
    training data (features are computed per batch while training)."""
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
    opts = {"max_steps": steps, "seed": seed, "device": device, **hparam_options(hp)}
    summary = run_training(model, processor, examples, out_dir, runtime, **opts)
    return {**summary, "pairs": [f"{lang}-{t}" for lang, t in pairs]}
