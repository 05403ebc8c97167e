"""Scores: WER (jiwer) after a documented normaliser, corpus BLEU (sacrebleu) with signature.

WER normaliser (:func:`normalize`), applied to references and hypotheses alike, the same as
Whisper's ``BasicTextNormalizer`` for non-English text: Unicode NFKC, lower case, text in
brackets/parentheses dropped, every punctuation mark and symbol (Unicode categories M, S, P)
replaced by a space, white space collapsed. So ``vint-i-un`` counts as three words and
``four thousand, three hundred`` as four.

BLEU is sacrebleu's corpus BLEU on the raw (un-normalised) text with its default 13a
tokeniser, as the paper (section 4.2); its signature is saved next to the score.
"""

from __future__ import annotations

import re
import unicodedata


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[<\[][^>\]]*[>\]]", "", text)
    text = re.sub(r"\(([^)]+?)\)", "", text)
    text = "".join(" " if unicodedata.category(c)[0] in "MSP" else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER in percent (total edits / total reference words) after :func:`normalize`."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r]
    if not keep:
        raise ValueError("every reference is empty after normalisation")
    return 100.0 * jiwer.wer([refs[i] for i in keep], [hyps[i] for i in keep])


def bleu(references: list[str], hypotheses: list[str]) -> tuple[float, str]:
    """Corpus BLEU (0-100) and sacrebleu's signature string."""
    from sacrebleu.metrics import BLEU

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    metric = BLEU()
    score = metric.corpus_score(hypotheses, [references])
    return float(score.score), str(metric.get_signature())


def score(task: str, references: list[str], hypotheses: list[str]) -> dict:
    """{'metric': 'wer'|'bleu', 'score': float, ...} for one (language, task) test set."""
    if task == "asr":
        return {
            "metric": "wer",
            "score": wer(references, hypotheses),
            "normalizer": "speechmerge.metrics.normalize",
        }
    if task == "st":
        value, sig = bleu(references, hypotheses)
        return {"metric": "bleu", "score": value, "signature": sig}
    raise ValueError(f"unknown task {task!r} (expected 'asr' or 'st')")
