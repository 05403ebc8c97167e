"""The paper's studies beyond Tables 1-4 (section 5.4-5.6, appendices A and B).

* Figure 3: performance against the number of merged languages. Every combination of k of
  the configured languages (k in ``study.num_languages.sizes``) is merged per task; a seeded
  sample of at most ``max_combinations`` combinations per size keeps large sets affordable.
* Figure 4: performance against the training data per language. ``study.data_scale.scales``
  multiply each language's train hours; every scale < 1 gets its own subsets, fine-tunes,
  task vectors and multi-lingual merges (scale 1 is the main run).
* Figure 5: single fine-tuned ASR models after SVP / MP of their task vector, against the
  retain ratio, at the same data scales.
* Tables 7-10: Tables 1-4 of the low-resource language set (``language_set``).

Pure functions of the config: the workflow (``rules/study.smk``) and pytest both call them.
"""

from __future__ import annotations

import itertools
import random

#: The paper's two language sets (section 4.1).
HIGH_RESOURCE = ("ca", "de", "es", "fr", "it")
LOW_RESOURCE = ("id", "nl", "pt", "ru", "sv")

#: Table numbers of the low-resource set: Tables 1-4 become Tables 7-10 (appendix B). Table 9
#: is per language (like Table 11 for the high-resource set), so it takes table11's layout.
LOW_RESOURCE_TABLES = {
    "table1": "table7",
    "table2": "table8",
    "table11": "table9",
    "table4": "table10",
}


def language_set(config: dict) -> str:
    """``high`` or ``low``: config ``language_set`` (``auto`` = ``low`` when every configured
    language is one of the paper's low-resource languages)."""
    value = config.get("language_set", "auto")
    if value == "auto":
        return "low" if set(config["languages"]) <= set(LOW_RESOURCE) else "high"
    return value


def table_name_map(config: dict) -> dict[str, str]:
    """{internal table name: published name} for this preset's language set. The
    low-resource set has no Table 3 twin (Table 9 carries the averages as columns)."""
    names = ("table1", "table2", "table3", "table4", "table11")
    if language_set(config) == "low":
        return {n: LOW_RESOURCE_TABLES[n] for n in names if n in LOW_RESOURCE_TABLES}
    return {n: n for n in names}


def fmt_scale(scale: float) -> str:
    """A data scale as it appears in paths (``0.5`` -> ``0.5``, ``1.0`` -> ``1``)."""
    return f"{float(scale):g}"


def language_combinations(
    langs: list[str], sizes: list[int], max_per_size: int | None = None, seed: int = 0
) -> dict[int, list[tuple[str, ...]]]:
    """{k: combinations of k languages} in config order, for every k in `sizes` with
    2 <= k <= len(langs) (k = 1 is a fine-tuned model, not a merge; larger k than there are
    languages is skipped). With `max_per_size`, sizes with more combinations keep a seeded
    random sample of that many (the same for the same seed, languages and k)."""
    out: dict[int, list[tuple[str, ...]]] = {}
    for k in sorted(set(sizes)):
        if k < 2 or k > len(langs):
            continue
        combs = list(itertools.combinations(langs, k))
        if max_per_size and len(combs) > max_per_size:
            rng = random.Random(f"{seed}-{k}-{'+'.join(langs)}")
            keep = set(rng.sample(range(len(combs)), max_per_size))
            combs = [c for i, c in enumerate(combs) if i in keep]
        out[k] = combs
    return out


def comb_setting(task: str, langs: tuple[str, ...] | list[str]) -> str:
    """The study setting merging `task` of these languages, e.g. ``comb-asr-ca+de``."""
    return f"comb-{task}-{'+'.join(langs)}"


def data_setting(task: str, scale: float) -> str:
    """The study setting merging `task` of every language at one data scale, e.g. ``data0.5-asr``."""
    return f"data{fmt_scale(scale)}-{task}"


def study_section(config: dict, key: str) -> dict | None:
    return (config.get("study") or {}).get(key)


def data_scales(config: dict) -> list[float]:
    """Figure 4/5 data scales (sorted); [] without ``study.data_scale``."""
    sec = study_section(config, "data_scale")
    return sorted({float(s) for s in sec["scales"]}) if sec else []


def reduced_scales(config: dict) -> list[str]:
    """The data scales that need their own subsets and fine-tunes (all but 1), as path strings."""
    return [fmt_scale(s) for s in data_scales(config) if s != 1.0]


def study_settings(config: dict) -> dict[str, dict]:
    """{study setting: {"pairs": [(lang, task), ...], "scale": float, "kind": main setting}}.

    ``kind`` is the main merge setting the study setting is a variant of (``ml-asr`` or
    ``ml-st``): its λ (config or dev-selected) is used.
    """
    langs, tasks = config["languages"], config["tasks"]
    out: dict[str, dict] = {}
    sec = study_section(config, "num_languages")
    if sec:
        combs = language_combinations(
            langs, sec["sizes"], sec.get("max_combinations"), config.get("seed", 0)
        )
        for task in tasks:
            for group in combs.values():
                for c in group:
                    out[comb_setting(task, c)] = {
                        "pairs": [(lang, task) for lang in c],
                        "scale": 1.0,
                        "kind": f"ml-{task}",
                    }
    if study_section(config, "data_scale") and len(langs) > 1:
        for scale in data_scales(config):
            for task in tasks:
                out[data_setting(task, scale)] = {
                    "pairs": [(lang, task) for lang in langs],
                    "scale": scale,
                    "kind": f"ml-{task}",
                }
    return out


def main_equivalent(config: dict, settings: dict, name: str, method: str) -> str | None:
    """The main merge setting that is the same merge as study setting `name` with `method`
    (every language, full data, a configured setting and method), else None. The workflow
    reuses its scores instead of merging twice."""
    st = study_settings(config)[name]
    kind = st["kind"]
    if (
        st["scale"] == 1.0
        and kind in settings
        and method in config["merge"]["methods"]
        and list(settings[kind]) == list(st["pairs"])
    ):
        return kind
    return None


def study_methods(config: dict, key: str) -> list[str]:
    sec = study_section(config, key)
    return list(sec["methods"]) if sec else []


def check_study(config: dict) -> None:
    """Fail early, naming the key, on study settings the workflow cannot serve."""
    merge_methods = set(config["merge"]["methods"])
    for key in ("num_languages", "data_scale"):
        extra = [m for m in study_methods(config, key) if m not in merge_methods]
        if extra:
            raise ValueError(
                f"config key 'study.{key}.methods': {extra} are not in 'merge.methods' "
                f"{sorted(merge_methods)}"
            )
    if study_section(config, "retain") and not data_scales(config):
        raise ValueError("config key 'study.retain' needs 'study.data_scale' (its data sizes)")
    if study_section(config, "retain") and "asr" not in config["tasks"]:
        raise ValueError("config key 'study.retain' needs 'asr' in 'tasks' (Figure 5 is ASR)")


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
    import tempfile
    from pathlib import Path

    from .decode import score_model
    from .hypotheses import file_stats
    from .merge import merge_models

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
    import json
    from pathlib import Path

    import pandas as pd

    from . import config as smcfg
    from .report import METHOD_NAMES

    tv_sel = {k: json.loads(Path(v).read_text()) for k, v in (taskvector_selections or {}).items()}
    lam_sel = {k: json.loads(Path(v).read_text()) for k, v in (lambda_selections or {}).items()}
    langs, methods = config["languages"], config["merge"]["methods"]
    tables = {}
    for name, task in (("table5", "asr"), ("table6", "st")):
        if task not in config["tasks"]:
            continue
        setting = f"ml-{task}"
        rows: dict[str, dict[str, float]] = {}
        rows["Finetuned: learning rate"] = {
            lang: smcfg.finetune_hparams(config, lang, task)["lr"] for lang in langs
        }
        # 1 = full fine-tuning (the paper), 0 = encoder frozen (decoder-only task vectors)
        rows["Finetuned: encoder trained (1 = full fine-tuning)"] = {
            lang: float(smcfg.finetune_hparams(config, lang, task).get("train_encoder", True))
            for lang in langs
        }
        joint = config.get("joint") or {}  # joint training (speechmerge.joint), if configured
        if setting in joint.get("settings", []) and "lr" in joint:
            lr = joint["lr"].get(setting, joint["lr"].get("default"))
            rows["Multi-lingual training: learning rate"] = {lang: lr for lang in langs}
        for m in methods:
            if m == "wa":
                continue
            lam = smcfg.merge_lambda(config, setting)
            if setting in lam_sel:
                lam = float(lam_sel[setting]["lambda"].get(m, lam))
            rows[f"{METHOD_NAMES[m]}: scaling factor λ"] = {lang: lam for lang in langs}
        params = smcfg.merge_params(config, [(lang, task) for lang in langs])
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
    from pathlib import Path

    from .io.atomic import atomic_write_text

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
