"""Tables 5 (ASR) and 6 (ST) of appendix A: the hyper-parameters a run actually used."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io.atomic import atomic_write_text
from ..plan.params import finetune_hparams, merge_lambda, merge_params
from ..plan.settings import HPARAM_TABLES, setting_methods
from .tables import METHOD_NAMES


def hparam_tables(
    config: dict,
    settings: dict,
    taskvector_selections: dict[str, str] | None = None,
    lambda_selections: dict[str, str] | None = None,
) -> dict:
    """Tables 5 (ASR) and 6 (ST) of appendix A: the hyper-parameters this run used, one column
    per language. λ is the one of the multi-lingual setting of the task (``ml-asr`` /
    ``ml-st``); r and p are per task vector. Values come from the dev-selection files when
    given ({"lang-task": path}, {setting: path}), else from the config. r and p in %."""
    tv_sel = {k: json.loads(Path(v).read_text()) for k, v in (taskvector_selections or {}).items()}
    lam_sel = {k: json.loads(Path(v).read_text()) for k, v in (lambda_selections or {}).items()}
    langs = config["languages"]
    tables = {}
    for name, task in HPARAM_TABLES:
        if task not in config["tasks"]:
            continue
        setting = f"ml-{task}"
        rows: dict[str, dict[str, float]] = {}
        rows["Finetuned: learning rate"] = {
            lang: finetune_hparams(config, lang, task)["lr"] for lang in langs
        }
        # 1 = full fine-tuning (the paper), 0 = encoder frozen (decoder-only task vectors)
        rows["Finetuned: encoder trained (1 = full fine-tuning)"] = {
            lang: float(finetune_hparams(config, lang, task).get("train_encoder", True))
            for lang in langs
        }
        joint = config.get("joint") or {}  # joint training, if configured
        if setting in joint.get("settings", []) and "lr" in joint:
            lr = joint["lr"].get(setting, joint["lr"].get("default"))
            rows["Multi-lingual training: learning rate"] = {lang: lr for lang in langs}
        for m in setting_methods(config, setting):
            if m == "wa":
                continue
            lam = merge_lambda(config, setting)
            if setting in lam_sel:
                lam = float(lam_sel[setting]["lambda"].get(m, lam))
            rows[f"{METHOD_NAMES[m]}: scaling factor λ"] = {lang: lam for lang in langs}
        params = merge_params(config, [(lang, task) for lang in langs])
        r, p = {}, {}
        for lang, prm in zip(langs, params):
            sel = tv_sel.get(f"{lang}-{task}", prm)
            r[lang], p[lang] = 100 * float(sel["rank_ratio"]), 100 * float(sel["keep_ratio"])
        rows["LoRS-Merging: SVP ratio r (%)"] = r
        rows["LoRS-Merging: MP ratio p (%)"] = p
        df = pd.DataFrame.from_dict(rows, orient="index")[langs]
        df.index.name = "Hyper-parameter"
        tables[name] = df
    return tables


HPARAM_CAPTIONS = {
    "table5": "ASR hyper-parameters actually used (appendix A).",
    "table6": "ST hyper-parameters actually used (appendix A).",
}


def write_hparam_tables(
    config: dict,
    settings: dict,
    csv_paths: list[str],
    taskvector_selections: dict[str, str] | None = None,
    lambda_selections: dict[str, str] | None = None,
) -> None:
    tables = hparam_tables(config, settings, taskvector_selections, lambda_selections)
    source = "dev-selected (results/selection)" if taskvector_selections else "from the config"
    for csv_path in map(Path, csv_paths):
        df = tables[csv_path.stem]
        title = (
            f"**{csv_path.stem.replace('table', 'Table ')}** ({config.get('preset', '')}): "
            f"{HPARAM_CAPTIONS[csv_path.stem]} λ, r and p {source}."
        )
        atomic_write_text(csv_path, df.to_csv())
        md = df.to_markdown(floatfmt=".3g")
        atomic_write_text(csv_path.with_suffix(".md"), f"{title}\n\n{md}\n")
