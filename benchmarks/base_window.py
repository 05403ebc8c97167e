#!/usr/bin/env python
"""The cost of the truncated encoder window (a script that prints numbers, not a test).

    .venv/bin/python benchmarks/base_window.py RUN_DIR [--limit N] [--window 30]

Scores the zero-shot whisper-base at the full 30-s window (converted afresh from the
installed packages) and the run's base (`RUN_DIR/results/models/base`, the truncated window
the fine-tunes start from) on the first N utterances of every (language, task) test subset of
the run (`test.tsv`, or `test-{task}.tsv` when the tasks' test hours differ), with the run's decoding settings, and prints one Markdown table (WER % / BLEU), then
each task's average over the languages with its 95 % paired-bootstrap CI and the paired
difference between the two windows (:mod:`speechmerge.hypotheses`, as the workflow's tables).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import yaml

from speechmerge.convert import convert_ct2
from speechmerge.corpus import read_tsv, write_tsv
from speechmerge.decode import score_model
from speechmerge.hypotheses import files_ci, files_compare
from speechmerge.plan.params import test_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--window", type=int, default=30)
    a = ap.parse_args()
    res = a.run / "results"
    cfg_file = res / "config.effective.yaml"
    cfg = yaml.safe_load((cfg_file if cfg_file.exists() else a.run / "config.yaml").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="base-window-"))
    full = tmp / f"base-{a.window}s"
    convert_ct2(None, full, window_seconds=a.window)
    models = {f"{a.window} s window": full, "run's base": res / "models/base"}
    rows = {}

    def out(name: str, lang: str, task: str) -> Path:
        # one directory per model: the file stem is the test set's key, which pairs them
        return tmp / str(list(models).index(name)) / f"{lang}-{task}.json"

    splits = test_splits(cfg)  # one test set per language, or one per task
    for lang in cfg["languages"]:
        small = {}
        for split in dict.fromkeys(splits.values()):
            tsv = res / f"subsets/{lang}/{split}.tsv"
            head = [
                dataclasses.replace(r, audio=str((tsv.parent / r.audio).resolve()))
                for r in read_tsv(tsv)[: a.limit]
            ]
            small[split] = tmp / f"{lang}-{split}.tsv"
            write_tsv(head, small[split])
        for name, model in models.items():
            jobs = [(lang, t, str(small[splits[t]]), str(out(name, lang, t))) for t in cfg["tasks"]]
            for r in score_model(model, jobs, cfg["decode"]):
                rows.setdefault(name, {})[f"{lang}-{r['task']}"] = r["score"]
    cols = [f"{lang}-{t}" for lang in cfg["languages"] for t in cfg["tasks"]]
    print(f"first {a.limit} test utterances per language; WER % for asr, BLEU for st\n")
    print("| base | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for name, scores in rows.items():
        print(f"| {name} | " + " | ".join(f"{scores[c]:.1f}" for c in cols) + " |")
    names = list(models)
    print("\n| task | " + " | ".join(f"{n} (avg [95 % CI])" for n in names) + " | difference |")
    print("| --- |" + " --- |" * (len(names) + 1))
    for t in cfg["tasks"]:
        files = {n: [out(n, lang, t) for lang in cfg["languages"]] for n in names}
        cis = [files_ci(files[n]) for n in names]
        d = files_compare(files[names[0]], files[names[1]])
        cells = [f"{c['score']:.1f} [{c['ci_low']:.1f}, {c['ci_high']:.1f}]" for c in cis]
        diff = f"{d['delta']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}], {d['verdict']}"
        print(f"| {t} | " + " | ".join(cells) + f" | {names[0]} − {names[1]}: {diff} |")
    (tmp / "scores.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
