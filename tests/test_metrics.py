"""Tests for speechmerge.metrics (WER after Whisper's basic normaliser, corpus BLEU)."""

from __future__ import annotations

import jiwer
import pytest

from speechmerge.metrics import bleu, normalize, score, wer


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Vint-i-un", "vint i un"),
        ("four thousand, three hundred", "four thousand three hundred"),
        ("  Quatre-cents   vint\tI  un. ", "quatre cents vint i un"),
        ("ＦＵＮＦ", "funf"),  # NFKC folds full-width forms
        ("ﬁve", "five"),  # NFKC expands ligatures
        ("Fünfhundert", "fünfhundert"),  # letters with diacritics are kept
        ("Fu\u0308nf", "fünf"),  # ... and composed (NFKC) from combining marks
        ("ЧЕТЫРЕ", "четыре"),
        ("one [noise] two (um) three <unk>", "one two three"),
        ("l'onze", "l onze"),
        ("", ""),
        ("?!", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_normalize_is_idempotent():
    for text in ["Vint-i-un", "four thousand, three hundred", "Ｆｉｖｅ (x)"]:
        assert normalize(normalize(text)) == normalize(text)


def test_wer_matches_jiwer_on_normalized_text():
    refs = ["Vint-i-un", "four thousand, three hundred", "Fünfhundert und eins"]
    hyps = ["vint i u", "four thousand three", "fünfhundert eins und zwei"]
    expected = 100 * jiwer.wer([normalize(r) for r in refs], [normalize(h) for h in hyps])
    assert wer(refs, hyps) == pytest.approx(expected)
    # Corpus-level: total edits / total reference words, not a mean of sentence WERs.
    # refs have 3 + 4 + 3 = 10 words; edits: 1 (un→u) + 1 (hundred deleted) + 2 (eins
    # inserted, eins→zwei) = 4; the mean of sentence WERs would be (33.3 + 25 + 66.7) / 3.
    assert wer(refs, hyps) == pytest.approx(40.0)


def test_wer_identical_and_all_substituted():
    refs = ["Vint-i-un", "Quatre-cents"]
    assert wer(refs, ["vint i un", "QUATRE CENTS"]) == 0.0
    assert wer(["one", "two", "three"], ["uno", "dos", "tres"]) == 100.0


def test_wer_skips_empty_references_and_checks_lengths():
    assert wer(["", "one two"], ["noise", "one two"]) == 0.0
    with pytest.raises(ValueError, match="empty"):
        wer(["", "?"], ["a", "b"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])


def test_bleu():
    refs = ["four thousand three hundred and twenty-one", "nine hundred and ninety-nine"]
    value, signature = bleu(refs, list(refs))
    assert value == pytest.approx(100.0)
    assert "nrefs:1" in signature
    assert "tok:13a" in signature
    low, _ = bleu(refs, ["five", "six"])
    assert 0.0 <= low < 5.0
    with pytest.raises(ValueError):
        bleu(refs, refs[:1])


def test_bleu_is_case_and_punctuation_sensitive():
    # BLEU scores raw text (as the paper), unlike WER.
    refs = ["four thousand, three hundred and twenty-one"]
    value, _ = bleu(refs, ["Four Thousand three hundred and twenty one"])
    assert value < 100.0


def test_score():
    asr = score("asr", ["vint-i-un"], ["vint i un"])
    assert asr["metric"] == "wer" and asr["score"] == 0.0
    assert asr["normalizer"] == "speechmerge.metrics.normalize"
    refs = ["four thousand three hundred and twenty-one"]
    st = score("st", refs, refs)
    assert st["metric"] == "bleu" and st["score"] == pytest.approx(100.0)
    assert "nrefs:1" in st["signature"]
    with pytest.raises(ValueError, match="xx"):
        score("xx", ["a"], ["a"])
