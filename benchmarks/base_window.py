#!/usr/bin/env python
"""The cost of the truncated encoder window (a script that prints numbers, not a test).

    .venv/bin/python benchmarks/base_window.py RUN_DIR [--limit N] [--window 30]

Scores the zero-shot whisper-base at the full 30-s window (converted afresh from the
installed packages) and the run's base (`RUN_DIR/results/models/base`, the truncated window
the fine-tunes start from) on the first N utterances of every (language, task) test subset of
the run, with the run's decoding settings, and prints one Markdown table (WER % / BLEU).
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
    for lang in cfg["languages"]:
        tsv = res / f"subsets/{lang}/test.tsv"
        head = [
            dataclasses.replace(r, audio=str((tsv.parent / r.audio).resolve()))
            for r in read_tsv(tsv)[: a.limit]
        ]
        small = tmp / f"{lang}-test.tsv"
        write_tsv(head, small)
        for name, model in models.items():
            jobs = [
                (lang, t, str(small), str(tmp / f"{name}-{lang}-{t}.json")) for t in cfg["tasks"]
            ]
            for r in score_model(model, jobs, cfg["decode"]):
                rows.setdefault(name, {})[f"{lang}-{r['task']}"] = r["score"]
    cols = [f"{lang}-{t}" for lang in cfg["languages"] for t in cfg["tasks"]]
    print(f"first {a.limit} test utterances per language; WER % for asr, BLEU for st\n")
    print("| base | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for name, scores in rows.items():
        print(f"| {name} | " + " | ".join(f"{scores[c]:.1f}" for c in cols) + " |")
    (tmp / "scores.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
