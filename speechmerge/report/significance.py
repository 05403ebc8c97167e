"""``significance.csv``: every comparison the verdicts state, with its paired-bootstrap CI.

Per merge setting (``ml-asr``, ``ml-st``, ``mt`` = every ``mt-{lang}`` together, ``mlmt``) and
metric (WER for ASR, BLEU for ST), on the average over the setting's test sets (the tables'
Avg. columns): LoRS-Merging vs Task Arithmetic, Task Arithmetic vs Weight Averaging, the best
merge (of the paper's methods, by the tables' averages) vs joint training when it is
configured, and every merge vs the fine-tuned models. delta = A − B; CI and p-value from
:func:`speechmerge.metrics.compare` on the score files' hypotheses; the verdict is A's:
"better", "worse" or "no significant difference" (lower WER, higher BLEU is better; a
difference whose 95 % CI contains 0 is never a win).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..hypotheses import files_compare
from ..io.atomic import atomic_write_text
from ..metrics import LEVEL, RESAMPLES, SEED
from ..plan.settings import joint_models, setting_kind, setting_methods
from .tables import METHOD_NAMES, read_score

COLUMNS = [
    "setting",
    "metric",
    "system_a",
    "system_b",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "verdict",
]
#: The paper's merging methods: the best merge is chosen among these (as the verdicts' table).
PAPER_METHODS = ("wa", "ta", "mp", "svp", "lors")
FINETUNED = "Finetuned"
JOINT = "Joint training"
METRICS = (("asr", "WER"), ("st", "BLEU"))


def setting_groups(settings: dict) -> dict[str, list[str]]:
    """{setting kind: its merge settings}: ``mt`` gathers ``mt-{lang}``, others are alone."""
    groups: dict[str, list[str]] = {}
    for s in settings:
        groups.setdefault(setting_kind(s), []).append(s)
    return groups


def systems(config: dict, settings: dict, scores_root, group: list[str], task: str) -> dict:
    """{system name: [score JSON per test set]} of one setting group and task, test sets in
    the same order for every system: the fine-tuned models, each merge, joint training."""
    root = Path(scores_root)
    tests = [(s, lang) for s in group for lang, t in settings[s] if t == task]
    out = {FINETUNED: [root / "finetuned" / f"{lang}-{task}.json" for _, lang in tests]}
    for m in setting_methods(config, group[0]):
        out[METHOD_NAMES[m]] = [
            root / "merged" / s / m / f"{lang}-{task}.json" for s, lang in tests
        ]
    joint = joint_models(config)
    if all(s in joint for s in group):
        out[JOINT] = [root / "joint" / s / f"{lang}-{task}.json" for s, lang in tests]
    return out


def comparisons(systems_: dict, lower_is_better: bool) -> list[tuple[str, str]]:
    """(A, B) pairs the verdicts state, for the systems present."""
    names = {METHOD_NAMES[m]: m for m in METHOD_NAMES}
    merges = [s for s in systems_ if s in names]
    pairs = []
    for a, b in (("lors", "ta"), ("ta", "wa")):
        if METHOD_NAMES[a] in systems_ and METHOD_NAMES[b] in systems_:
            pairs.append((METHOD_NAMES[a], METHOD_NAMES[b]))
    paper = [s for s in merges if names[s] in PAPER_METHODS]
    if JOINT in systems_ and paper:
        mean = {s: sum(map(read_score, systems_[s])) / len(systems_[s]) for s in paper}
        best = (min if lower_is_better else max)(paper, key=mean.get)
        pairs.append((best, JOINT))
    pairs += [(m, FINETUNED) for m in merges]
    return pairs


def significance_table(config: dict, settings: dict, scores_root, **kw) -> pd.DataFrame:
    """One row per comparison (see the module doc); columns :data:`COLUMNS`."""
    rows = []
    for kind, group in setting_groups(settings).items():
        for task, metric in METRICS:
            if not any(t == task for s in group for _, t in settings[s]):
                continue
            sys_ = systems(config, settings, scores_root, group, task)
            for a, b in comparisons(sys_, lower_is_better=task == "asr"):
                r = files_compare(sys_[a], sys_[b], **kw)
                rows.append({"setting": kind, "metric": metric, "system_a": a, "system_b": b, **r})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_significance(config: dict, settings: dict, scores_root, csv_path) -> pd.DataFrame:
    """Write ``significance.csv`` and its ``.md`` twin (atomically)."""
    df = significance_table(config, settings, scores_root)
    csv_path = Path(csv_path)
    atomic_write_text(csv_path, df.to_csv(index=False, float_format="%.6g"))
    title = (
        f"**Significance** ({config.get('preset', '')}): delta = A − B on the average over the "
        f"setting's test sets, its {100 * LEVEL:g} % paired-bootstrap CI over test utterances "
        f"({RESAMPLES} resamples, seed {SEED}) and two-sided p-value; the verdict is A's "
        "(WER: lower is better; BLEU: higher)."
    )
    md = df.to_markdown(index=False, floatfmt=".3g")
    atomic_write_text(csv_path.with_suffix(".md"), f"{title}\n\n{md}\n")
    return df
