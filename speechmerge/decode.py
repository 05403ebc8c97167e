"""Batched decoding with ``WhisperForConditionalGeneration.generate(language=..., task=...)``."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .corpus import Utterance, load_audio, read_tsv
from .hypotheses import write_hypotheses
from .io.atomic import atomic_write_text
from .metrics import score
from .model import TASK_NAMES, configure_cuda, decode_dtype, load_pretrained
from .progress import Progress
from .train import FIELD, data_worker_init, extract_features


class AudioDataset:
    """Map-style dataset of utterances' audio: arrays as given, or read from a corpus TSV's
    rows when asked for (so a test set is never held in memory whole)."""

    def __init__(self, audios: list[np.ndarray] | None = None, tsv=None, rows=None):
        self.audios, self.tsv, self.rows = audios, tsv, rows

    def __len__(self) -> int:
        return len(self.audios) if self.audios is not None else len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.audios is not None:
            return self.audios[i]
        return load_audio(self.tsv, self.rows[i])


def _batch_features(processor, audios: list[np.ndarray]):
    return torch.from_numpy(extract_features(processor, audios))


def transcribe(
    model,
    processor,
    audios: list[np.ndarray] | AudioDataset,
    lang: str,
    task: str,
    *,
    beam_size: int = 1,
    batch_size: int = 16,
    max_new_tokens: int = 40,
    device: str = "cpu",
    workers: int = 0,
) -> list[str]:
    """Greedy (beam_size 1) or beam search, in batches, exactly as for whisper-small.

    Features are computed per batch by a DataLoader (`workers` processes, 0: this one), in
    the model's dtype (see :func:`decode_dtype`)."""

    dataset = audios if isinstance(audios, AudioDataset) else AudioDataset(audios)
    model.to(device).eval()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=partial(_batch_features, processor),
        worker_init_fn=data_worker_init if workers else None,
    )
    out: list[str] = []
    bar = Progress(len(dataset), f"decode {lang}-{task}", unit="utt")
    for feats in loader:
        feats = feats.to(device, dtype=model.dtype)
        with torch.inference_mode():
            ids = model.generate(
                input_features=feats,
                language=lang,
                task=TASK_NAMES[task],
                num_beams=beam_size,
                do_sample=False,
                max_new_tokens=max_new_tokens,
            )
        out.extend(t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True))
        bar.update(len(feats))
    bar.close()
    return out


def decode_tsv(
    model, processor, tsv, lang: str, task: str, **kw
) -> tuple[list[Utterance], list[str]]:
    """Decode every utterance of a corpus TSV (audio read per batch); returns (rows,
    hypotheses)."""
    rows = read_tsv(tsv)
    return rows, transcribe(model, processor, AudioDataset(tsv=tsv, rows=rows), lang, task, **kw)


def score_model(
    model_dir, jobs, decode_cfg: dict, device: str = "cpu", system: str = ""
) -> list[dict]:
    """Decode and score one model on several test sets.

    `jobs`: list of (lang, task, test_tsv, out_json). Each out_json gets the score (WER or
    BLEU, BLEU's signature), and a TSV twin ``*.hyp.tsv`` holds id, reference and hypothesis.
    Files are written atomically.
    """

    model, processor = load_pretrained(str(model_dir), device=device)
    if decode_dtype(device) is not None:
        configure_cuda(device)
        model.to(decode_dtype(device))
    results = []
    for lang, task, tsv, out_json in jobs:
        t0 = time.time()
        rows, hyps = decode_tsv(
            model,
            processor,
            tsv,
            lang,
            task,
            device=device,
            **{k: decode_cfg[k] for k in ("beam_size", "batch_size", "max_new_tokens")},
        )
        refs = [getattr(r, FIELD[task]) for r in rows]
        result = {
            "system": system,
            "model": str(model_dir),
            "lang": lang,
            "task": task,
            "test_set": str(tsv),
            "utterances": len(rows),
            "beam_size": decode_cfg["beam_size"],
            **score(task, refs, hyps, key=f"{lang}-{task}"),
            "seconds": round(time.time() - t0, 2),
        }
        out_json = Path(out_json)
        write_hypotheses(out_json, [r.id for r in rows], refs, hyps)
        atomic_write_text(out_json, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        results.append(result)
    return results
