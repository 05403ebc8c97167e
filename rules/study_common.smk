# Path helpers and config lookups of the dev selection (rules/select.smk) and the paper's
# studies (rules/study.smk): Figures 3-5 and Tables 5-6 (speechmerge.select, speechmerge.study).
from speechmerge import select as smselect

smstudy.check_study(config)

SELECT = config["merge"].get("select")
if SELECT is not None:  # merge.rounding: paper reaches the dev merges too
    SELECT = {**SELECT, **smcfg.rounding_params(config)}


def tv_selection(lang, task):
    return f"{R}/selection/taskvectors/{lang}-{task}.json"


def lambda_selection(setting):
    return f"{R}/selection/lambda/{setting}.json"


def tv_selections(pairs, method=None):
    """The (r, p) selection files a merge of `pairs` with `method` reads ([] without
    merge.select, or for a method that reads neither r nor p, e.g. WA and TA: their merges
    do not wait for, nor rerun after, a selection that cannot change them)."""
    if not SELECT or method in smselect.RATIO_FREE_METHODS:
        return []
    return [tv_selection(lang, task) for lang, task in pairs]


def lambda_selections(setting, method=None):
    """The λ selection file of a main setting ([] without merge.select, for other names, or
    for a method whose λ is not selected)."""
    if not SELECT or setting not in SETTINGS:
        return []
    if method is not None and method not in smselect.lambda_methods(config):
        return []
    return [lambda_selection(setting)]


STUDY = smstudy.study_settings(config)
SCALES = smstudy.reduced_scales(config)  # data scales < 1: own subsets and fine-tunes
ALL_SCALES = [smstudy.fmt_scale(s) for s in smstudy.data_scales(config)]
RETAIN = smstudy.study_section(config, "retain") or {}


wildcard_constraints:
    ssetting="|".join(re.escape(s) for s in STUDY) or "NONE",
    scale="|".join(re.escape(s) for s in SCALES) or "NONE",
    dscale="|".join(re.escape(s) for s in ALL_SCALES) or "NONE",


def finetuned_at(lang, task, scale):
    if scale == "1":
        return f"{R}/models/finetuned/{lang}-{task}"
    return f"{R}/models/finetuned@{scale}/{lang}-{task}"


def taskvector_at(lang, task, scale):
    if scale == "1":
        return taskvector(lang, task)
    return f"{R}/taskvectors@{scale}/{lang}-{task}.safetensors"


def finetuned_scores_at(scale):
    return f"{R}/scores/finetuned" if scale == "1" else f"{R}/scores/finetuned@{scale}"


def study_scores(name, method):
    """A study merge's score folder; the main run's when it is the same merge."""
    same = smstudy.main_equivalent(config, SETTINGS, name, method)
    if same:
        return f"{R}/scores/merged/{same}/{method}"
    return f"{R}/scores/study/{name}/{method}"


def comb_settings():
    return {k: v for k, v in STUDY.items() if k.startswith("comb-")}


def fig3_dirs():
    methods = smstudy.study_methods(config, "num_languages")
    return {f"{s}/{m}": study_scores(s, m) for s in comb_settings() for m in methods}


def fig3_inputs():
    return {
        "finetuned": [
            f"{R}/scores/finetuned/{lang}-{task}.json" for lang, task in PAIRS
        ],
        "merged": sorted(set(fig3_dirs().values())),
    }


def fig4_dirs():
    methods = smstudy.study_methods(config, "data_scale")
    return {
        f"{s}/{task}/{m}": study_scores(smstudy.data_setting(task, float(s)), m)
        for s in ALL_SCALES
        for task in TASKS
        for m in methods
    }


def fig4_joint_dirs():
    """Multi-lingual training score folders of Figure 4, {"scale/task": folder}: the joint
    ml-{task} model of rules/joint.smk at scale 1, and at every scale < 1 the same model
    trained on the scaled train subsets (rule joint_scaled). Empty without joint ml-{task}.
    """
    joint = globals().get("JOINT", {})
    return {
        f"{s}/{t}": joint_scores_at(s, f"ml-{t}")
        for s in ALL_SCALES
        for t in TASKS
        if f"ml-{t}" in joint
    }


def joint_scores_at(scale, name):
    """Score folder of joint model `name` trained at data scale `scale` ("1": the main one)."""
    return (
        f"{R}/scores/joint/{name}"
        if scale == "1"
        else f"{R}/scores/joint@{scale}/{name}"
    )


def fig4_inputs():
    files = [
        f"{finetuned_scores_at(s)}/{lang}-{task}.json"
        for s in ALL_SCALES
        for lang, task in PAIRS
    ]
    return (
        files
        + sorted(set(fig4_dirs().values()))
        + sorted(set(fig4_joint_dirs().values()))
    )


def fig5_inputs():
    return [
        f"{R}/study/prune/{s}/{lang}-asr.json" for s in ALL_SCALES for lang in LANGS
    ]


def figure_names():
    names = []
    if comb_settings() and smstudy.study_methods(config, "num_languages"):
        names.append("fig3-num-languages")
    if any(k.startswith("data") for k in STUDY):
        names.append("fig4-data-scale")
    if RETAIN:
        names.append("fig5-retain-ratio")
    return names


def hparam_table_names():
    return [
        name for name, task in (("table5", "asr"), ("table6", "st")) if task in TASKS
    ]


def study_targets():
    figs = expand(
        f"{R}/figures/{{name}}.{{ext}}", name=figure_names(), ext=["png", "csv"]
    )
    tables = expand(
        f"{R}/tables/{{name}}.{{ext}}", name=hparam_table_names(), ext=["csv", "md"]
    )
    return figs + tables
