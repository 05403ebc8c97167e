"""Scores: WER (jiwer) after a documented normaliser, corpus BLEU (sacrebleu) with signature.

WER normaliser (:func:`normalize`), applied to references and hypotheses alike: Whisper's
``BasicTextNormalizer`` from transformers (the one Whisper's authors use for non-English
text): lower case, text in brackets/parentheses dropped, Unicode NFKC, every punctuation mark
and symbol (Unicode categories M, S, P) replaced by a space, white space collapsed; we strip
the ends. So ``vint-i-un`` counts as three words and
``four thousand, three hundred`` as four.

BLEU is sacrebleu's corpus BLEU on the raw (un-normalised) text with its default 13a
tokeniser, as the paper (section 4.2); its signature is saved next to the score.

Confidence intervals and significance (:func:`bootstrap`, :func:`compare`): a paired
bootstrap over test utterances (Koehn 2004). Each system's test set is reduced once to
per-utterance sufficient statistics (:func:`utterance_stats`: word edits and reference words
for WER; sacrebleu's hypothesis/reference lengths and matching/total n-gram counts for BLEU),
so a resampled corpus score is a sum of rows and the corpus formula, never a re-scoring.
Resamples are drawn as counts per utterance from a seed and the test set's key
(:func:`resample_counts`), so every system scored on the same test set sees the same
resamples: CIs of differences and of averages over test sets are paired. The 95 % interval
is the percentile interval of the resampled scores, widened (conservatively) to contain the
full-set estimate when a skewed resample distribution leaves it outside. The p-value is
two-sided: twice the smaller fraction of resampled differences on either side of 0, with the
usual +1 correction, capped at 1.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

#: Bootstrap defaults: resamples, seed and confidence level of every CI the workflow reports.
RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@functools.cache
def _basic_normalizer():
    # transformers is imported here, not at module level: the report code imports this module
    # for the bootstrap and should not pay for (or need) transformers.
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


def normalize(text: str) -> str:
    """Whisper's ``BasicTextNormalizer`` (transformers), with the result stripped of leading
    and trailing white space (the normaliser collapses inner runs but leaves a space where a
    leading or trailing mark was; word splitting for WER ignores it either way)."""
    return _basic_normalizer()(text).strip()


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER in percent (total edits / total reference words) after :func:`normalize`;
    references that normalise to nothing are skipped. Edits are jiwer's alignment, counted per
    utterance (:func:`utterance_stats`, whose sums the bootstrap resamples)."""
    return float(corpus_score("wer", utterance_stats("wer", references, hypotheses).sum(axis=0)))


def bleu(references: list[str], hypotheses: list[str]) -> tuple[float, str]:
    """Corpus BLEU (0-100) and sacrebleu's signature string."""
    # deferred: scoring only; the report code imports this module for the bootstrap
    from sacrebleu.metrics import BLEU

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    metric = BLEU()
    score = metric.corpus_score(hypotheses, [references])
    return float(score.score), str(metric.get_signature())


def score(task: str, references: list[str], hypotheses: list[str], key: str = "") -> dict:
    """{'metric': 'wer'|'bleu', 'score': float, 'ci_low', 'ci_high', ...} for one (language,
    task) test set; the CI is :func:`bootstrap`'s with the test set's `key` (``lang-task``)."""
    if task == "asr":
        out = {
            "metric": "wer",
            "score": wer(references, hypotheses),
            "normalizer": "speechmerge.metrics.normalize",
        }
    elif task == "st":
        value, sig = bleu(references, hypotheses)
        out = {"metric": "bleu", "score": value, "signature": sig}
    else:
        raise ValueError(f"unknown task {task!r} (expected 'asr' or 'st')")
    ci = bootstrap(out["metric"], {key: utterance_stats(out["metric"], references, hypotheses)})
    out.update(ci_low=ci["ci_low"], ci_high=ci["ci_high"])
    out["ci"] = f"{100 * LEVEL:g}% paired bootstrap, {RESAMPLES} resamples, seed {SEED}"
    return out


# --- paired bootstrap ---------------------------------------------------------------------

#: Columns of :func:`utterance_stats` per metric.
STAT_COLUMNS = {
    "wer": ("errors", "ref_words"),
    "bleu": (
        "sys_len",
        "ref_len",
        *(f"correct{n}" for n in range(1, 5)),
        *(f"total{n}" for n in range(1, 5)),
    ),
}
#: Whether a lower value of the metric is better.
LOWER_IS_BETTER = {"wer": True, "bleu": False}


def utterance_stats(metric: str, references: list[str], hypotheses: list[str]) -> np.ndarray:
    """Per-utterance sufficient statistics, shape (utterances, columns of :data:`STAT_COLUMNS`).

    ``wer``: word edits (substitutions + deletions + insertions, jiwer's alignment) and
    reference words after :func:`normalize`; an utterance whose reference normalises to
    nothing counts zero of both (as :func:`wer` skips it). ``bleu``: sacrebleu's segment
    statistics of the default BLEU (13a, one reference)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if metric == "wer":
        # deferred: scoring only; the report code imports this module for the bootstrap
        import jiwer

        refs = [normalize(r) for r in references]
        hyps = [normalize(h) for h in hypotheses]
        keep = [i for i, r in enumerate(refs) if r]
        if not keep:
            raise ValueError("every reference is empty after normalisation")
        out = np.zeros((len(refs), 2), dtype=np.int64)
        words = jiwer.process_words([refs[i] for i in keep], [hyps[i] for i in keep])
        for i, chunks in zip(keep, words.alignments):
            edits = sum(
                (c.hyp_end_idx - c.hyp_start_idx)
                if c.type == "insert"
                else (c.ref_end_idx - c.ref_start_idx)
                for c in chunks
                if c.type != "equal"
            )
            out[i] = edits, len(refs[i].split())
        return out
    if metric == "bleu":
        # deferred: scoring only; the report code imports this module for the bootstrap
        from sacrebleu.metrics import BLEU

        stats = BLEU()._extract_corpus_statistics(hypotheses, [references])
        return np.asarray(stats, dtype=np.int64).reshape(len(hypotheses), 10)
    raise ValueError(f"unknown metric {metric!r} (expected 'wer' or 'bleu')")


def corpus_score(metric: str, summed: np.ndarray) -> np.ndarray:
    """Corpus scores from statistics summed over utterances, shape (..., columns) → (...).

    WER in percent (edits / reference words; NaN without reference words); BLEU as
    ``sacrebleu.corpus_bleu`` with its defaults (exp smoothing, brevity penalty, log of a zero
    precision floored as sacrebleu's ``my_log``), vectorised over the leading axes."""
    summed = np.asarray(summed, dtype=np.float64)
    if metric == "wer":
        errors, words = summed[..., 0], summed[..., 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(words > 0, 100.0 * errors / np.where(words > 0, words, 1), np.nan)
    if metric != "bleu":
        raise ValueError(f"unknown metric {metric!r} (expected 'wer' or 'bleu')")
    sys_len, ref_len = summed[..., 0], summed[..., 1]
    correct, total = summed[..., 2:6], summed[..., 6:10]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        bp = np.where(
            sys_len < ref_len, np.where(sys_len > 0, np.exp(1 - ref_len / sys_len), 0.0), 1.0
        )
        active = np.cumprod(total > 0, axis=-1).astype(bool)  # sacrebleu stops at total == 0
        smooth = 2.0 ** np.cumsum(active & (correct == 0), axis=-1)  # "exp" smoothing
        safe_total = np.where(total > 0, total, 1)
        prec = np.where(correct > 0, 100.0 * correct / safe_total, 100.0 / (smooth * safe_total))
        prec = np.where(active, prec, 0.0)
        logs = np.where(prec > 0, np.log(np.where(prec > 0, prec, 1)), -9999999999.0)
        score = bp * np.exp(logs.sum(axis=-1) / 4)
    return np.where(correct.sum(axis=-1) > 0, score, 0.0)


@lru_cache(maxsize=64)
def resample_counts(
    n: int, key: str = "", resamples: int = RESAMPLES, seed: int = SEED, draws: int | None = None
) -> np.ndarray:
    """(resamples, n) counts: how often each of the n utterances is drawn in each bootstrap
    resample (n draws with replacement). The same (n, key, resamples, seed) always gives the
    same counts, so systems scored on the same test set (`key`, e.g. ``ca-asr``) are
    resampled identically — the pairing. `draws` (default n) draws that many utterances per
    resample instead: the spread a test set draws / n times larger would show (a power
    analysis; ``benchmarks/ci_projection.py``). Cached and read-only."""
    if n < 1:
        raise ValueError("no utterances to resample")
    m = n if draws is None else draws
    if m < 1:
        raise ValueError("no draws per resample")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode()), n] + ([] if m == n else [m]))
    picks = rng.integers(0, n, size=(resamples, m)) + n * np.arange(resamples)[:, None]
    counts = np.bincount(picks.ravel(), minlength=resamples * n).reshape(resamples, n)
    counts = counts.astype(np.float64)  # the matrix products with the statistics are float
    counts.flags.writeable = False
    return counts


def _interval(point: np.ndarray, samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(samples, [alpha, 100 - alpha])
    return float(min(lo, point)), float(max(hi, point))


#: Test sets of a system: one set's stats, {test set key: stats}, or (key, stats) pairs (a key
#: may repeat: Figure 3 averages the same test set over several language combinations).
TestSets = np.ndarray | Mapping[str, np.ndarray] | Sequence[tuple[str, np.ndarray]]


def _items(stats: TestSets) -> list[tuple[str, np.ndarray]]:
    if isinstance(stats, np.ndarray):
        return [("", stats)]
    items = list(stats.items()) if isinstance(stats, Mapping) else list(stats)
    if not items:
        raise ValueError("no test sets")
    return [(k, np.asarray(v, dtype=np.float64)) for k, v in items]


def _averaged(
    metric: str, systems: Sequence[TestSets], resamples: int, seed: int, scale: float = 1.0
) -> tuple[list[float], list[np.ndarray]]:
    """For each system (the same test sets in the same order): the full-set corpus score
    averaged over its test sets, and its (resamples,) bootstrap replicates (each drawing
    round(scale × n) of a test set's n utterances)."""
    items = [_items(s) for s in systems]
    first = [(k, len(v)) for k, v in items[0]]
    for other in items[1:]:
        if [(k, len(v)) for k, v in other] != first:
            raise ValueError(
                f"systems differ in test sets or utterances: {first} vs {[(k, len(v)) for k, v in other]}"
            )
    points = [0.0] * len(systems)
    reps = [np.zeros(resamples) for _ in systems]
    for j, (key, n) in enumerate(first):
        counts = resample_counts(n, key, resamples, seed, max(1, round(scale * n)))
        for i, its in enumerate(items):
            stats = its[j][1]
            points[i] += float(corpus_score(metric, stats.sum(axis=0))) / len(first)
            reps[i] += corpus_score(metric, counts @ stats) / len(first)
    return points, reps


def bootstrap(
    metric: str,
    stats: TestSets,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
    scale: float = 1.0,
) -> dict:
    """{'score', 'ci_low', 'ci_high'}: a system's corpus score and its percentile CI. `stats`:
    one test set's :func:`utterance_stats`, or {test set key: stats} (or (key, stats) pairs)
    to average the corpus scores over test sets, each resampled within itself (the tables'
    Avg. columns). `scale` ≠ 1 projects the CI of test sets `scale` times larger with
    utterances like these (:func:`resample_counts`' `draws`); the workflow's CIs use 1."""
    (point,), (reps,) = _averaged(metric, [stats], resamples, seed, scale)
    low, high = _interval(point, reps, level)
    return {"score": point, "ci_low": low, "ci_high": high}


def _resampling(
    resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[int, int, float]:
    return resamples, seed, level


def compare(metric: str, stats_a: TestSets, stats_b: TestSets, **resampling) -> dict:
    """Paired bootstrap of delta = score(A) − score(B) on the same utterances:
    {'delta', 'ci_low', 'ci_high', 'p_value', 'verdict'}. The verdict is A's, from the CI:
    'better' or 'worse' (lower WER, higher BLEU is better) when the CI excludes 0, else
    'no significant difference'. `resampling`: ``resamples``, ``seed`` and ``level`` as in
    :func:`bootstrap` (same defaults; any other keyword is a TypeError)."""
    resamples, seed, level = _resampling(**resampling)
    (pa, pb), (ra, rb) = _averaged(metric, [stats_a, stats_b], resamples, seed)
    delta, deltas = pa - pb, ra - rb
    low, high = _interval(delta, deltas, level)
    valid = deltas[np.isfinite(deltas)]
    side = min(int((valid <= 0).sum()), int((valid >= 0).sum()))
    p = min(1.0, 2 * (side + 1) / (len(valid) + 1))
    return {
        "delta": delta,
        "ci_low": low,
        "ci_high": high,
        "p_value": p,
        "verdict": verdict(metric, low, high),
    }


def verdict(metric: str, ci_low: float, ci_high: float) -> str:
    """'better' / 'worse' for the first system of a difference whose CI excludes 0, else
    'no significant difference' (a difference inside its CI is never a win)."""
    if ci_low <= 0 <= ci_high:
        return "no significant difference"
    a_higher = ci_low > 0
    return "worse" if a_higher == LOWER_IS_BETTER[metric] else "better"
