#!/usr/bin/env python
"""CPU cost table of a finished workflow run (a script that prints numbers, not a test).

    .venv/bin/python benchmarks/cpu_costs.py RUN_DIR [--wall SECONDS]

Reads the run's Snakemake benchmark files (`RUN_DIR/benchmarks/<stage>/…tsv`: wall seconds
of every job), the fine-tunes' summaries (`results/models/finetuned/*/` logs: optimiser steps,
examples) and the score JSONs (`seconds`, `utterances` per decoded test set), and prints
Markdown: seconds per fine-tune optimiser step and per example, seconds per decoded utterance
(by system kind), and how the jobs' time splits over the stages. Job seconds are summed over
jobs; with 2 jobs at a time the run's wall time (`--wall`, e.g. from `time snakemake`) is
about half their sum.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import yaml


def job_seconds(run: Path) -> dict[str, list[float]]:
    """{stage: [wall seconds of each job]} from benchmarks/<stage>/**.tsv."""
    out: dict[str, list[float]] = defaultdict(list)
    for tsv in sorted((run / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(run / "benchmarks").parts
        stage = f"score/{rel[1]}" if rel[0] == "score" and len(rel) > 2 else rel[0]
        with open(tsv) as f:
            for row in csv.DictReader(f, delimiter="\t"):
                out[stage].append(float(row["s"]))
    return out


def finetune_steps(run: Path) -> list[dict]:
    """The summaries the finetune jobs logged (steps, examples, seconds)."""
    rows = []
    for log in sorted((run / "logs" / "finetune").glob("*.log")):
        m = re.search(r"finetune (\S+): (\{.*\})", log.read_text())
        if m:
            rows.append({"model": m.group(1), **ast.literal_eval(m.group(2))})
    return rows


def decode_costs(run: Path) -> dict[str, tuple[float, int]]:
    """{system kind: (decode seconds, utterances)} summed over score JSONs."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for js in (run / "results" / "scores").rglob("*.json"):
        d = json.loads(js.read_text())
        if "seconds" not in d or "utterances" not in d:
            continue
        kind = js.relative_to(run / "results" / "scores").parts[0]
        out[kind][0] += d["seconds"]
        out[kind][1] += d["utterances"]
    return {k: (v[0], int(v[1])) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--wall", type=float, help="the run's wall time in seconds")
    a = ap.parse_args()
    ft = finetune_steps(a.run)
    if ft:
        steps = sum(r["steps"] for r in ft)
        secs = sum(r["seconds"] for r in ft)
        per_step = ""
        cfg_file = next(
            (
                p
                for p in (a.run / "results/config.effective.yaml", a.run / "config.yaml")
                if p.exists()
            ),
            None,
        )
        if cfg_file:
            hp = yaml.safe_load(cfg_file.read_text())["finetune"]
            per_step = f"{secs / (steps * hp['batch_size'] * hp['grad_accum']):.3f}"
        print("| fine-tune | models | optimiser steps | s / step | s / example |")
        print("| --- | ---: | ---: | ---: | ---: |")
        print(f"| all | {len(ft)} | {steps} | {secs / steps:.1f} | {per_step} |")
        print()
    dec = decode_costs(a.run)
    if dec:
        print("| decoding | utterances | s / utterance |")
        print("| --- | ---: | ---: |")
        for kind, (s, n) in sorted(dec.items()):
            print(f"| {kind} | {n} | {s / max(n, 1):.3f} |")
        print()
    jobs = job_seconds(a.run)
    total = sum(sum(v) for v in jobs.values())
    print("| stage | jobs | job seconds | share |")
    print("| --- | ---: | ---: | ---: |")
    for stage, secs in sorted(jobs.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {stage} | {len(secs)} | {sum(secs):.0f} | {100 * sum(secs) / total:.0f} % |")
    print(f"| all | {sum(map(len, jobs.values()))} | {total:.0f} | 100 % |")
    if a.wall:
        print(
            f"\nwall time {a.wall:.0f} s = {a.wall / 60:.1f} min "
            f"(job seconds / wall = {total / a.wall:.2f} jobs at a time)"
        )


if __name__ == "__main__":
    main()
