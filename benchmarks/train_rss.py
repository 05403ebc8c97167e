"""Peak RSS of one fine-tune at 1x and 4x the training audio: features are streamed per batch
(speechmerge.train), so memory must not grow with the training set (issue 15: <= 20 %).

Synthesises one language of the embedded benchmark (eSpeak NG numbers, config.yaml's target
domain) with 4N training utterances, builds a tiny Whisper-architecture base with Whisper's
30-s input window (log-mel 80 x 3000 per utterance, ~0.94 MiB in float32: what the old
preloading held per utterance), then runs ``speechmerge.train.finetune`` (batch 8, one
epoch) on the first N and on all 4N utterances, each in a fresh subprocess, and reads that
subprocess's peak RSS with ``getrusage(RUSAGE_CHILDREN)`` (one measuring process per run,
so the two peaks are not mixed up; DataLoader workers, if any, are counted too).
``--preload`` repeats it with every feature computed before training (the old behaviour)
for comparison.

    python benchmarks/train_rss.py --utterances 200 [--preload] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HP = {"lr": 1e-4, "batch_size": 8, "grad_accum": 1, "epochs": 1}
ARCH = {
    "num_mel_bins": 80,
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "attention_heads": 2,
    "ffn_dim": 64,
    "max_target_positions": 96,
}


def prepare(root: Path, n: int, seed: int = 0) -> None:
    """`root`/corpus (4n train utterances), `root`/train-1x.tsv (the first n),
    `root`/train-4x.tsv, `root`/base."""
    import yaml

    from speechmerge.corpus import read_tsv, synthesize_language, write_tsv
    from speechmerge.model import build_synthetic_base, build_tokenizer, save_model_dir

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["corpus"]["synthetic"]
    cfg = {**cfg, "utterances": {"base": 0, "train": 4 * n, "dev": 2, "test": 2}}
    if not (root / "corpus" / "train.tsv").exists():
        synthesize_language("ca", root / "corpus", cfg, seed, progress=False)
    rows = read_tsv(root / "corpus" / "train.tsv")
    for name, part in (("1x", rows[:n]), ("4x", rows)):
        moved = [  # audio paths relative to the new TSV
            type(r)(r.id, f"corpus/{r.audio}", r.duration, r.sentence, r.translation) for r in part
        ]
        write_tsv(moved, root / f"train-{name}.tsv")
    if not (root / "base").exists():
        tok = build_tokenizer([t for r in rows for t in (r.sentence, r.translation)], ["ca"], 300)
        model, processor = build_synthetic_base(tok, ARCH, chunk_seconds=30, seed=seed)
        save_model_dir(model, processor, root / "base")


def child(root: Path, scale: str, preload: bool, workers: int) -> None:
    """One fine-tune (in this process)."""
    import torch

    import speechmerge.train as smtrain

    torch.set_num_threads(1)
    if preload:  # the old behaviour: every utterance's features computed before training
        load = smtrain.load_examples

        def load_examples(processor, sources, progress=True):
            examples = load(processor, sources, progress)
            for e in examples:
                e.features = smtrain.example_features(processor, e)
            return examples

        smtrain.load_examples = load_examples
    out = Path(tempfile.mkdtemp(prefix="ft-", dir=root)) / "ca-asr"
    summary = smtrain.finetune(
        root / "base",
        root / f"train-{scale}.tsv",
        "ca",
        "asr",
        HP,
        out,
        seed=0,
        runtime={"checkpoint_every_minutes": 0, "data_workers": workers},
    )
    print(json.dumps(summary))


def measure(root: Path, scale: str, preload: bool, workers: int) -> None:
    """Run the fine-tune in a subprocess; print its peak RSS (MiB) and summary."""
    cmd = [sys.executable, __file__, "--root", str(root), "--child", scale]
    cmd += ["--workers", str(workers)] + (["--preload"] if preload else [])
    t0 = time.time()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=REPO)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"peak_rss_mib": round(peak, 1), "wall_s": round(time.time() - t0, 1), **summary}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utterances", type=int, default=200, help="N: training utterances at 1x")
    ap.add_argument("--root", type=Path, help="work folder (default: a new temporary one)")
    ap.add_argument("--preload", action="store_true", help="precompute all features (old way)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--child", choices=["1x", "4x"], help=argparse.SUPPRESS)
    ap.add_argument("--measure", choices=["1x", "4x"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.root, a.child, a.preload, a.workers)
    if a.measure:
        return measure(a.root, a.measure, a.preload, a.workers)
    root = a.root or Path(tempfile.mkdtemp(prefix="train-rss-"))
    root.mkdir(parents=True, exist_ok=True)
    prepare(root, a.utterances)
    results = {}
    for scale in ("1x", "4x"):  # one measuring process per run: RUSAGE_CHILDREN is a maximum
        cmd = [sys.executable, __file__, "--root", str(root), "--measure", scale]
        cmd += ["--workers", str(a.workers)] + (["--preload"] if a.preload else [])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=REPO)
        results[scale] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[scale]
        print(
            f"{scale}: {r['examples']} utterances, {r['steps']} steps, peak RSS "
            f"{r['peak_rss_mib']:.0f} MiB, {r['wall_s']:.0f} s",
            flush=True,
        )
    ratio = results["4x"]["peak_rss_mib"] / results["1x"]["peak_rss_mib"]
    mode = "preloaded features" if a.preload else f"streamed features, {a.workers} workers"
    print(f"peak RSS 4x / 1x = {ratio:.3f} ({mode}; bar: <= 1.20)")


if __name__ == "__main__":
    main()
