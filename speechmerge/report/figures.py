"""Figures 3-5 of the paper (matplotlib) and the data behind them (pandas, written as CSV next
to each PNG so the plotted numbers can be read and tested).

Score files are those of :func:`speechmerge.decode.score_model`: one JSON per (language, task)
named ``{lang}-{task}.json`` in a system's score folder.

Every plotted test-set score has its 95 % paired-bootstrap CI (columns ``ci_low``, ``ci_high``
of the CSV; a band around each line): over the test utterances of every score file averaged
into the point (:func:`speechmerge.report.tables.average_ci`), or, for Figure 5, of the sweep
points' per-utterance statistics. Without hypotheses to resample the CI columns are empty.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.atomic import atomic_file, atomic_write_text
from ..metrics import bootstrap
from ..plan.settings import fmt_scale
from .tables import METHOD_NAMES, average_ci, read_score

METRIC = {"asr": "WER (%) ↓", "st": "BLEU ↑"}
TASK_NAME = {"asr": "ASR", "st": "ST (X→en)"}
FINETUNED = "Finetuned"
JOINT = "Multi-lingual training"


def _mean(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("no scores to average")
    return sum(xs) / len(xs)


def _dir_score(folder: str | Path, lang: str, task: str) -> float:
    return read_score(Path(folder) / f"{lang}-{task}.json")


def _point(cells: Sequence[float]) -> dict:
    """{'score': mean of the cells, 'ci_low', 'ci_high': its CI (NaN without hypotheses)}."""
    ci = average_ci(cells) or (float("nan"), float("nan"))
    return {"score": _mean(cells), "ci_low": ci[0], "ci_high": ci[1]}


def num_languages_data(
    settings: Mapping[str, dict],
    finetuned_dir: str | Path,
    merged_dirs: Mapping[str, str],
    methods: Sequence[str],
) -> pd.DataFrame:
    """Figure 3's points: one row per (task, number of languages, system) with the score
    averaged over the languages of each combination, then over the combinations.

    `settings`: {study setting: {"pairs": [(lang, task), ...]}}, the language combinations;
    `merged_dirs`: {"setting/method": score folder}. The Finetuned line averages each
    combination's fine-tuned models (a combination's languages, each fine-tuned alone).
    """
    # every combination has k languages: the mean over combinations of their means is the
    # mean over all (combination, language) cells, whose CI resamples each test set once
    groups: dict[tuple[str, int, str], list[list[float]]] = {}
    for name, st in settings.items():
        pairs = [tuple(p) for p in st["pairs"]]
        task, k = pairs[0][1], len(pairs)
        ft = [_dir_score(finetuned_dir, lang, t) for lang, t in pairs]
        groups.setdefault((task, k, FINETUNED), []).append(ft)
        for m in methods:
            folder = merged_dirs[f"{name}/{m}"]
            groups.setdefault((task, k, METHOD_NAMES[m]), []).append(
                [_dir_score(folder, lang, t) for lang, t in pairs]
            )
    rows = [
        {
            "task": t,
            "languages": k,
            "system": s,
            **_point([c for cells in v for c in cells]),
            "combinations": len(v),
        }
        for (t, k, s), v in sorted(groups.items())
    ]
    columns = ["task", "languages", "system", "score", "ci_low", "ci_high", "combinations"]
    return pd.DataFrame(rows, columns=columns)


def data_scale_data(
    langs: Sequence[str],
    tasks: Sequence[str],
    scales: Sequence[float],
    hours: Mapping[str, float],
    finetuned_dirs: Mapping[str, str],
    merged_dirs: Mapping[str, str],
    methods: Sequence[str],
    joint_dirs: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Figure 4's points: one row per (task, data scale, system), averaged over languages.

    `finetuned_dirs`: {scale: fine-tuned score folder}; `merged_dirs`: {"scale/task/method":
    merged score folder}; `joint_dirs` (optional): {"scale/task": multi-lingual training score
    folder}; `hours`: {lang: train hours at scale 1} (the x axis is the mean hours per language).
    """
    rows = []
    mean_hours = _mean([hours[lang] for lang in langs])
    for task in tasks:
        for scale in scales:
            s = fmt_scale(scale)
            systems = {FINETUNED: finetuned_dirs[s]}
            if joint_dirs and f"{s}/{task}" in joint_dirs:
                systems[JOINT] = joint_dirs[f"{s}/{task}"]
            for m in methods:
                systems[METHOD_NAMES[m]] = merged_dirs[f"{s}/{task}/{m}"]
            for system, folder in systems.items():
                point = _point([_dir_score(folder, lang, task) for lang in langs])
                rows.append(
                    {
                        "task": task,
                        "scale": float(scale),
                        "hours": mean_hours * float(scale),
                        "system": system,
                        **point,
                    }
                )
    columns = ["task", "scale", "hours", "system", "score", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


def retain_data(sweeps: Sequence[str | Path]) -> pd.DataFrame:
    """Figure 5's points from prune-sweep JSONs (each ``{"sweeps": [...]}`` of
    :func:`speechmerge.study.prune_sweep` results): one row per (pruning, data scale, retain
    ratio), WER averaged over languages, with the CI of that average from the points'
    per-utterance statistics (NaN for sweeps written without them)."""
    recs = []
    datas = [d for path in sweeps for d in json.loads(Path(path).read_text())["sweeps"]]
    for data in datas:
        for p in data["points"]:
            recs.append(
                {
                    "prune": data["prune"],
                    "scale": float(data["scale"]),
                    "hours": float(data["hours"]),
                    "lang": data["lang"],
                    "retain": float(p["retain"]),
                    "score": float(p["score"]),
                    "stats": (f"{data['lang']}-{data['task']}", p.get("stats")),
                }
            )
    if not recs:
        raise ValueError("no prune sweeps")
    df = pd.DataFrame(recs)
    keys = ["prune", "scale", "retain"]
    out = df.groupby(keys, as_index=False).agg(
        hours=("hours", "mean"), score=("score", "mean"), languages=("lang", "nunique")
    )
    cis = []
    for _, g in df.groupby(keys):
        items = list(g["stats"])
        if any(stats is None for _, stats in items):
            cis.append((float("nan"), float("nan")))
            continue
        ci = bootstrap("wer", [(k, np.asarray(v)) for k, v in items])
        cis.append((ci["ci_low"], ci["ci_high"]))
    out["ci_low"], out["ci_high"] = zip(*cis)
    return out


def _figure(ncols: int):
    import matplotlib  # optional (extra "plots"), and slow to import: only to draw

    matplotlib.use("Agg")
    # deferred: optional extra [plots]
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.0), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, png: str | Path) -> None:
    fig.tight_layout()
    with atomic_file(png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


STYLE = {
    FINETUNED: {"color": "black", "linestyle": "--", "marker": "o"},
    JOINT: {"color": "tab:gray", "linestyle": ":", "marker": "s"},
    "Task Arithmetic": {"color": "tab:blue", "marker": "^"},
    "LoRS-Merging": {"color": "tab:red", "marker": "D"},
}


def _band(ax, d: pd.DataFrame, x: str, line) -> None:
    """The 95 % CI of a line as a translucent band of its colour (where the CI is known)."""
    if "ci_low" not in d or not np.isfinite(d[["ci_low", "ci_high"]].to_numpy(float)).all():
        return
    ax.fill_between(d[x], d["ci_low"], d["ci_high"], color=line.get_color(), alpha=0.15, lw=0)


def plot_lines(
    df: pd.DataFrame, x: str, xlabel: str, title: str, png: str | Path, xticks=None
) -> None:
    """One panel per task (WER for ASR, BLEU for ST), one line per system."""
    tasks = [t for t in ("asr", "st") if t in set(df["task"])]
    plt, fig, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks):
        sub = df[df["task"] == task]
        for system in dict.fromkeys(sub["system"]):
            d = sub[sub["system"] == system].sort_values(x)
            (line,) = ax.plot(d[x], d["score"], label=system, **STYLE.get(system, {"marker": "x"}))
            _band(ax, d, x, line)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(METRIC[task])
        ax.set_title(TASK_NAME[task])
        if xticks is not None:
            ax.set_xticks(sorted(set(sub[x])))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(plt, fig, png)


def plot_retain(df: pd.DataFrame, title: str, png: str | Path) -> None:
    """Figure 5: SVP (left) and MP (right), WER against retain ratio, one line per data size."""
    prunes = [p for p in ("svp", "mp") if p in set(df["prune"])]
    names = {"svp": "SVP (rank retained)", "mp": "MP (weights retained)"}
    plt, fig, axes = _figure(len(prunes))
    for ax, prune in zip(axes, prunes):
        sub = df[df["prune"] == prune]
        for scale in sorted(set(sub["scale"])):
            d = sub[sub["scale"] == scale].sort_values("retain")
            (line,) = ax.plot(
                d["retain"], d["score"], marker="o", label=f"{d['hours'].iloc[0]:.3g} h / language"
            )
            _band(ax, d, "retain", line)
        ax.set_xlabel("retain ratio (1 = keep all)")
        ax.set_ylabel(METRIC["asr"])
        ax.set_title(f"ASR fine-tuned models, {names[prune]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="training data")
    fig.suptitle(title, fontsize=10)
    _save(plt, fig, png)


def write_figure(kind: str, df: pd.DataFrame, png: str | Path, preset: str) -> None:
    """Write ``png`` and its data as ``png`` with suffix ``.csv``."""
    if df.empty or df["score"].isna().any():
        raise ValueError(f"{png}: no or empty data points")
    if kind == "fig3":
        plot_lines(
            df,
            "languages",
            "number of merged languages",
            f"Figure 3 ({preset}): performance against the number of languages",
            png,
            xticks=True,
        )
    elif kind == "fig4":
        plot_lines(
            df,
            "hours",
            "training data per language (hours, before subset.scale)",
            f"Figure 4 ({preset}): performance against training data size",
            png,
        )
    elif kind == "fig5":
        plot_retain(df, f"Figure 5 ({preset}): WER against retain ratio", png)
    else:
        raise ValueError(f"unknown figure {kind!r}")
    atomic_write_text(Path(png).with_suffix(".csv"), df.round(4).to_csv(index=False))
