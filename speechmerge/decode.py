"""Batched decoding with ``WhisperForConditionalGeneration.generate(language=..., task=...)``."""

from __future__ import annotations

import numpy as np

from .corpus import load_audio, read_tsv
from .model import TASK_NAMES
from .train import extract_features


def transcribe(
    model,
    processor,
    audios: list[np.ndarray],
    lang: str,
    task: str,
    *,
    beam_size: int = 1,
    batch_size: int = 16,
    max_new_tokens: int = 40,
    device: str = "cpu",
) -> list[str]:
    """Greedy (beam_size 1) or beam search, in batches, exactly as for whisper-small."""
    import torch

    model.to(device).eval()
    out: list[str] = []
    for i in range(0, len(audios), batch_size):
        feats = torch.from_numpy(extract_features(processor, audios[i : i + batch_size])).to(device)
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
    return out


def decode_tsv(model, processor, tsv, lang: str, task: str, **kw) -> tuple[list, list[str]]:
    """Decode every utterance of a corpus TSV; returns (rows, hypotheses)."""
    rows = read_tsv(tsv)
    audios = [load_audio(tsv, r) for r in rows]
    return rows, transcribe(model, processor, audios, lang, task, **kw)
