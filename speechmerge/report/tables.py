"""The paper's tables from score files (pandas → CSV + a Markdown twin).

Score files: ``{scores}/pretrained/{lang}-{task}.json``, ``{scores}/finetuned/{lang}-{task}.json``,
``{scores}/merged/{setting}/{method}/{lang}-{task}.json`` and, for the joint-training
baselines, ``{scores}/joint/{name}/{lang}-{task}.json`` (see :func:`speechmerge.decode.score_model`).

Every average column (``Avg.``, ``WER Avg.``, ...) gets its 95 % paired-bootstrap CI from the
score files' hypotheses (:mod:`speechmerge.hypotheses`) as two more CSV columns, ``<column> CI
low`` and ``<column> CI high``, after the existing ones; the Markdown twin shows them as
``value [low, high]``. Score files without hypotheses (written by hand) give no CI columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..hypotheses import files_ci, hyp_path
from ..io.atomic import atomic_write_text
from ..merge.registry import METHOD_NAMES
from ..plan.settings import (
    combined_methods,
    combined_settings,
    joint_models,
    setting_methods,
    table_name_map,
)

CAPTIONS = {
    "table1": "Multi-lingual ASR model merging (WER ↓, %). Finetuned is the topline; Avg. averages WER directly.",
    "table2": "Multi-lingual ST model merging (BLEU ↑). Finetuned is the topline; Avg. averages BLEU directly.",
    "table3": "Multi-task model merging performed on each language independently; WER/BLEU averaged across languages.",
    "table4": "Multi-lingual multi-task model merging (all task vectors). Avg. averages WER or BLEU directly. With joint training configured: ML and MT training; MT training (per language) and it + ML merging of the per-language models; ML training (per task) and it + MT merging of the per-task models.",
    "table11": "Multi-task model merging, per-language detail of Table 3.",
    # The low-resource language set (appendix B; speechmerge.plan.settings.table_name_map).
    "table7": "Multi-lingual ASR model merging, low-resource set (WER ↓, %). Finetuned is the topline.",
    "table8": "Multi-lingual ST model merging, low-resource set (BLEU ↑). Finetuned is the topline.",
    "table9": "Multi-task model merging on each language independently, low-resource set; Avg. averages WER or BLEU directly.",
    "table10": "Multi-lingual multi-task model merging, low-resource set. Avg. averages WER or BLEU directly.",
}


class Score(float):
    """A score as read from its file; ``path`` (the score JSON) leads to its hypotheses."""

    path: Path

    def __new__(cls, value: float, path: str | Path):
        obj = super().__new__(cls, value)
        obj.path = Path(path)
        return obj


def read_score(path: str | Path) -> Score:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"score file missing: {path}")
    data = json.loads(path.read_text())
    if "score" not in data:
        raise ValueError(f"{path}: no 'score' key")
    return Score(float(data["score"]), path)


CI_SUFFIXES = (" CI low", " CI high")


def average_ci(cells) -> tuple[float, float] | None:
    """The paired-bootstrap 95 % CI of the mean of `cells` (:class:`Score`), or None when a
    cell has no hypotheses file to resample."""
    paths = [getattr(c, "path", None) for c in cells]
    if any(p is None or not hyp_path(p).exists() for p in paths):
        return None
    ci = files_ci(paths)
    return ci["ci_low"], ci["ci_high"]


def _add_ci(df: pd.DataFrame, column: str, cells: dict[str, list]) -> None:
    """Append ``column`` CI low / high (every row's CI of the mean of its `cells`), if every
    row has hypotheses."""
    cis = {system: average_ci(c) for system, c in cells.items()}
    if all(cis.values()):
        for i, suffix in enumerate(CI_SUFFIXES):
            df[column + suffix] = [cis[system][i] for system in df.index]


class Scores:
    """Lookup of score files under one `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def pretrained(self, lang: str, task: str) -> float:
        return read_score(self.root / "pretrained" / f"{lang}-{task}.json")

    def finetuned(self, lang: str, task: str) -> float:
        return read_score(self.root / "finetuned" / f"{lang}-{task}.json")

    def merged(self, setting: str, method: str, lang: str, task: str) -> float:
        return read_score(self.root / "merged" / setting / method / f"{lang}-{task}.json")

    def joint(self, name: str, lang: str, task: str) -> float:
        return read_score(self.root / "joint" / name / f"{lang}-{task}.json")


def _training_rows(config: dict, s: Scores, pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """Table 4's joint-training rows, each followed by its training-then-merging rows (paper
    Table 4): "ML and MT training"; "MT training", "MT training + ML <method>"; "ML training",
    "ML training + MT <method>". Only the configured ones."""
    joint, combined = joint_models(config), combined_settings(config)
    rows: dict[str, dict] = {}
    if "mlmt" in joint:
        rows["ML and MT training"] = {p: s.joint("mlmt", *p) for p in pairs}
    # (row, the joint model of a pair, the combined setting merging those models, its rows)
    for row, model, setting, merged in (
        ("MT training", lambda lang, t: f"mt-{lang}", "mttrain-mlmerge", "MT training + ML"),
        ("ML training", lambda lang, t: f"ml-{t}", "mltrain-mtmerge", "ML training + MT"),
    ):
        if all(model(*p) in joint for p in pairs):
            rows[row] = {p: s.joint(model(*p), *p) for p in pairs}
        if setting in combined:
            for m in combined_methods(config):
                rows[f"{merged} {METHOD_NAMES[m]}"] = {p: s.merged(setting, m, *p) for p in pairs}
    return rows


def _per_language(rows: dict[str, dict[str, float]], langs: list[str]) -> pd.DataFrame:
    df = pd.DataFrame.from_dict(rows, orient="index")[langs]
    df["Avg."] = df[langs].mean(axis=1)
    df.index.name = "System"
    _add_ci(df, "Avg.", {system: [v[lang] for lang in langs] for system, v in rows.items()})
    return df


def _two_task(rows: dict[str, dict[tuple[str, str], float]], langs: list[str]) -> pd.DataFrame:
    out = {}
    for system, vals in rows.items():
        rec = {}
        for task, metric in (("asr", "WER"), ("st", "BLEU")):
            xs = [vals[(lang, task)] for lang in langs]
            rec.update({f"{metric} {lang}": x for lang, x in zip(langs, xs)})
            rec[f"{metric} Avg."] = sum(xs) / len(xs)
        out[system] = rec
    df = pd.DataFrame.from_dict(out, orient="index")
    df.index.name = "System"
    for task, metric in (("asr", "WER"), ("st", "BLEU")):
        cells = {system: [v[(lang, task)] for lang in langs] for system, v in rows.items()}
        _add_ci(df, f"{metric} Avg.", cells)
    return df


def build_tables(config: dict, settings: dict, scores_root: str | Path) -> dict[str, pd.DataFrame]:
    """The tables the configured settings can fill: table1 (ML ASR), table2 (ML ST),
    table3/table11 (MT per language), table4 (ML + MT). Configured joint-training baselines
    (``joint.settings``) add their rows after Finetuned, as in the paper: "Multi-lingual
    training" (tables 1, 2), "Multi-task training" (3, 11); Table 4 also gets the
    training-then-merging rows (:func:`_training_rows`)."""
    s = Scores(scores_root)
    langs = config["languages"]
    joint = joint_models(config)
    tables: dict[str, pd.DataFrame] = {}
    for name, setting, task in (("table1", "ml-asr", "asr"), ("table2", "ml-st", "st")):
        if setting not in settings:
            continue
        rows = {
            "Pretrained": {lang: s.pretrained(lang, task) for lang in langs},
            "Finetuned": {lang: s.finetuned(lang, task) for lang in langs},
        }
        if setting in joint:
            rows["Multi-lingual training"] = {lang: s.joint(setting, lang, task) for lang in langs}
        for m in setting_methods(config, setting):
            rows[METHOD_NAMES[m]] = {lang: s.merged(setting, m, lang, task) for lang in langs}
        tables[name] = _per_language(rows, langs)
    pairs = [(lang, t) for lang in langs for t in ("asr", "st")]
    base_rows = {
        "Pretrained": {p: s.pretrained(*p) for p in pairs},
        "Finetuned": {p: s.finetuned(*p) for p in pairs},
    }
    if all(f"mt-{lang}" in settings for lang in langs):
        rows = dict(base_rows)
        if all(f"mt-{lang}" in joint for lang in langs):
            rows["Multi-task training"] = {
                (lang, t): s.joint(f"mt-{lang}", lang, t) for lang, t in pairs
            }
        for m in setting_methods(config, "mt"):
            rows[METHOD_NAMES[m]] = {
                (lang, t): s.merged(f"mt-{lang}", m, lang, t) for lang, t in pairs
            }
        detail = _two_task(rows, langs)
        avg = [c for c in detail.columns if c.startswith(("WER Avg.", "BLEU Avg."))]
        tables["table3"] = detail[avg].rename(
            columns=lambda c: c.replace("WER Avg.", "Avg. WER").replace("BLEU Avg.", "Avg. BLEU")
        )
        tables["table11"] = detail
    if "mlmt" in settings:
        rows = dict(base_rows)
        training = _training_rows(config, s, pairs)
        if "ML and MT training" in training:
            rows["ML and MT training"] = training.pop("ML and MT training")
        for m in setting_methods(config, "mlmt"):
            rows[f"ML and MT {METHOD_NAMES[m]}"] = {p: s.merged("mlmt", m, *p) for p in pairs}
        rows.update(training)
        tables["table4"] = _two_task(rows, langs)
    return tables


def to_markdown(df: pd.DataFrame, title: str) -> str:
    """The table in Markdown, 2 decimals; a column with CI columns shows ``value [low, high]``."""
    low, high = CI_SUFFIXES
    out = df.drop(columns=[c for c in df.columns if c.endswith(CI_SUFFIXES)])
    if len(out.columns) == len(df.columns):
        return f"{title}\n\n{df.round(2).to_markdown(floatfmt='.2f')}\n"
    out = out.map(lambda x: f"{x:.2f}")
    for c in out.columns:
        if c + low in df.columns:
            out[c] = [
                f"{v:.2f} [{lo:.2f}, {hi:.2f}]"
                for v, lo, hi in zip(df[c], df[c + low], df[c + high])
            ]
    return f"{title}\n\n{out.to_markdown(disable_numparse=True)}\n"


def write_tables(config: dict, settings: dict, scores_root, csv_paths: list[str]) -> None:
    """Write each requested ``tableN.csv`` and its ``tableN.md`` twin (atomically)."""
    published = table_name_map(config)  # Tables 7-10 for the low-resource set
    tables = {
        published[k]: v
        for k, v in build_tables(config, settings, scores_root).items()
        if k in published
    }
    for csv_path in map(Path, csv_paths):
        name = csv_path.stem
        if name not in tables:
            raise ValueError(f"{csv_path}: the configured settings do not produce {name}")
        df = tables[name]
        if df.isna().any().any():
            raise ValueError(f"{name}: empty cells in {df[df.isna().any(axis=1)].index.tolist()}")
        title = (
            f"**{name.replace('table', 'Table ')}** ({config.get('preset', '')}): {CAPTIONS[name]}"
        )
        if any(c.endswith(CI_SUFFIXES) for c in df.columns):
            title += " Averages: value [95 % paired-bootstrap CI over test utterances]."
        atomic_write_text(csv_path, df.round(4).to_csv())
        atomic_write_text(csv_path.with_suffix(".md"), to_markdown(df, title))
