#!/usr/bin/env python
"""Does the randomized SVD change a merged model's dev score? (a script that prints numbers)

    .venv/bin/python benchmarks/svd_dev_effect.py RUN_DIR [--settings ml-asr ml-st] [--method lors]

For each setting, re-merges the run's merge (``RUN_DIR/results/merged/{setting}/{method}``:
its task vectors, λ and per-τ parameters from ``merge.json``) twice with the current code —
the default SVD path (``exact`` unset: randomized when ``r <= min(d, k) / 4``) and
``exact: true`` — scores both on the DEV subsets of the setting's (language, task) pairs with
the run's decoding settings, and prints per setting the dev average of each and the paired
bootstrap of the difference (default − exact, 95 % CI). Dev, never test: this informs a
default, it is not a result.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from speechmerge.decode import score_model
from speechmerge.hypotheses import files_ci, files_compare
from speechmerge.merge import merge_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--settings", nargs="+", default=["ml-asr", "ml-st"])
    ap.add_argument("--method", default="lors")
    a = ap.parse_args()
    res = a.run / "results"
    cfg_file = res / "config.effective.yaml"
    cfg = yaml.safe_load((cfg_file if cfg_file.exists() else a.run / "config.yaml").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="svd-dev-"))
    print(
        "| setting | metric | default (randomized) | exact | default − exact [95 % CI] | verdict |"
    )
    print("|---|---|---|---|---|---|")
    for setting in a.settings:
        record = json.loads((res / "merged" / setting / a.method / "merge.json").read_text())
        tvs = [a.run / tv["path"] for tv in record["taskvectors"]]
        pairs = [Path(tv["path"]).stem.split("-") for tv in record["taskvectors"]]
        files = {}
        for variant, extra in [("default", {}), ("exact", {"exact": True})]:
            params = [{**tv["params"], **extra} for tv in record["taskvectors"]]
            out = tmp / setting / variant
            merge_models(
                a.run / record["base"], tvs, a.method, lam=record["lambda"], params=params,
                out_dir=out, progress=False,
            )  # fmt: skip
            # one folder per variant: the score files' names are the test-set keys the
            # paired bootstrap matches up
            scores = tmp / f"{setting}-{variant}"
            scores.mkdir(parents=True)
            jobs = [
                (lang, task, res / f"subsets/{lang}/dev.tsv", scores / f"{lang}-{task}.json")
                for lang, task in pairs
            ]
            score_model(out, jobs, cfg["decode"], device="cpu", system=f"{setting}/{variant}")
            files[variant] = [j[3] for j in jobs]
        ci = {v: files_ci(f) for v, f in files.items()}
        d = files_compare(files["default"], files["exact"])
        metric = "WER" if pairs[0][1] == "asr" else "BLEU"
        print(
            f"| {setting} | {metric} | {ci['default']['score']:.2f} | {ci['exact']['score']:.2f} "
            f"| {d['delta']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] | {d['verdict']} |"
        )


if __name__ == "__main__":
    main()
