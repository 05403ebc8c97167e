#!/usr/bin/env python
"""How much of a CTranslate2 greedy decode is the encoder (prints numbers; not a test).

    .venv/bin/python benchmarks/encoder_share.py MODEL_DIR TEST_TSV --lang de --task asr \\
        [--n 48] [--threads 1] [--config config.yaml]

Loads MODEL_DIR as the workflow's score jobs do (``decode`` section of --config: backend,
compute type), computes the log-mel features of the first --n utterances of TEST_TSV, then
times one batch through the encoder alone and one through ``generate`` (encoder + greedy
decoder) at the config's ``max_new_tokens`` and at smaller caps. Seconds per utterance, and
the mean and longest output in tokens.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from speechmerge.corpus import read_tsv
from speechmerge.decode import AudioDataset, Ct2Whisper, extract_features, load_decoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("test", type=Path)
    ap.add_argument("--lang", required=True)
    ap.add_argument("--task", default="asr")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", type=Path, default=Path("config.yaml"))
    a = ap.parse_args()
    cfg = yaml.safe_load(a.config.read_text())["decode"]
    model, processor = load_decoder(a.model, cfg, "cpu", a.threads)
    if not isinstance(model, Ct2Whisper):
        raise SystemExit(f"{a.config}: decode.backend must be ct2 for this benchmark")
    rows = read_tsv(a.test)[: a.n]
    dataset = AudioDataset(tsv=a.test, rows=rows)
    feats = extract_features(processor, [dataset[i] for i in range(len(rows))])
    view = model._storage_view.from_array(np.ascontiguousarray(feats, dtype=np.float32))
    t0 = time.perf_counter()
    model.model.encode(view)
    enc = (time.perf_counter() - t0) / len(rows)
    print(f"{len(rows)} utterances of {a.test}, {a.threads} thread(s)\n")
    print("| step | max new tokens | s / utterance | tokens (mean / max) |")
    print("| --- | ---: | ---: | --- |")
    print(f"| encoder | – | {enc:.3f} | – |")
    cap = cfg["max_new_tokens"]
    for tokens in dict.fromkeys([cap, max(1, cap * 3 // 4), max(1, cap // 2)]):
        t0 = time.perf_counter()
        ids = model.generate(feats, a.lang, a.task, max_new_tokens=tokens)
        s = (time.perf_counter() - t0) / len(rows)
        lengths = [len(i) for i in ids]
        print(f"| generate | {tokens} | {s:.3f} | {np.mean(lengths):.1f} / {max(lengths)} |")


if __name__ == "__main__":
    main()
