# Path helpers and per-job config lookups. Every helper reads only its own job's entries
# (speechmerge.config), so adding a language never changes another job's params.
import os
import re

from speechmerge import config as smcfg
from speechmerge import joint as smjoint
from speechmerge import study as smstudy
from speechmerge.corpus import LANGUAGES as ALL_LANGS

smcfg.check_config(config)
smcfg.canonicalize(config)  # params do not depend on the order of keys in a file

LANGS = config["languages"]
TASKS = config["tasks"]
PAIRS = [(lang, task) for lang in LANGS for task in TASKS]
SETTINGS = smcfg.merge_settings(config)
JOINT = smjoint.joint_models(config)  # joint-training baselines (rules/joint.smk)
COMBINED = smjoint.combined_settings(config)  # Table 4's training-then-merging settings
COMBINED_METHODS = smjoint.combined_methods(config)
METHODS = config["merge"]["methods"]
R = "results"


wildcard_constraints:
    lang="|".join(ALL_LANGS),
    task="|".join(TASKS),
    setting="|".join(re.escape(s) for s in SETTINGS) or "NONE",
    method="|".join(METHODS),


def corpus_dir(lang):
    return f"{R}/corpus/{lang}"


def subset_tsv(lang, split):
    return f"{R}/subsets/{lang}/{split}.tsv"


def taskvector(lang, task):
    return f"{R}/taskvectors/{lang}-{task}.safetensors"


def base_corpora(wildcards):
    """The corpora the synthetic base is pretrained on (a fixed list, not `languages`)."""
    if config["base"]["source"] != "synthetic":
        return {}
    return {lang: corpus_dir(lang) for lang in config["base"]["synthetic"]["languages"]}


def setting_taskvectors(wildcards):
    return [taskvector(lang, task) for lang, task in SETTINGS[wildcards.setting]]


def setting_tests(wildcards):
    return [subset_tsv(lang, "test") for lang, _ in SETTINGS[wildcards.setting]]


def score_files():
    files = [f"{R}/scores/pretrained/{lang}-{task}.json" for lang, task in PAIRS]
    files += [f"{R}/scores/finetuned/{lang}-{task}.json" for lang, task in PAIRS]
    files += [
        f"{R}/scores/merged/{setting}/{method}"
        for setting in SETTINGS
        for method in METHODS
    ]
    files += [f"{R}/scores/joint/{name}" for name in JOINT]
    files += [f"{R}/scores/merged/{s}/{m}" for s in COMBINED for m in COMBINED_METHODS]
    return files


def table_names():
    """The paper's tables that the configured settings can fill."""
    names = []
    if "ml-asr" in SETTINGS:
        names.append("table1")
    if "ml-st" in SETTINGS:
        names.append("table2")
    if any(s.startswith("mt-") for s in SETTINGS):
        names += ["table3", "table11"]
    if "mlmt" in SETTINGS:
        names.append("table4")
    published = smstudy.table_name_map(config)  # Tables 7-10 for the low-resource set
    return [published[n] for n in names if n in published]


def final_targets():
    tables = expand(
        f"{R}/tables/{{name}}.{{ext}}", name=table_names(), ext=["csv", "md"]
    )
    if SETTINGS:  # paired-bootstrap CIs of the comparisons (rules/report.smk)
        tables += [f"{R}/tables/significance.csv", f"{R}/tables/significance.md"]
    return tables + study_targets()  # rules/study.smk
