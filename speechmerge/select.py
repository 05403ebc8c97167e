"""Dev-set selection of the merge hyper-parameters (the paper's grids, section 4.2).

Search strategy (affordable: grid sizes add, they do not multiply across task vectors):

1. Per task vector τ (one (language, task)): choose (r, p) from ``rank_grid × keep_grid``
   maximising the dev score of the single model ``θ0 + LoRS(τ)`` (λ = 1, eq. 8 with one
   task vector). ``|rank_grid| · |keep_grid|`` merges and dev decodes per task vector.
2. Per merge setting and method: with every task vector's chosen (r, p), choose λ from
   ``lambda_grid`` maximising the setting's dev score. MP-Merging uses each τ's chosen p,
   SVP-Merging its chosen r. ``|lambda_grid|`` merges per (setting, method).

Scores come from the DEV split only (``subsets/{lang}/dev.tsv``); the test split is never read.
A setting's dev score is :func:`objective`: the mean over its (language, task) pairs of BLEU
for ST and of −WER for ASR (both in points), so higher is better. Ties go to the first grid
point (grids are listed in config order).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .decode import score_model
from .io.atomic import atomic_write_text


def objective(scores: Iterable[tuple[str, float]]) -> float:
    """Mean of BLEU (st) and −WER (asr) over (task, score) pairs: higher is better."""
    vals = [s if task == "st" else -s for task, s in scores]
    if not vals:
        raise ValueError("objective of no scores")
    return sum(vals) / len(vals)


def grid_search(candidates: Sequence[Any], score_fn: Callable[[Any], float]) -> tuple[Any, list]:
    """The candidate with the highest ``score_fn`` (first one on ties) and every
    (candidate, score)."""
    if not candidates:
        raise ValueError("empty grid")
    results = [(c, float(score_fn(c))) for c in candidates]
    best = max(range(len(results)), key=lambda i: (results[i][1], -i))
    return results[best][0], results


def grid_edge(value: float, grid: Sequence[float]) -> str | None:
    """``"lowest"`` / ``"highest"`` when `value` is the grid's smallest / largest point (a grid
    of two or more distinct values), else None. A choice at an edge means the dev objective may
    still improve beyond the grid: widen it there."""
    points = sorted(set(grid))
    if len(points) < 2:
        return None
    if value == points[0]:
        return "lowest"
    if value == points[-1]:
        return "highest"
    return None


def edge_warnings(selection: dict) -> list[str]:
    """One line per hyper-parameter of a selection (:func:`select_taskvector` or
    :func:`select_lambda` output) chosen at the edge of its grid."""
    return [
        f"{name} = {value} is the {edge} point of its grid {grid}: the dev optimum may lie "
        "beyond it; consider widening merge.select's grid"
        for name, value, grid, edge in selection.get("edges", [])
    ]


def _edges(items: Iterable[tuple[str, float, Sequence[float]]]) -> list[list]:
    return [
        [name, value, sorted(set(grid)), edge]
        for name, value, grid in items
        if (edge := grid_edge(value, grid)) is not None
    ]


def dev_score(
    base_dir,
    taskvectors: Sequence[str],
    method: str,
    lam: float,
    params: Sequence[dict],
    dev_jobs: Sequence[tuple[str, str, str]],
    decode_cfg: dict,
    device: str,
) -> float:
    """Merge into a temporary model dir, decode each (lang, task, dev_tsv), return
    :func:`objective`."""
    from .merge import merge_models  # torch: only when a dev merge runs

    with tempfile.TemporaryDirectory(prefix="speechmerge-select-") as tmp:
        model = Path(tmp) / "model"
        merge_models(base_dir, list(taskvectors), method, lam, list(params), model, progress=False)
        jobs = [
            (lang, task, tsv, Path(tmp) / f"{lang}-{task}.json") for lang, task, tsv in dev_jobs
        ]
        results = score_model(model, jobs, decode_cfg, device, system="dev-selection")
    return objective((r["task"], r["score"]) for r in results)


def select_taskvector(
    base_dir,
    taskvector: str,
    lang: str,
    task: str,
    dev_tsv: str,
    select_cfg: dict,
    decode_cfg: dict,
    device: str = "cpu",
    score_fn: Callable[[float, float], float] | None = None,
) -> dict:
    """Step 1: (r, p) of one task vector. `score_fn(r, p)` replaces the merge + decode (tests).

    ``select_cfg["rounding"]`` (set from ``merge.rounding: paper``) reaches the LoRS merges."""
    rounding = {"rounding": select_cfg["rounding"]} if "rounding" in select_cfg else {}
    if score_fn is None:

        def score_fn(r: float, p: float) -> float:
            params = [{"rank_ratio": r, "keep_ratio": p, **rounding}]
            return dev_score(
                base_dir,
                [taskvector],
                "lors",
                1.0,
                params,
                [(lang, task, dev_tsv)],
                decode_cfg,
                device,
            )

    grid = [(r, p) for r in select_cfg["rank_grid"] for p in select_cfg["keep_grid"]]
    (r, p), results = grid_search(grid, lambda rp: score_fn(*rp))
    return {
        "lang": lang,
        "task": task,
        "rank_ratio": r,
        "keep_ratio": p,
        "criterion": "dev objective of base + LoRS(tau) (lambda = 1): BLEU, or -WER for ASR",
        "dev_split": str(dev_tsv),
        "grid": [{"rank_ratio": c[0], "keep_ratio": c[1], "objective": s} for c, s in results],
        "edges": _edges(
            [("rank_ratio", r, select_cfg["rank_grid"]), ("keep_ratio", p, select_cfg["keep_grid"])]
        ),
    }


def select_lambda(
    base_dir,
    taskvectors: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    params: Sequence[dict],
    dev_tsvs: Sequence[str],
    methods: Sequence[str],
    select_cfg: dict,
    decode_cfg: dict,
    device: str = "cpu",
    setting: str = "",
    score_fn: Callable[[str, float], float] | None = None,
) -> dict:
    """Step 2: λ per method for one setting, with the task vectors' chosen (r, p) in `params`.
    `score_fn(method, λ)` replaces the merge + decode (tests)."""
    if score_fn is None:
        dev_jobs = [(lang, task, tsv) for (lang, task), tsv in zip(pairs, dev_tsvs)]

        def score_fn(method: str, lam: float) -> float:
            return dev_score(
                base_dir, taskvectors, method, lam, params, dev_jobs, decode_cfg, device
            )

    out: dict[str, Any] = {"setting": setting, "lambda": {}, "grid": {}}
    for method in methods:
        lam, results = grid_search(
            list(select_cfg["lambda_grid"]), lambda x, m=method: score_fn(m, x)
        )
        out["lambda"][method] = lam
        out["grid"][method] = [{"lambda": c, "objective": s} for c, s in results]
    out["edges"] = _edges(
        (f"lambda[{m}]", lam, select_cfg["lambda_grid"]) for m, lam in out["lambda"].items()
    )
    out["criterion"] = "mean dev objective over the setting's pairs: BLEU, or -WER for ASR"
    out["dev_splits"] = [str(t) for t in dev_tsvs]
    return out


def write_json(path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def selected_params(
    params: Sequence[dict], taskvector_selections: Sequence[str | Path]
) -> list[dict]:
    """`params` (from the config, in task-vector order) with each task vector's selected
    rank_ratio / keep_ratio."""
    if len(params) != len(taskvector_selections):
        raise ValueError(
            f"{len(taskvector_selections)} selection files for {len(params)} task vectors"
        )
    out = []
    for p, path in zip(params, taskvector_selections):
        sel = json.loads(Path(path).read_text())
        out.append({**p, "rank_ratio": sel["rank_ratio"], "keep_ratio": sel["keep_ratio"]})
    return out


def selected_lambda(lam: float, method: str, lambda_selection: str | Path | None) -> float:
    """The λ selected for `method` in a setting's selection file, else the config's `lam`."""
    if not lambda_selection:
        return lam
    sel = json.loads(Path(lambda_selection).read_text())
    return float(sel["lambda"].get(method, lam))
