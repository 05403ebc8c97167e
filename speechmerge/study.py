"""Figure 5's measurement: single fine-tuned ASR models after SVP / MP of their task vector,
decoded at every retain ratio (paper section 5.6).

The studies' settings (Figure 3's language combinations, Figure 4's data scales) are planned
in :mod:`speechmerge.plan.settings`, their merges and scores run as the main run's do, and the
figures are drawn by :mod:`speechmerge.report.figures`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .decode import score_model
from .hypotheses import file_stats
from .merge import merge_models


def prune_sweep(
    base_dir,
    taskvector: str,
    lang: str,
    task: str,
    test_tsv: str,
    prune: str,
    ratios: list[float],
    decode_cfg: dict,
    device: str = "cpu",
    meta: dict | None = None,
) -> dict:
    """Figure 5: ``θ0 + SVP(τ, r)`` (prune ``svp``) or ``θ0 + MP(τ, p)`` (``mp``) for every
    retain ratio, each decoded and scored on `test_tsv`. Ratio 1 keeps τ whole (the
    fine-tuned model itself). Each point keeps its per-utterance statistics (``stats``,
    :func:`speechmerge.metrics.utterance_stats`) for the CIs of averages over languages."""
    key = {"svp": "rank_ratio", "mp": "keep_ratio"}[prune]
    points = []
    for ratio in sorted(ratios):
        with tempfile.TemporaryDirectory(prefix="speechmerge-sweep-") as tmp:
            model = Path(tmp) / "model"
            merge_models(base_dir, [taskvector], prune, 1.0, [{key: ratio}], model, progress=False)
            jobs = [(lang, task, test_tsv, Path(tmp) / f"{lang}-{task}.json")]
            (res,) = score_model(model, jobs, decode_cfg, device, system=f"{prune}-sweep")
            _, _, stats = file_stats(jobs[0][3])  # per utterance, for Figure 5's CIs
        points.append(
            {
                "retain": ratio,
                "score": res["score"],
                "metric": res["metric"],
                "ci_low": res["ci_low"],
                "ci_high": res["ci_high"],
                "stats": stats.tolist(),
            }
        )
    return {"lang": lang, "task": task, "prune": prune, **(meta or {}), "points": points}
