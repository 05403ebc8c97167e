#!/usr/bin/env python
"""Decoding speed and scores of the decode backends (a script that prints numbers, not a test).

    .venv/bin/python benchmarks/decode_backends.py MODEL_DIR... --test TSV... \\
        [--beam N] [--threads 2] [--limit N] [--config config.yaml] [--out FILE]

Each MODEL_DIR is a Hugging Face Whisper dir named LANG-TASK, as the workflow's fine-tunes
(`results/models/finetuned/de-asr`), or given as DIR=LANG-TASK; each TSV is a test subset in
the workflow's format (`results/subsets/de/test.tsv`, or `test-asr.tsv` / `test-st.tsv`: the
language is its folder's name), or
LANG=TSV. Every model is decoded on its language's test set (the first --limit utterances) by
transformers' `generate` (backend hf) and by CTranslate2 (backend ct2) in each --compute-types
(default float32 and int8; the model is exported once, in float32, and quantized at load), at
beam 1 and at beam --beam (default: the config's beam_size), all on --threads threads (torch's
and CTranslate2's intra-op threads), from the same log-mel features (the HF feature extractor's,
computed per batch inside the timed decode, as in a scoring job) with the config's batch_size
and max_new_tokens. The audio is read before timing; each backend decodes two utterances
untimed first (warm-up).

Prints Markdown: a summary per (backend, compute type, beam) over all models (utterances,
seconds, utterances/s, mean WER % over the ASR tests, mean BLEU over the ST tests, the
paired-bootstrap difference to hf at the same beam with its 95% CI, the share of hypotheses
identical to hf's), the one-off costs per model (HF load; CT2 export and load,
which a ct2 scoring job pays once per model), and the detail per model. --out FILE writes the
same text there and every measurement to FILE's .json twin.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from speechmerge.corpus import load_audio, read_tsv
from speechmerge.decode import Ct2Whisper, export_for_decoding, transcribe
from speechmerge.metrics import compare, score, utterance_stats
from speechmerge.model import load_pretrained
from speechmerge.train import FIELD

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("asr", "st")


def parse_models(items: list[str]) -> list[tuple[Path, str, str]]:
    """(dir, lang, task) per MODEL_DIR or DIR=LANG-TASK."""
    out = []
    for item in items:
        path, _, name = item.partition("=")
        name = name or Path(path).name
        lang, _, task = name.rpartition("-")
        if not lang or task not in TASKS:
            sys.exit(f"{item}: name the model LANG-TASK (task asr or st), e.g. {path}=de-asr")
        out.append((Path(path), lang, task))
    return out


def parse_tests(items: list[str]) -> dict[str, Path]:
    """{lang: TSV} from TSV (language = its folder's name) or LANG=TSV."""
    out = {}
    for item in items:
        lang, _, path = item.rpartition("=")
        out[lang or Path(path).parent.name] = Path(path)
    return out


def timed(model, processor, audios, lang, task, beam, decode, device) -> tuple[float, list[str]]:
    kw = {"batch_size": decode["batch_size"], "max_new_tokens": decode["max_new_tokens"]}
    t0 = time.perf_counter()
    hyps = transcribe(model, processor, audios, lang, task, beam_size=beam, device=device, **kw)
    return time.perf_counter() - t0, hyps


def bench_model(model_dir, lang, task, tsv, a, decode, beams, tmp) -> tuple[list[dict], dict]:
    """Every (backend, compute type, beam) on one model and test set: (rows, one-off costs)."""
    utts = read_tsv(tsv)[: a.limit] if a.limit else read_tsv(tsv)
    audios = [load_audio(tsv, r) for r in utts]
    refs = [getattr(r, FIELD[task]) for r in utts]
    name = f"{model_dir.name} on {lang}-{task}"
    rows, costs, hf_hyps = [], {}, {}

    def record(backend, compute_type, beam, seconds, hyps):
        result = score(task, refs, hyps, key=f"{lang}-{task}")
        same = None if backend == "hf" else hf_hyps.get(beam)
        rows.append(
            {
                "model": str(model_dir),
                "test": f"{lang}-{task}",
                "backend": backend,
                "compute_type": compute_type,
                "beam": beam,
                "utterances": len(hyps),
                "seconds": round(seconds, 3),
                "utt_per_s": round(len(hyps) / seconds, 3),
                "metric": result["metric"],
                "score": result["score"],
                "ci": [result["ci_low"], result["ci_high"]],
                "same_as_hf": None if same is None else sum(map(str.__eq__, same, hyps)),
                "_stats": utterance_stats(result["metric"], refs, hyps),
            }
        )
        print(f"  {name}: {backend} {compute_type} beam {beam}: {seconds:.1f} s", file=sys.stderr)

    t0 = time.perf_counter()
    hf, processor = load_pretrained(str(model_dir))
    costs["hf_load_s"] = time.perf_counter() - t0
    hf.to(a.device).eval()
    timed(hf, processor, audios[:2], lang, task, 1, decode, a.device)  # warm-up
    for beam in beams:
        seconds, hf_hyps[beam] = timed(hf, processor, audios, lang, task, beam, decode, a.device)
        record("hf", str(hf.dtype).removeprefix("torch."), beam, seconds, hf_hyps[beam])
    del hf
    gc.collect()

    export = tmp / model_dir.name
    t0 = time.perf_counter()
    export_for_decoding(model_dir, export)
    costs["ct2_export_s"] = time.perf_counter() - t0
    for compute_type in a.compute_types:
        t0 = time.perf_counter()
        ct2 = Ct2Whisper(
            model_dir, compute_type=compute_type, device=a.device, threads=a.threads, ct2_dir=export
        )
        costs[f"ct2_load_{compute_type}_s"] = time.perf_counter() - t0
        timed(ct2, processor, audios[:2], lang, task, 1, decode, a.device)  # warm-up
        for beam in beams:
            seconds, hyps = timed(ct2, processor, audios, lang, task, beam, decode, a.device)
            record("ct2", compute_type, beam, seconds, hyps)
        del ct2
        gc.collect()
    return rows, costs


def summary(rows: list[dict]) -> list[dict]:
    """Per (backend, compute type, beam): totals, utterances/s, mean WER and BLEU, and the
    paired-bootstrap difference to hf at the same beam on the same utterances (per metric,
    over the test sets; None for hf itself)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["compute_type"], r["beam"]), []).append(r)
    out = []
    for (backend, compute_type, beam), rs in groups.items():
        n, s = sum(r["utterances"] for r in rs), sum(r["seconds"] for r in rs)
        same = [r["same_as_hf"] for r in rs]
        entry = {
            "backend": backend,
            "compute_type": compute_type,
            "beam": beam,
            "utterances": n,
            "seconds": s,
            "utt_per_s": n / s,
            "same_as_hf": None if None in same else sum(same) / n,
        }
        for metric in ("wer", "bleu"):
            mine = {(r["model"], r["test"]): r for r in rs if r["metric"] == metric}
            entry[metric] = statistics.mean(r["score"] for r in mine.values()) if mine else None
            entry[f"{metric}_vs_hf"] = None
            hf = {
                (r["model"], r["test"]): r
                for r in rows
                if r["backend"] == "hf" and r["beam"] == beam and r["metric"] == metric
            }
            if mine and backend != "hf" and hf.keys() == mine.keys():
                entry[f"{metric}_vs_hf"] = compare(
                    metric,
                    {f"{m} {t}": r["_stats"] for (m, t), r in mine.items()},
                    {f"{m} {t}": r["_stats"] for (m, t), r in hf.items()},
                )
        out.append(entry)
    return out


def delta(cmp: dict | None) -> str:
    if cmp is None:
        return "–"
    return f"{cmp['delta']:+.2f} [{cmp['ci_low']:+.2f}, {cmp['ci_high']:+.2f}]"


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def report(rows: list[dict], costs: list[dict], a, decode: dict) -> str:
    lines = [
        f"decode backends: {len(costs)} model(s), {a.threads} thread(s), device {a.device}, "
        f"batch_size {decode['batch_size']}, max_new_tokens {decode['max_new_tokens']}"
        + (f", first {a.limit} utterances per test set" if a.limit else ""),
        "",
        (
            "| backend | compute type | beam | utterances | seconds | utt/s | WER % | BLEU "
            "| ΔWER vs hf [95% CI] | ΔBLEU vs hf [95% CI] | hyps = hf |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary(rows):
        lines.append(
            f"| {s['backend']} | {s['compute_type']} | {s['beam']} | {s['utterances']} | "
            f"{s['seconds']:.2f} | {s['utt_per_s']:.2f} | {fmt(s['wer'], '.2f')} | "
            f"{fmt(s['bleu'], '.2f')} | {delta(s['wer_vs_hf'])} | {delta(s['bleu_vs_hf'])} | "
            f"{fmt(s['same_as_hf'], '.1%')} |"
        )
    lines += ["", "One-off costs per model (mean seconds):", ""]
    for key in costs[0]:
        lines.append(f"* {key.removesuffix('_s')}: {statistics.mean(c[key] for c in costs):.1f}")
    lines += [
        "",
        "| model | test | backend | compute type | beam | utterances | seconds | utt/s | score |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {Path(r['model']).name} | {r['test']} | {r['backend']} | {r['compute_type']} | "
            f"{r['beam']} | {r['utterances']} | {r['seconds']:.2f} | {r['utt_per_s']:.2f} | "
            f"{r['metric'].upper()} {r['score']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model dirs named LANG-TASK, or DIR=LANG-TASK")
    ap.add_argument("--test", nargs="+", required=True, help="test TSVs (lang = folder name)")
    ap.add_argument("--config", type=Path, default=ROOT / "config.yaml", help="its decode:")
    ap.add_argument("--beam", type=int, help="the beam besides 1 (default: the config's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N utterances per test (0: all)")
    ap.add_argument(
        "--compute-types", default="float32,int8", help="CTranslate2's, comma-separated"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="also write the table here (and a .json twin)")
    a = ap.parse_args(argv)
    a.compute_types = a.compute_types.split(",")
    decode = yaml.safe_load(a.config.read_text())["decode"]
    beams = sorted({1, a.beam or decode["beam_size"]})
    tests = parse_tests(a.test)
    torch.set_num_threads(a.threads)
    rows, costs = [], []
    with tempfile.TemporaryDirectory(prefix="decode-backends-") as tmp:
        for model_dir, lang, task in parse_models(a.models):
            if lang not in tests:
                sys.exit(f"{model_dir}: no test TSV for language {lang} (--test)")
            r, c = bench_model(model_dir, lang, task, tests[lang], a, decode, beams, Path(tmp))
            rows += r
            costs.append(c)
    text = report(rows, costs, a, decode)
    print(text, end="")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        summ = summary(rows)
        a.out.with_suffix(".json").write_text(
            json.dumps({"summary": summ, "rows": public, "costs": costs}, indent=2) + "\n"
        )
    return rows


if __name__ == "__main__":
    main()
