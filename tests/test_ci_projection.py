"""The CI projection's bootstrap (benchmarks/ci_projection.py), not its numbers: at k = 1 it
is the workflow's own interval; a k times larger test set narrows it by about sqrt(k)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark

from speechmerge.metrics import bootstrap, resample_counts, utterance_stats

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def proj():
    return load_benchmark("ci_projection")


@pytest.fixture(scope="module")
def items() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    words = ["un", "dos", "tres", "quatre", "cinc", "sis"]
    out = []
    for lang in ("ca", "de", "es"):
        refs = [" ".join(rng.choice(words, 3)) for _ in range(120)]
        hyps = [r if rng.random() < 0.6 else " ".join(rng.choice(words, 2)) for r in refs]
        out.append((f"{lang}-asr", utterance_stats("wer", refs, hyps)))
    return out


def test_k1_is_the_workflow_interval(proj, items) -> None:
    ref = bootstrap("wer", items)
    point, hw = proj.half_width(items, "wer", 1.0)
    assert point == pytest.approx(ref["score"])
    assert hw == pytest.approx((ref["ci_high"] - ref["ci_low"]) / 2)


def test_larger_test_set_narrows_by_sqrt_k(proj, items) -> None:
    _, hw1 = proj.half_width(items, "wer", 1.0)
    _, hw4 = proj.half_width(items, "wer", 4.0)
    assert 0.4 < hw4 / hw1 < 0.62  # 1 / sqrt(4), up to bootstrap noise


def test_resample_counts_draw_k_n() -> None:
    counts = resample_counts(50, "x-asr", draws=125)
    assert counts.shape == (1000, 50)
    assert (counts.sum(axis=1) == 125).all()
    # the default (draws = n) is unchanged: the workflow's own resamples
    assert (resample_counts(50, "x-asr", draws=50) == resample_counts(50, "x-asr")).all()
