"""Hypothesis files (``{lang}-{task}.hyp.tsv`` next to each score JSON: id, reference,
hypothesis) and the paired bootstrap over them (:mod:`speechmerge.metrics`).

A system on a set of test sets is a list of score JSON paths; each file's test set key is its
stem (``ca-asr``), the key :func:`speechmerge.metrics.resample_counts` draws the resamples
from, so two systems' files on the same test set are resampled identically (paired).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from .io.atomic import atomic_write_text
from .metrics import bootstrap, compare, utterance_stats

HEADER = ["id", "reference", "hypothesis"]


def hyp_path(score_json: str | Path) -> Path:
    return Path(score_json).with_suffix(".hyp.tsv")


def write_hypotheses(score_json: str | Path, ids, references, hypotheses) -> None:
    table = io.StringIO()
    w = csv.writer(table, delimiter="\t", lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(zip(ids, references, hypotheses))
    atomic_write_text(hyp_path(score_json), table.getvalue())


def read_hypotheses(score_json: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(ids, references, hypotheses) of a score file's ``.hyp.tsv``."""
    path = hyp_path(score_json)
    if not path.exists():
        raise FileNotFoundError(f"hypotheses missing: {path} (rescore to write them)")
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0] != HEADER:
        raise ValueError(f"{path}: expected the header {HEADER}")
    ids, refs, hyps = (list(c) for c in zip(*rows[1:])) if len(rows) > 1 else ([], [], [])
    return ids, refs, hyps


@lru_cache(maxsize=4096)
def _file_stats(path: str, mtime: float) -> tuple[str, tuple[str, ...], np.ndarray]:
    ids, refs, hyps = read_hypotheses(path)
    metric = json.loads(Path(path).read_text())["metric"]
    return metric, tuple(ids), utterance_stats(metric, refs, hyps)


def file_stats(score_json: str | Path) -> tuple[str, tuple[str, ...], np.ndarray]:
    """(metric, utterance ids, per-utterance statistics) of one score file (cached)."""
    path = Path(score_json)
    return _file_stats(str(path), hyp_path(path).stat().st_mtime if hyp_path(path).exists() else 0)


def system_stats(files: Sequence[str | Path]) -> tuple[str, list[tuple[str, np.ndarray]], list]:
    """(metric, [(test set key, stats)], [utterance ids]) of a system's score files."""
    if not files:
        raise ValueError("no score files")
    got = [file_stats(f) for f in files]
    metrics = {m for m, _, _ in got}
    if len(metrics) != 1:
        raise ValueError(f"score files mix metrics {sorted(metrics)}: {[str(f) for f in files]}")
    items = [(Path(f).stem, stats) for f, (_, _, stats) in zip(files, got)]
    return metrics.pop(), items, [ids for _, ids, _ in got]


def files_ci(files: Sequence[str | Path], **kw) -> dict:
    """:func:`speechmerge.metrics.bootstrap` of the average over `files` (score JSONs)."""
    metric, items, _ = system_stats(files)
    return bootstrap(metric, items, **kw)


def files_compare(files_a: Sequence[str | Path], files_b: Sequence[str | Path], **kw) -> dict:
    """:func:`speechmerge.metrics.compare` of two systems' averages over the same test sets
    (file by file; the utterance ids must match)."""
    metric, a, ids_a = system_stats(files_a)
    metric_b, b, ids_b = system_stats(files_b)
    if metric != metric_b:
        raise ValueError(f"cannot compare {metric} with {metric_b}")
    for fa, fb, ia, ib in zip(files_a, files_b, ids_a, ids_b):
        if ia != ib:
            raise ValueError(f"{fa} and {fb} score different utterances")
    return compare(metric, a, b, **kw)
