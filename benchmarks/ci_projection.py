#!/usr/bin/env python
"""How large a test set the CI bar needs, and what it would cost (prints numbers; not a test).

    .venv/bin/python benchmarks/ci_projection.py RUN_DIR --wall SECONDS \
        [--setting ml-asr] [--factors 1 1.5 2 2.5 3] [--target 2] [--drop mlmt:wa,mp,svp]

Issue 13's bar: the 95 % CI of a setting's average WER (the ML-ASR Avg. column of Table 1)
has a half-width of at most `--target` points for every system in the table. For each system
scored in RUN_DIR (pretrained, fine-tuned, every merge of `--setting`, and the joint model when
there is one) this bootstraps that average as the workflow does
(:mod:`speechmerge.metrics`: corpus WER per test set from per-utterance statistics, averaged
over the languages, each test set resampled within itself, 1000 resamples, seed 0), but with
each resample drawing round(k × n) utterances from a test set's n instead of n: the CI a
test set k times larger would give if its utterances were like these (a power analysis, so a
projection, not a measurement). At k = 1 it reproduces the tables' intervals.

Cost: a decode's seconds scale with its utterances (the score JSONs' `seconds`), so the run's
job seconds grow by (k − 1) × the seconds of every decode of a test set of `--task` (all of
them, whichever setting decodes them: test sets are per (language, task)). The projected wall
time is the run's `--wall` plus the added job seconds divided by the run's parallelism
(`--parallel`; default: job seconds / `--wall`). `--drop SETTING:M1,M2` subtracts those
methods' decodes, e.g. Table 4 with only the paper's TA and LoRS (not their merges, ~4 % of a
run: a conservative estimate). Fine-tuning, dev decodes and the rest are unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpu_costs import job_seconds

from speechmerge.hypotheses import system_stats
from speechmerge.metrics import bootstrap


def half_width(items: list[tuple[str, np.ndarray]], metric: str, k: float) -> tuple[float, float]:
    """(average score, half-width of its 95 % CI) with each test set k times larger."""
    ci = bootstrap(metric, items, scale=k)
    return ci["score"], (ci["ci_high"] - ci["ci_low"]) / 2


def systems(run: Path, setting: str, langs: list[str], task: str) -> dict[str, list[Path]]:
    scores = run / "results" / "scores"
    out = {}
    for name, d in [("Pretrained", scores / "pretrained"), ("Finetuned", scores / "finetuned")]:
        out[name] = [d / f"{lang}-{task}.json" for lang in langs]
    joint = scores / "joint" / setting
    if joint.is_dir():
        out["Joint training"] = [joint / f"{lang}-{task}.json" for lang in langs]
    merged = scores / "merged" / setting
    for method in sorted(p.name for p in merged.iterdir() if p.is_dir()):
        out[method] = [merged / method / f"{lang}-{task}.json" for lang in langs]
    return {k: v for k, v in out.items() if all(p.exists() for p in v)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--wall", type=float, required=True, help="the run's wall seconds")
    ap.add_argument(
        "--parallel",
        type=float,
        help="jobs at a time (default: the run's job seconds / --wall; give the measured "
        "value when the run directory's benchmark files include later reruns)",
    )
    ap.add_argument("--setting", default="ml-asr")
    ap.add_argument("--task", default="asr", help="the setting's task (its test sets grow)")
    ap.add_argument("--factors", type=float, nargs="+", default=[1, 1.5, 2, 2.5, 3])
    ap.add_argument("--target", type=float, default=2.0)
    ap.add_argument("--drop", default="", help="SETTING:M1,M2 whose decodes are left out")
    args = ap.parse_args()

    cfg = yaml.safe_load((args.run / "results" / "config.effective.yaml").read_text())
    langs = cfg["languages"]
    found = systems(args.run, args.setting, langs, args.task)
    if not found:
        sys.exit(f"no score files of setting {args.setting!r} under {args.run}/results/scores")

    print(f"## CI half-width of the {args.setting} average ({args.task}) vs test-set size\n")
    print(f"Run: `{args.run}`; languages {' '.join(langs)}; k = test set size / the run's.\n")
    head = "| system | score | " + " | ".join(f"k = {k:g}" for k in args.factors) + " |"
    print(head)
    print("| --- | ---: | " + " | ".join("---:" for _ in args.factors) + " |")
    worst = dict.fromkeys(args.factors, 0.0)
    for name, files in sorted(found.items(), key=lambda kv: kv[0] != "Pretrained"):
        metric, items, _ = system_stats(files)
        cells = []
        for k in args.factors:
            point, hw = half_width(items, metric, k)
            if name != "Pretrained":  # zero-shot, looping to the token cap: not compared
                worst[k] = max(worst[k], hw)
            cells.append(f"{hw:.2f}")
        print(f"| {name} | {point:.2f} | " + " | ".join(cells) + " |")
    print(
        "| **largest but Pretrained** | | "
        + " | ".join(f"**{worst[k]:.2f}**" for k in args.factors)
        + " |"
    )
    need = [k for k in args.factors if worst[k] <= args.target]
    print(
        f"\nSmallest k of the grid with every half-width ≤ {args.target:g}: "
        + (f"{min(need):g}" if need else "none")
        + "\n"
    )

    # cost
    parallel = args.parallel or sum(map(sum, job_seconds(args.run).values())) / args.wall
    grow = dropped = 0.0
    drop_setting, _, drop_methods = args.drop.partition(":")
    drop = set(filter(None, drop_methods.split(",")))
    scores = args.run / "results" / "scores"
    for js in scores.rglob("*.json"):
        d = json.loads(js.read_text())
        rel = js.relative_to(scores).parts
        if rel[0] == "merged" and rel[1] == drop_setting and rel[2] in drop:
            dropped += d.get("seconds", 0.0)
        elif "seconds" in d and d.get("task") == args.task:
            grow += d["seconds"]
    print(
        f"Cost, from the run's wall ({args.wall:.0f} s) at {parallel:.2f} jobs at a time: "
        f"{args.task} test decodes {grow:.0f} s"
        + (f"; dropping {args.drop} saves {dropped:.0f} s of decodes" if drop else "")
        + ".\n"
    )
    print("| k | added job seconds | projected wall (min) |")
    print("| ---: | ---: | ---: |")
    for k in args.factors:
        added = (k - 1) * grow - dropped
        print(f"| {k:g} | {added:+.0f} | {(args.wall + added / parallel) / 60:.1f} |")


if __name__ == "__main__":
    main()
