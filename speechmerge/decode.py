"""Batched decoding with ``WhisperForConditionalGeneration.generate(language=..., task=...)``."""

from __future__ import annotations

import numpy as np

from .corpus import load_audio, read_tsv
from .model import TASK_NAMES
from .progress import Progress
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
    bar = Progress(len(audios), f"decode {lang}-{task}", unit="utt")
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
        bar.update(len(feats))
    bar.close()
    return out


def decode_tsv(model, processor, tsv, lang: str, task: str, **kw) -> tuple[list, list[str]]:
    """Decode every utterance of a corpus TSV; returns (rows, hypotheses)."""
    rows = read_tsv(tsv)
    audios = [load_audio(tsv, r) for r in rows]
    return rows, transcribe(model, processor, audios, lang, task, **kw)


def score_model(
    model_dir, jobs, decode_cfg: dict, device: str = "cpu", system: str = ""
) -> list[dict]:
    """Decode and score one model on several test sets.

    `jobs`: list of (lang, task, test_tsv, out_json). Each out_json gets the score (WER or
    BLEU, BLEU's signature), and a TSV twin ``*.hyp.tsv`` holds id, reference and hypothesis.
    Files are written atomically.
    """
    import json
    import time
    from pathlib import Path

    from .atomic import atomic_write_text
    from .hypotheses import write_hypotheses
    from .metrics import score
    from .model import load_pretrained
    from .train import FIELD

    model, processor = load_pretrained(str(model_dir), device=device)
    results = []
    for lang, task, tsv, out_json in jobs:
        t0 = time.time()
        rows, hyps = decode_tsv(
            model,
            processor,
            tsv,
            lang,
            task,
            beam_size=decode_cfg["beam_size"],
            batch_size=decode_cfg["batch_size"],
            max_new_tokens=decode_cfg["max_new_tokens"],
            device=device,
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
