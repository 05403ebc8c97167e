"""One run's file names, the inputs of its jobs and the targets of ``rule all``."""

from __future__ import annotations

import re

from ..corpus import LANGUAGES
from .params import (
    RATIO_FREE_METHODS,
    combo,
    device,
    lambda_methods,
    select_config,
    test_hours,
    test_splits,
)
from .settings import (
    HPARAM_TABLES,
    combined_methods,
    combined_settings,
    data_scales,
    data_setting,
    fmt_scale,
    joint_models,
    main_equivalent,
    merge_settings,
    reduced_scales,
    setting_methods,
    study_methods,
    study_section,
    study_settings,
    table_name_map,
)

#: Where a run's outputs go (relative to the workflow's working directory).
RESULTS = "results"

#: The score folders (``{SCORES}/{system}/{lang}-{task}.json``); a system is named by its path.
SCORES = f"{RESULTS}/scores"


def _at(scale: str) -> str:
    """The path suffix of a data scale: none for the main run (``"1"``), else ``@{scale}``."""
    return "" if scale == "1" else f"@{scale}"


def _alternatives(names) -> str:
    return "|".join(re.escape(n) for n in names) or "NONE"


def _product(pattern: str, names, exts) -> list[str]:
    return [pattern.format(name=n, ext=e) for n in names for e in exts]


class Plan:
    """One run: its settings, jobs and file names (``rules/common.smk``: ``P = Plan(config)``).

    The path methods called with wildcards (``P.taskvector("{lang}", "{task}")``) give the
    rules' output patterns, so each file name is written once."""

    base = f"{RESULTS}/models/base"

    def __init__(self, config: dict):
        self.config = config
        self.langs, self.tasks = config["languages"], config["tasks"]
        self.pairs = [(lang, task) for lang in self.langs for task in self.tasks]
        self.methods = config["merge"]["methods"]
        self.device = device(config)
        self.settings = merge_settings(config)
        self.test_splits = test_splits(config)  # {task: "test"} or {task: "test-{task}"}
        # rule subset's splits: train, dev, then each distinct test split
        self.subset_splits = ["train", "dev", *dict.fromkeys(self.test_splits.values())]
        self.joint = joint_models(config)  # joint-training baselines (rules/joint.smk)
        self.combined = combined_settings(config)  # Table 4's training-then-merging settings
        self.combined_methods = combined_methods(config)
        self.select = select_config(config)
        self.study = study_settings(config)
        self.scales = reduced_scales(config)  # data scales < 1: own subsets and fine-tunes
        self.all_scales = [fmt_scale(s) for s in data_scales(config)]
        self.retain = study_section(config, "retain") or {}

    def wildcard_constraints(self) -> dict[str, str]:
        return {
            "lang": "|".join(LANGUAGES),
            "task": "|".join(self.tasks),
            "setting": _alternatives(self.settings),
            "method": "|".join(self.methods),
            "joint": _alternatives(self.joint),
            "combined": _alternatives(self.combined),
            "ssetting": _alternatives(self.study),
            "scale": _alternatives(self.scales),
            "dscale": _alternatives(self.all_scales),
        }

    # the files of one job
    def corpus_dir(self, lang: str) -> str:
        return f"{RESULTS}/corpus/{lang}"

    def subset_tsv(self, lang: str, split: str) -> str:
        return f"{RESULTS}/subsets/{lang}/{split}.tsv"

    def test_tsv(self, lang: str, task: str) -> str:
        """The test set of (lang, task): see :func:`~speechmerge.plan.params.test_splits`."""
        return self.subset_tsv(lang, self.test_splits[task])

    def subset_hours(self, lang_hours: dict[str, float]) -> dict[str, float]:
        """{split: hours} of rule subset, given train and dev: one test split per distinct
        test set (:attr:`test_splits`)."""
        tests = {split: test_hours(self.config, t) for t, split in self.test_splits.items()}
        return {**lang_hours, **tests}

    def methods_of(self, setting: str) -> list[str]:
        """The methods that merge `setting` (``merge.setting_methods``)."""
        return setting_methods(self.config, setting)

    def finetuned(self, lang: str, task: str, scale: str = "1") -> str:
        return f"{RESULTS}/models/finetuned{_at(scale)}/{lang}-{task}"

    def taskvector(self, lang: str, task: str, scale: str = "1") -> str:
        return f"{RESULTS}/taskvectors{_at(scale)}/{lang}-{task}.safetensors"

    def joint_model(self, name: str, scale: str = "1") -> str:
        return f"{RESULTS}/models/joint{_at(scale)}/{name}"

    def joint_taskvector(self, name: str) -> str:
        return f"{RESULTS}/taskvectors/joint/{name}.safetensors"

    def merged(self, setting: str, method: str) -> str:
        return f"{RESULTS}/merged/{setting}/{method}"

    def release(self, setting: str, method: str) -> str:
        """A merged model with its card's Scores section (rules/release.smk)."""
        return f"{RESULTS}/release/{setting}/{method}"

    def finetuned_scores(self, scale: str = "1") -> str:
        return self.scores(f"finetuned{_at(scale)}")

    def scores(self, system: str) -> str:
        """A system's score folder (``pretrained``, ``merged/{setting}/{method}`` …)."""
        return f"{SCORES}/{system}"

    def score_file(self, system: str, lang: str, task: str) -> str:
        return f"{SCORES}/{system}/{lang}-{task}.json"

    def tv_selection(self, lang: str, task: str) -> str:
        return f"{RESULTS}/selection/taskvectors/{lang}-{task}.json"

    def lambda_selection(self, setting: str) -> str:
        return f"{RESULTS}/selection/lambda/{setting}.json"

    def prune_sweep(self, dscale: str, lang: str) -> str:
        return f"{RESULTS}/study/prune/{dscale}/{lang}-asr.json"

    def table(self, name: str, ext: str) -> str:
        return f"{RESULTS}/tables/{name}.{ext}"

    def figure(self, name: str, ext: str) -> str:
        return f"{RESULTS}/figures/{name}.{ext}"

    # what a job reads
    def base_corpora(self) -> dict[str, str]:
        """The corpora the synthetic base is pretrained on (a fixed list, not `languages`)."""
        base = self.config["base"]
        if base["source"] != "synthetic":
            return {}
        return {lang: self.corpus_dir(lang) for lang in base["synthetic"]["languages"]}

    def tv_selections(self, pairs, method: str | None = None) -> list[str]:
        """The (r, p) selection files a merge of `pairs` with `method` reads ([] without
        merge.select, or for a method that reads neither r nor p, e.g. WA and TA: their merges
        do not wait for, nor rerun after, a selection that cannot change them)."""
        if not self.select or method in RATIO_FREE_METHODS:
            return []
        return [self.tv_selection(lang, task) for lang, task in pairs]

    def lambda_selections(self, setting: str, method: str | None = None) -> list[str]:
        """The λ selection file of a main setting ([] without merge.select, for other names, or
        for a method whose λ is not selected)."""
        if not self.select or setting not in self.settings:
            return []
        if method is not None and method not in lambda_methods(self.config):
            return []
        return [self.lambda_selection(setting)]

    def hparam_selections(self) -> tuple[dict[str, str], dict[str, str]]:
        """Tables 5-6's selection files: ({"lang-task": (r, p) file}, {setting: λ file})."""
        if not self.select:
            return {}, {}
        tv = {combo(lang, task): self.tv_selection(lang, task) for lang, task in self.pairs}
        main = [s for s in ("ml-asr", "ml-st") if s in self.settings]
        return tv, {s: self.lambda_selection(s) for s in main}

    def study_scores(self, name: str, method: str) -> str:
        """A study merge's score folder; the main run's when it is the same merge."""
        same = main_equivalent(self.config, self.settings, name, method)
        return self.scores(f"merged/{same}/{method}" if same else f"study/{name}/{method}")

    def study_taskvectors(self, name: str) -> list[str]:
        """The task vectors study setting `name` merges (at its data scale)."""
        st = self.study[name]
        return [self.taskvector(lang, t, fmt_scale(st["scale"])) for lang, t in st["pairs"]]

    def comb_settings(self) -> dict[str, dict]:
        return {k: v for k, v in self.study.items() if k.startswith("comb-")}

    def fig3_dirs(self) -> dict[str, str]:
        methods = study_methods(self.config, "num_languages")
        return {f"{s}/{m}": self.study_scores(s, m) for s in self.comb_settings() for m in methods}

    def fig3_inputs(self) -> dict[str, list[str]]:
        return {
            "finetuned": [self.score_file("finetuned", lang, task) for lang, task in self.pairs],
            "merged": sorted(set(self.fig3_dirs().values())),
        }

    def fig4_dirs(self) -> dict[str, str]:
        methods = study_methods(self.config, "data_scale")
        return {
            f"{s}/{task}/{m}": self.study_scores(data_setting(task, float(s)), m)
            for s in self.all_scales
            for task in self.tasks
            for m in methods
        }

    def fig4_joint_dirs(self) -> dict[str, str]:
        """Multi-lingual training score folders of Figure 4, {"scale/task": folder}: the joint
        ml-{task} model at scale 1, and at every scale < 1 the same model trained on the
        scaled train subsets (rule joint_scaled). Empty without joint ml-{task}."""
        return {
            f"{s}/{t}": self.scores(f"joint{_at(s)}/ml-{t}")
            for s in self.all_scales
            for t in self.tasks
            if f"ml-{t}" in self.joint
        }

    def fig4_inputs(self) -> list[str]:
        files = [
            f"{self.finetuned_scores(s)}/{lang}-{task}.json"
            for s in self.all_scales
            for lang, task in self.pairs
        ]
        dirs = sorted(set(self.fig4_dirs().values())) + sorted(set(self.fig4_joint_dirs().values()))
        return files + dirs

    def fig5_inputs(self) -> list[str]:
        return [self.prune_sweep(s, lang) for s in self.all_scales for lang in self.langs]

    def score_files(self) -> list[str]:
        """Every score file or folder of the tables: main run, joint and combined settings."""
        files = [
            self.score_file(k, lang, t)
            for k in ("pretrained", "finetuned")
            for lang, t in self.pairs
        ]
        files += [self.scores(f"merged/{s}/{m}") for s in self.settings for m in self.methods_of(s)]
        files += [self.scores(f"joint/{name}") for name in self.joint]
        return files + [
            self.scores(f"merged/{s}/{m}") for s in self.combined for m in self.combined_methods
        ]

    # what rule all asks for
    def release_dirs(self) -> list[str]:
        """Every scored merge's release dir: the main settings and Table 4's combined ones."""
        dirs = [self.release(s, m) for s in self.settings for m in self.methods_of(s)]
        return dirs + [self.release(s, m) for s in self.combined for m in self.combined_methods]

    def table_names(self) -> list[str]:
        """The paper's tables that the configured settings can fill."""
        names = []
        if "ml-asr" in self.settings:
            names.append("table1")
        if "ml-st" in self.settings:
            names.append("table2")
        if any(s.startswith("mt-") for s in self.settings):
            names += ["table3", "table11"]
        if "mlmt" in self.settings:
            names.append("table4")
        published = table_name_map(self.config)  # Tables 7-10 for the low-resource set
        return [published[n] for n in names if n in published]

    def hparam_table_names(self) -> list[str]:
        return [name for name, task in HPARAM_TABLES if task in self.tasks]

    def figure_names(self) -> list[str]:
        names = []
        if self.comb_settings() and study_methods(self.config, "num_languages"):
            names.append("fig3-num-languages")
        if any(k.startswith("data") for k in self.study):
            names.append("fig4-data-scale")
        if self.retain:
            names.append("fig5-retain-ratio")
        return names

    def final_targets(self) -> list[str]:
        tables = _product(self.table("{name}", "{ext}"), self.table_names(), ("csv", "md"))
        if self.settings:  # paired-bootstrap CIs of the comparisons (rules/report.smk)
            tables += [self.table("significance", "csv"), self.table("significance", "md")]
        figs = _product(self.figure("{name}", "{ext}"), self.figure_names(), ("png", "csv"))
        hparams = _product(self.table("{name}", "{ext}"), self.hparam_table_names(), ("csv", "md"))
        return tables + figs + hparams + self.release_dirs()
