#!/usr/bin/env python
"""Paired comparisons of a study run beyond `significance.csv` (prints numbers; not a test).

    .venv/bin/python benchmarks/study_comparisons.py RUN_DIR

`significance.csv` holds the differences the verdict table states (LoRS vs TA, TA vs WA,
best merge vs joint training, each merge vs the fine-tunes). The whisper-base study's Reading
also compares joint models with the fine-tunes, LoRS with TA in Table 4's training-then-merging
settings and at Figure 4's half-data scale, and each data scale with the other. This prints
those, with the same paired bootstrap (:func:`speechmerge.hypotheses.files_compare`: averages
over the languages, 1000 resamples, seed 0). Rows whose score files are missing are skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from speechmerge.hypotheses import files_compare


def comparisons(langs: list[str], task: str) -> list[tuple[str, list[str], list[str]]]:
    def f(folder: str) -> list[str]:
        return [f"{folder}/{lang}-{task}.json" for lang in langs]

    mt_joint = [f"joint/mt-{lang}/{lang}-{task}.json" for lang in langs]
    return [
        ("ML training vs Finetuned", f(f"joint/ml-{task}"), f("finetuned")),
        ("MT training vs Finetuned", mt_joint, f("finetuned")),
        ("ML and MT training vs Finetuned", f("joint/mlmt"), f("finetuned")),
        (
            "ML training + MT: LoRS vs TA",
            f("merged/mltrain-mtmerge/lors"),
            f("merged/mltrain-mtmerge/ta"),
        ),
        (
            "MT training + ML: LoRS vs TA",
            f("merged/mttrain-mlmerge/lors"),
            f("merged/mttrain-mlmerge/ta"),
        ),
        (
            "ML training + MT TA vs ML and MT WA",
            f("merged/mltrain-mtmerge/ta"),
            f("merged/mlmt/wa"),
        ),
        ("ML training + MT TA vs Finetuned", f("merged/mltrain-mtmerge/ta"), f("finetuned")),
        (
            "Figure 4, scale 0.5: LoRS vs TA",
            f(f"study/data0.5-{task}/lors"),
            f(f"study/data0.5-{task}/ta"),
        ),
        (
            "Figure 4, scale 0.5: ML training vs Finetuned",
            f(f"joint@0.5/ml-{task}"),
            f("finetuned@0.5"),
        ),
        ("ML training: scale 0.5 vs 1", f(f"joint@0.5/ml-{task}"), f(f"joint/ml-{task}")),
        ("Finetuned: scale 0.5 vs 1", f("finetuned@0.5"), f("finetuned")),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    a = ap.parse_args()
    cfg = yaml.safe_load((a.run / "results/config.effective.yaml").read_text())
    scores = a.run / "results/scores"
    print("delta = A − B, averaged over the languages; verdict is A's (WER lower, BLEU higher).\n")
    print("| task | A vs B | delta [95 % CI] | p | verdict |")
    print("| --- | --- | --- | ---: | --- |")
    for task in cfg["tasks"]:
        for name, files_a, files_b in comparisons(cfg["languages"], task):
            pa, pb = [scores / p for p in files_a], [scores / p for p in files_b]
            if not all(p.exists() for p in pa + pb):
                continue
            d = files_compare(pa, pb)
            print(
                f"| {task} | {name} | {d['delta']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] "
                f"| {d['p_value']:.3f} | {d['verdict']} |"
            )


if __name__ == "__main__":
    main()
