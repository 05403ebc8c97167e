#!/usr/bin/env python
"""Probe the synthetic base's pre-training settings (a script, not a test).

Pre-trains a synthetic base exactly as the ``base`` rule does (``pretrain_synthetic_base``),
with the ``base.synthetic`` section of a config plus overrides, on the corpus of an earlier
run, then prints its greedy ASR WER on the first 100 utterances of each language's *dev*
subset (never test) and the final training loss, as one JSON line. Used to choose the
default preset's base languages (docs/tiny-model-runs.md):

    PYTHONPATH=. .venv/bin/python benchmarks/base_probe.py RUN_DIR/results /tmp/probe-10 \\
        --set train.steps=800
    PYTHONPATH=. .venv/bin/python benchmarks/base_probe.py RUN_DIR/results /tmp/probe-5 \\
        --set train.steps=800 --set 'languages=["ca","de","es","fr","it"]'

RUN_DIR must hold ``results/corpus/{lang}`` for every pre-training language and
``results/subsets/{lang}/dev.tsv`` for the languages scored (``--score``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="results/ folder of an earlier run")
    ap.add_argument("out", type=Path, help="where the probe base is written")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override in base.synthetic, e.g. train.steps=800 or languages='[\"de\"]'",
    )
    ap.add_argument("--score", nargs="*", default=["de", "fr", "it"], help="dev sets scored")
    ap.add_argument("--dev-utterances", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (two probes at once)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    import torch
    import yaml

    from speechmerge.corpus import load_audio, read_tsv
    from speechmerge.decode import transcribe
    from speechmerge.metrics import score
    from speechmerge.model import load_pretrained
    from speechmerge.train import pretrain_synthetic_base

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = yaml.safe_load(Path(args.config).read_text())["base"]["synthetic"]
    for item in args.set:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        if last not in node:
            raise SystemExit(f"--set {key}: no such key in base.synthetic")
        node[last] = json.loads(value)
    corpus = {lang: str(args.results / "corpus" / lang) for lang in cfg["languages"]}
    t0 = time.time()
    summary = pretrain_synthetic_base(corpus, cfg, args.out, seed=args.seed)
    model, processor = load_pretrained(str(args.out))
    result = {"set": args.set, "loss": summary["loss"], "train_s": round(time.time() - t0, 1)}
    for lang in args.score:
        tsv = args.results / "subsets" / lang / "dev.tsv"
        rows = read_tsv(tsv)[: args.dev_utterances]
        audios = [load_audio(tsv, r) for r in rows]
        hyps = transcribe(model, processor, audios, lang, "asr", batch_size=50)
        result[f"{lang}-dev-wer"] = round(
            score("asr", [r.sentence for r in rows], hyps)["score"], 2
        )
    print(json.dumps(result), flush=True)
    (args.out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
