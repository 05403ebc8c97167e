"""Which merges, joint-training baselines, study variants and tables a config asks for.

* Merge settings (``merge.settings``): ``ml-asr``, ``ml-st``, ``mt`` (one ``mt-{lang}`` per
  language), ``mlmt``, and Table 4's training-then-merging settings, which merge joint
  models' task vectors (:func:`combined_settings`).
* Joint-training baselines (``joint.settings``; :mod:`speechmerge.joint` trains them).
* Study settings (``study.*``): Figure 3's language combinations, Figure 4's data scales
  (Figure 5's sweeps: :mod:`speechmerge.study`); Tables 7-10 for the low-resource set.
"""

from __future__ import annotations

import itertools
import random

from ..corpus import LOW_RESOURCE

SETTINGS_HELP = {
    "ml-asr": "multi-lingual ASR: the ASR task vectors of all languages",
    "ml-st": "multi-lingual ST: the ST task vectors of all languages",
    "mt": "multi-task, per language: that language's ASR and ST task vectors (mt-{lang})",
    "mlmt": "multi-lingual multi-task: every (language, task) task vector",
}

#: Training-then-merging settings of Table 4; they merge joint models' task vectors
#: (:func:`combined_settings`), so :func:`merge_settings` leaves them out.
COMBINED_SETTINGS = {
    "mttrain-mlmerge": "MT training, then ML merging: the mt-{lang} joint models' task vectors",
    "mltrain-mtmerge": "ML training, then MT merging: the ml-asr and ml-st joint models'",
}

#: ``merge.combined_methods`` when the config leaves it out.
DEFAULT_COMBINED_METHODS = ["ta", "lors"]

#: Table numbers of the low-resource set: Tables 1-4 become Tables 7-10 (appendix B). Table 9
#: is per language (like Table 11 for the high-resource set), so it takes table11's layout.
LOW_RESOURCE_TABLES = {
    "table1": "table7",
    "table2": "table8",
    "table11": "table9",
    "table4": "table10",
}

#: Tables 5-6 of appendix A (the hyper-parameters used) and the task of each.
HPARAM_TABLES = (("table5", "asr"), ("table6", "st"))


def merge_settings(config: dict) -> dict[str, list[tuple[str, str]]]:
    """{setting name: [(lang, task), ...]} for the configured settings.

    ``mt`` expands to one setting per language (``mt-ca`` …). A setting that would merge a
    single task vector (e.g. ``ml-asr`` with one language) is skipped: it is the fine-tuned
    model itself.
    """
    langs, tasks = config["languages"], config["tasks"]
    out: dict[str, list[tuple[str, str]]] = {}
    for s in config["merge"]["settings"]:
        if s in ("ml-asr", "ml-st"):
            task = s.split("-")[1]
            if task in tasks and len(langs) > 1:
                out[s] = [(lang, task) for lang in langs]
        elif s == "mt":
            if len(tasks) > 1:
                for lang in langs:
                    out[f"mt-{lang}"] = [(lang, t) for t in tasks]
        elif s == "mlmt":
            if len(tasks) > 1 and len(langs) > 1:
                out[s] = [(lang, t) for lang in langs for t in tasks]
        elif s not in COMBINED_SETTINGS:
            raise ValueError(
                f"merge.settings: unknown setting {s!r}; known: "
                f"{sorted(SETTINGS_HELP) + sorted(COMBINED_SETTINGS)}"
            )
    return out


def setting_kind(setting: str) -> str:
    return "mt" if setting.startswith("mt-") else setting


def joint_models(config: dict) -> dict[str, list[tuple[str, str]]]:
    """{joint model name: [(lang, task), ...] it trains on} for ``joint.settings``.

    Names and pairs are those of :func:`merge_settings` (``mt`` expands to ``mt-{lang}``; a
    setting of a single pair is skipped: it would be a fine-tune)."""
    settings = list((config.get("joint") or {}).get("settings") or [])
    sub = {"languages": config["languages"], "tasks": config["tasks"]}
    return merge_settings({**sub, "merge": {"settings": settings}})


def combined_settings(config: dict) -> dict[str, dict]:
    """{combined setting: {"models": [joint model names merged], "pairs": [(lang, task)
    scored]}} for the combined settings in ``merge.settings``.

    Fails, naming the keys, when a setting's joint models are not in ``joint.settings``.
    Skipped when it would merge one model (one language, or one task)."""
    langs, tasks = config["languages"], config["tasks"]
    joint = joint_models(config)
    pairs = [(lang, t) for lang in langs for t in tasks]
    out: dict[str, dict] = {}
    for s in config["merge"]["settings"]:
        if s not in COMBINED_SETTINGS or len(langs) < 2 or len(tasks) < 2:
            continue
        if s == "mttrain-mlmerge":
            models, needs = [f"mt-{lang}" for lang in langs], "mt"
        else:  # mltrain-mtmerge
            models, needs = [f"ml-{t}" for t in tasks], " and ".join(f"ml-{t}" for t in tasks)
        if any(m not in joint for m in models):
            raise ValueError(
                f"config key 'merge.settings': {s!r} merges joint models; add {needs} to "
                f"'joint.settings' (now {(config.get('joint') or {}).get('settings')})"
            )
        out[s] = {"models": models, "pairs": pairs}
    return out


def combined_methods(config: dict) -> list[str]:
    return list(config["merge"].get("combined_methods", DEFAULT_COMBINED_METHODS))


def setting_methods(config: dict, setting: str) -> list[str]:
    """The methods that merge `setting` (``mt-{lang}`` looked up as ``mt``):
    ``merge.setting_methods[kind]`` when given (a subset of ``merge.methods``, in its order),
    else ``merge.methods``. The paper's Table 4 merges ML + MT with TA and LoRS only."""
    methods = config["merge"]["methods"]
    chosen = (config["merge"].get("setting_methods") or {}).get(setting_kind(setting))
    return list(methods) if chosen is None else [m for m in methods if m in chosen]


def pair_languages(pairs: list[tuple[str, str]]) -> list[str]:
    """The languages of `pairs`, each once, in order of first appearance."""
    return list(dict.fromkeys(lang for lang, _ in pairs))


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


def study_methods(config: dict, key: str) -> list[str]:
    sec = study_section(config, key)
    return list(sec["methods"]) if sec else []


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
        and method in setting_methods(config, kind)
        and list(settings[kind]) == list(st["pairs"])
    ):
        return kind
    return None
