"""Choose fine-tuning learning rates on dev (not a test): fine-tune one (language, task) of a
finished run at each learning rate and score it on the language's dev subset.

    .venv/bin/python benchmarks/finetune_lr_sweep.py RESULTS_DIR LANG TASK LR [LR ...] \
        [--config config.yaml]

Uses the run's base model and subsets (`RESULTS_DIR/models/base`, `RESULTS_DIR/subsets/`),
the fine-tuning recipe of `--config` (validated, then the workflow's own `finetune_hparams`
for LANG-TASK: batch, accumulation, epochs, micro-batch, `train_encoder`, ...; only lr
replaced) and its decoding settings (default: the default preset). Prints the base's dev score and one line per learning rate;
models go to /tmp/lr-sweep.
"""

import argparse
from pathlib import Path

from speechmerge.config import load_config
from speechmerge.decode import score_model
from speechmerge.plan.params import finetune_hparams
from speechmerge.train import finetune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("lang")
    ap.add_argument("task", choices=["asr", "st"])
    ap.add_argument("lrs", type=float, nargs="+")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=Path("/tmp/lr-sweep"))
    ap.add_argument("--config", type=Path, default=Path("config.yaml"))
    a = ap.parse_args()
    cfg = load_config(a.config)  # validated as the workflow validates it
    decode = cfg["decode"]
    recipe = finetune_hparams(cfg, a.lang, a.task)  # exactly the workflow's fine-tune
    base, dev = a.results / "models/base", a.results / f"subsets/{a.lang}/dev.tsv"
    job = (a.lang, a.task, str(dev), str(a.out / f"base-{a.lang}-{a.task}.json"))
    print(f"base dev {a.lang}-{a.task}: {score_model(base, [job], decode)[0]['score']:.2f}")
    for lr in a.lrs:
        out = a.out / f"{a.lang}-{a.task}-{lr:g}"
        hp = {**recipe, "lr": lr}
        finetune(
            base,
            a.results / f"subsets/{a.lang}/train.tsv",
            a.lang,
            a.task,
            hp,
            out / "model",
            a.seed,
        )
        job = (a.lang, a.task, str(dev), str(out / "dev.json"))
        print(
            f"lr {lr:g} dev {a.lang}-{a.task}: {score_model(out / 'model', [job], decode)[0]['score']:.2f}"
        )


if __name__ == "__main__":
    main()
