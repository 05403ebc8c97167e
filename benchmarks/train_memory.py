"""Memory of one whisper-small training step, measured on the CPU (fp32), to scale the GPU
estimates of docs/cluster.md ("GPU memory and time per stage") from a measurement instead of a guess.

A randomly initialised WhisperForConditionalGeneration with whisper-small's shape (244 M
parameters; no Hub here), SDPA attention, one thread, a fresh process per run:

* ``train:B``: one forward/backward/AdamW step on B 30 s utterances (log-mel 80 x 3000, 40
  label tokens). Peak RSS up to the end of the backward pass (weights, activations,
  gradients) and after the optimiser step (+ Adam state); two B give the activations per
  utterance.
* ``decode:B:BEAMS``: ``generate`` with beam search for 16 tokens; peak RSS against the
  cross-attention cache computed from the shapes (layers x K,V x B x beams x 1500 x 768).

Seconds are CPU seconds on one thread (meaningless for a GPU).

    python benchmarks/train_memory.py train:1 train:4 decode:1:20 decode:2:20   # ~10 min
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_bench import WHISPER_SMALL


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build():
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = WhisperConfig(**WHISPER_SMALL, attn_implementation="sdpa")
    return torch, WhisperForConditionalGeneration(config)


def train_step(batch: int) -> dict:
    torch, model = build()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    feats = torch.randn(batch, 80, 3000)
    dec = torch.randint(0, 50000, (batch, 40))
    before = peak_rss_gb()
    t0 = time.time()
    out = model(input_features=feats, decoder_input_ids=dec, labels=dec, use_cache=False)
    out.loss.backward()
    backward = peak_rss_gb()
    opt.step()
    return {
        "train_batch": batch,
        "parameters_M": round(model.num_parameters() / 1e6, 1),
        "rss_before_gb": round(before, 2),  # weights + libraries
        "peak_to_backward_gb": round(backward, 2),  # + activations, gradients
        "peak_gb": round(peak_rss_gb(), 2),  # + Adam state
        "cpu_seconds": round(time.time() - t0, 1),
    }


def decode(batch: int, beams: int, tokens: int = 16) -> dict:
    """`generate` with beam search for exactly `tokens` new tokens (random weights would
    otherwise run to the limit)."""
    torch, model = build()
    model.eval()
    feats = torch.randn(batch, 80, 3000)
    before = peak_rss_gb()
    t0 = time.time()
    with torch.inference_mode():
        model.generate(
            input_features=feats,
            num_beams=beams,
            do_sample=False,
            min_new_tokens=tokens,
            max_new_tokens=tokens,
        )
    cross = 2 * model.config.decoder_layers * batch * beams * 1500 * model.config.d_model * 4
    return {
        "decode_batch": batch,
        "beams": beams,
        "rss_before_gb": round(before, 2),
        "peak_gb": round(peak_rss_gb(), 2),
        "cross_attention_cache_gb_from_shapes": round(cross / 2**30, 2),
        "cpu_seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        kind, *args = sys.argv[2:]
        result = train_step(*map(int, args)) if kind == "train" else decode(*map(int, args))
        print(json.dumps(result))
        return
    runs = [a.split(":") for a in sys.argv[1:]] or [["train", "1"], ["train", "4"]]
    for run in runs:
        res = subprocess.run(
            [sys.executable, __file__, "--one", *run], capture_output=True, text=True, check=True
        )
        print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
