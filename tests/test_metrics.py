"""Tests for speechmerge.metrics (WER after Whisper's basic normaliser, corpus BLEU)."""

from __future__ import annotations

import random

import jiwer
import numpy as np
import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st

from speechmerge.metrics import (
    bleu,
    bootstrap,
    compare,
    corpus_score,
    normalize,
    resample_counts,
    score,
    utterance_stats,
    verdict,
    wer,
)


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
    assert st["ci_low"] == st["ci_high"] == pytest.approx(100.0)
    assert asr["ci_low"] == asr["ci_high"] == 0.0 and "1000 resamples" in asr["ci"]
    with pytest.raises(ValueError, match="xx"):
        score("xx", ["a"], ["a"])


# --- paired bootstrap ---------------------------------------------------------------------

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def noisy_corpus(n: int, keep: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """n random references and hypotheses with each word kept with probability `keep`."""
    rng = random.Random(seed)
    refs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(n)]
    hyps = [
        " ".join(w if rng.random() < keep else rng.choice(WORDS) for w in r.split()) for r in refs
    ]
    return refs, hyps


sentences = st.lists(st.sampled_from(WORDS + ["Vint-i-un", "l'onze,"]), max_size=8).map(" ".join)
corpora = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(sentences, min_size=n, max_size=n), st.lists(sentences, min_size=n, max_size=n)
    )
)


@settings(max_examples=60, deadline=None)
@given(corpora)
def test_summed_stats_reproduce_wer_and_bleu(corpus):
    """The full-set sums of the per-utterance statistics give jiwer's WER and
    sacrebleu.corpus_bleu exactly."""
    refs, hyps = corpus
    b = utterance_stats("bleu", refs, hyps).sum(axis=0)
    assert corpus_score("bleu", b) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    if any(normalize(r) for r in refs):
        w = utterance_stats("wer", refs, hyps).sum(axis=0)
        assert corpus_score("wer", w) == pytest.approx(wer(refs, hyps))


def test_bleu_stats_on_a_realistic_corpus():
    refs, hyps = noisy_corpus(300, 0.7)
    stats = utterance_stats("bleu", refs, hyps)
    assert stats.shape == (300, 10)
    assert corpus_score("bleu", stats.sum(0)) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9
    )


def test_wer_stats_count_edits_per_utterance():
    stats = utterance_stats("wer", ["a b c", "x y", "?"], ["a c d e", "", "noise"])
    # a b c → a c d e: 1 insertion + 2 substitutions; x y → "": 2 deletions; "?" skipped
    assert stats.tolist() == [[3, 3], [2, 2], [0, 0]]


def test_resample_counts_are_seeded_draws_with_replacement():
    c = resample_counts(50, "ca-asr", 200, seed=3)
    assert c.shape == (200, 50) and (c.sum(axis=1) == 50).all()
    assert (c == resample_counts(50, "ca-asr", 200, seed=3)).all()
    assert not (c == resample_counts(50, "de-asr", 200, seed=3)).all()
    assert not (c == resample_counts(50, "ca-asr", 200, seed=4)).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.2, 0.95), st.sampled_from(["wer", "bleu"]))
def test_ci_contains_the_estimate(seed, keep, metric):
    refs, hyps = noisy_corpus(20, keep, seed)
    ci = bootstrap(metric, utterance_stats(metric, refs, hyps), resamples=200, seed=seed)
    assert ci["ci_low"] <= ci["score"] <= ci["ci_high"]
    assert np.isfinite([ci["ci_low"], ci["ci_high"]]).all()


def test_bootstrap_ci_width_shrinks_with_more_data():
    def width(n):
        refs, hyps = noisy_corpus(n, 0.7)
        ci = bootstrap("wer", utterance_stats("wer", refs, hyps))
        return ci["ci_high"] - ci["ci_low"]

    assert width(800) < 0.7 * width(100)


@pytest.mark.parametrize("metric", ["wer", "bleu"])
def test_identical_systems(metric):
    refs, hyps = noisy_corpus(40, 0.6)
    s = utterance_stats(metric, refs, hyps)
    r = compare(metric, s, s)
    assert r["delta"] == r["ci_low"] == r["ci_high"] == 0.0
    assert r["p_value"] == 1.0 and r["verdict"] == "no significant difference"


@pytest.mark.parametrize("metric", ["wer", "bleu"])
def test_clearly_better_system(metric):
    refs, good = noisy_corpus(60, 0.95, seed=1)
    _, bad = noisy_corpus(60, 0.4, seed=1)
    a, b = utterance_stats(metric, refs, good), utterance_stats(metric, refs, bad)
    r = compare(metric, a, b)
    assert r["p_value"] < 0.05 and r["verdict"] == "better"
    assert r["ci_low"] <= r["delta"] <= r["ci_high"]
    assert (r["delta"] < 0) == (metric == "wer")  # lower WER, higher BLEU
    back = compare(metric, b, a)
    assert back["verdict"] == "worse" and back["delta"] == pytest.approx(-r["delta"])
    assert back["p_value"] == r["p_value"]


def test_compare_is_deterministic_and_paired():
    refs, h1 = noisy_corpus(30, 0.7, seed=2)
    _, h2 = noisy_corpus(30, 0.65, seed=5)
    a, b = utterance_stats("wer", refs, h1), utterance_stats("wer", refs, h2)
    assert compare("wer", a, b, seed=9) == compare("wer", a, b, seed=9)
    # the difference's CI is paired: same resamples as each system's own CI
    ra, rb = bootstrap("wer", {"x": a}), bootstrap("wer", {"x": b})
    r = compare("wer", {"x": a}, {"x": b})
    assert r["delta"] == pytest.approx(ra["score"] - rb["score"])


def test_average_over_test_sets():
    """Avg. columns: each test set resampled within itself, the scores averaged."""
    sets = {}
    for i, lang in enumerate(["ca", "de", "es"]):
        refs, hyps = noisy_corpus(25, 0.5 + 0.1 * i, seed=i)
        sets[f"{lang}-asr"] = utterance_stats("wer", refs, hyps)
    ci = bootstrap("wer", sets)
    expected = np.mean([corpus_score("wer", s.sum(0)) for s in sets.values()])
    assert ci["score"] == pytest.approx(expected)
    assert ci["ci_low"] < ci["score"] < ci["ci_high"]
    with pytest.raises(ValueError, match="ca-asr"):
        compare("wer", sets, {**sets, "ca-asr": sets["ca-asr"][:3]})


def test_verdict():
    assert verdict("wer", -3, -1) == "better" and verdict("wer", 1, 3) == "worse"
    assert verdict("bleu", 1, 3) == "better" and verdict("bleu", -3, -1) == "worse"
    assert verdict("wer", -1, 2) == verdict("bleu", 0, 2) == "no significant difference"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_normalize_is_whispers_basic_normalizer(text):
    """Issue 17: no re-implementation — the normaliser is transformers' own, ends stripped."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    assert normalize(text) == BasicTextNormalizer()(text).strip()
    assert normalize(text) == " ".join(normalize(text).split())


def test_compare_takes_bootstraps_resampling_settings_only():
    s = utterance_stats("wer", ["a b c", "d e"], ["a b", "d e"])
    assert compare("wer", s, s, resamples=50, seed=1, level=0.9)["delta"] == 0
    with pytest.raises(TypeError):
        compare("wer", s, s, sed=1)
