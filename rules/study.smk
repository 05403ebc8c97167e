# Stage: the paper's studies (speechmerge.study): Figure 3 (number of merged languages),
# Figure 4 (training data per language), Figure 5 (SVP / MP retain ratio) and Tables 5-6 (the
# hyper-parameters used). Each figure runs only when its `study.*` config section exists.
# Helpers: rules/study_common.smk.


rule subset_scaled:
    input:
        corpus=lambda w: corpus_dir(w.lang),
    output:
        f"{R}/subsets/{{lang}}/train@{{scale}}.tsv",
    log:
        "logs/subset/{lang}-train@{scale}.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        hours=lambda w: smcfg.train_hours(config, w.lang) * float(w.scale),
        scale=config["subset"]["scale"],
        seed=config["seed"],
    script:
        "../workflow_scripts/subset_scaled.py"


use rule finetune as finetune_scaled with:
    input:
        base=f"{R}/models/base",
        train=f"{R}/subsets/{{lang}}/train@{{scale}}.tsv",
    output:
        directory(f"{R}/models/finetuned@{{scale}}/{{lang}}-{{task}}"),
    log:
        "logs/finetune@{scale}/{lang}-{task}.log",
    benchmark:
        "benchmarks/finetune@{scale}/{lang}-{task}.tsv"


use rule taskvector as taskvector_scaled with:
    input:
        base=f"{R}/models/base",
        finetuned=f"{R}/models/finetuned@{{scale}}/{{lang}}-{{task}}",
    output:
        f"{R}/taskvectors@{{scale}}/{{lang}}-{{task}}.safetensors",
    log:
        "logs/taskvector@{scale}/{lang}-{task}.log",
    benchmark:
        "benchmarks/taskvector@{scale}/{lang}-{task}.tsv"


use rule score_pretrained as score_finetuned_scaled with:
    input:
        model=f"{R}/models/finetuned@{{scale}}/{{lang}}-{{task}}",
        test=lambda w: subset_tsv(w.lang, "test"),
    output:
        f"{R}/scores/finetuned@{{scale}}/{{lang}}-{{task}}.json",
    log:
        "logs/score/finetuned@{scale}/{lang}-{task}.log",
    benchmark:
        "benchmarks/score/finetuned@{scale}/{lang}-{task}.tsv"


# Figure 4's multi-lingual-training line below scale 1: the joint ml-{task} model trained
# on the scaled train subsets, for the sum of the scaled fine-tunes' optimiser steps (the
# budget rule of rules/joint.smk applied to the smaller data).
use rule joint as joint_scaled with:
    input:
        base=f"{R}/models/base",
        train=lambda w: [
            f"{R}/subsets/{lang}/train@{w.scale}.tsv"
            for lang in smjoint.pair_languages(JOINT[w.joint])
        ],
    output:
        directory(f"{R}/models/joint@{{scale}}/{{joint}}"),
    log:
        "logs/joint@{scale}/{joint}.log",
    benchmark:
        "benchmarks/joint@{scale}/{joint}.tsv"


use rule score_joint as score_joint_scaled with:
    input:
        model=f"{R}/models/joint@{{scale}}/{{joint}}",
        test=lambda w: [subset_tsv(lang, "test") for lang, _ in JOINT[w.joint]],
    output:
        directory(f"{R}/scores/joint@{{scale}}/{{joint}}"),
    log:
        "logs/score/joint@{scale}/{joint}.log",
    benchmark:
        "benchmarks/score/joint@{scale}/{joint}.tsv"


# A study merge uses the λ of its main setting (ml-asr / ml-st) and, with merge.select, the
# full-data (r, p) selected for each (language, task): one selection serves every variant.
use rule merge as merge_study with:
    input:
        base=f"{R}/models/base",
        taskvectors=lambda w: [
            taskvector_at(lang, task, smstudy.fmt_scale(STUDY[w.ssetting]["scale"]))
            for lang, task in STUDY[w.ssetting]["pairs"]
        ],
        sel_tv=lambda w: tv_selections(STUDY[w.ssetting]["pairs"], w.method),
        sel_lambda=lambda w: lambda_selections(STUDY[w.ssetting]["kind"], w.method),
    output:
        directory(f"{R}/merged/study/{{ssetting}}/{{method}}"),
    log:
        "logs/merge/study/{ssetting}/{method}.log",
    benchmark:
        "benchmarks/merge/study/{ssetting}/{method}.tsv"
    params:
        lam=lambda w: smcfg.merge_lambda(config, STUDY[w.ssetting]["kind"]),
        params=lambda w: smcfg.merge_params(config, STUDY[w.ssetting]["pairs"]),


use rule score_pretrained as score_study with:
    input:
        model=f"{R}/merged/study/{{ssetting}}/{{method}}",
        test=lambda w: [
            subset_tsv(lang, "test") for lang, _ in STUDY[w.ssetting]["pairs"]
        ],
    output:
        directory(f"{R}/scores/study/{{ssetting}}/{{method}}"),
    log:
        "logs/score/study/{ssetting}/{method}.log",
    benchmark:
        "benchmarks/score/study/{ssetting}/{method}.tsv"
    params:
        pairs=lambda w: STUDY[w.ssetting]["pairs"],
        decode=config["decode"],
        device=config.get("device", "auto"),


rule prune_sweep:
    input:
        base=f"{R}/models/base",
        taskvector=lambda w: taskvector_at(w.lang, "asr", w.dscale),
        test=lambda w: subset_tsv(w.lang, "test"),
    output:
        f"{R}/study/prune/{{dscale}}/{{lang}}-asr.json",
    log:
        "logs/study/prune/{dscale}/{lang}-asr.log",
    benchmark:
        "benchmarks/study/prune/{dscale}/{lang}-asr.tsv"
    conda:
        "../envs/speechmerge.yaml"
    threads: 1
    resources:
        gpu=1,
    params:
        ratios=RETAIN.get("ratios"),
        prunes=RETAIN.get("methods", ["svp", "mp"]),
        hours=lambda w: smcfg.train_hours(config, w.lang) * float(w.dscale),
        decode=config["decode"],
        device=config.get("device", "auto"),
    script:
        "../workflow_scripts/prune_sweep.py"


rule figure3:
    input:
        **fig3_inputs(),
    output:
        png=report(
            f"{R}/figures/fig3-num-languages.png",
            category="Figures",
            caption="../report/fig3.rst",
        ),
        csv=f"{R}/figures/fig3-num-languages.csv",
    log:
        "logs/report/fig3.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        preset=config["preset"],
        settings=lambda w: comb_settings(),
        finetuned=lambda w, input: os.path.dirname(input.finetuned[0]),
        merged=lambda w: fig3_dirs(),
        methods=smstudy.study_methods(config, "num_languages"),
    script:
        "../workflow_scripts/figure3.py"


rule figure4:
    input:
        fig4_inputs(),
    output:
        png=report(
            f"{R}/figures/fig4-data-scale.png",
            category="Figures",
            caption="../report/fig4.rst",
        ),
        csv=f"{R}/figures/fig4-data-scale.csv",
    log:
        "logs/report/fig4.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        preset=config["preset"],
        langs=LANGS,
        tasks=TASKS,
        scales=smstudy.data_scales(config),
        hours={lang: smcfg.train_hours(config, lang) for lang in LANGS},
        finetuned={s: finetuned_scores_at(s) for s in ALL_SCALES},
        merged=lambda w: fig4_dirs(),
        joint=lambda w: fig4_joint_dirs(),
        methods=smstudy.study_methods(config, "data_scale"),
    script:
        "../workflow_scripts/figure4.py"


rule figure5:
    input:
        fig5_inputs(),
    output:
        png=report(
            f"{R}/figures/fig5-retain-ratio.png",
            category="Figures",
            caption="../report/fig5.rst",
        ),
        csv=f"{R}/figures/fig5-retain-ratio.csv",
    log:
        "logs/report/fig5.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        preset=config["preset"],
    script:
        "../workflow_scripts/figure5.py"


rule hparam_tables:
    input:
        tv=[tv_selection(lang, task) for lang, task in PAIRS] if SELECT else [],
        lam=(
            [lambda_selection(s) for s in ("ml-asr", "ml-st") if s in SETTINGS]
            if SELECT
            else []
        ),
    output:
        csv=report(
            expand(f"{R}/tables/{{name}}.csv", name=hparam_table_names()),
            category="Tables",
            caption="../report/hparams.rst",
        ),
        md=expand(f"{R}/tables/{{name}}.md", name=hparam_table_names()),
    log:
        "logs/report/hparam_tables.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        config=config,
        settings=SETTINGS,
        tv=(
            {f"{lang}-{task}": tv_selection(lang, task) for lang, task in PAIRS}
            if SELECT
            else {}
        ),
        lam=(
            {s: lambda_selection(s) for s in ("ml-asr", "ml-st") if s in SETTINGS}
            if SELECT
            else {}
        ),
    script:
        "../workflow_scripts/hparam_tables.py"
