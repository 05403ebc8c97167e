# Stage: the paper's studies: Figure 3 (number of merged languages), Figure 4 (training data
# per language), Figure 5 (SVP / MP retain ratio) and Tables 5-6 (the hyper-parameters used).
# Each figure runs only when its `study.*` config section exists; what each needs is planned
# in speechmerge.plan (P.study, P.fig3_inputs() ...).


rule subset_scaled:
    input:
        corpus=lambda w: P.corpus_dir(w.lang),
    output:
        P.subset_tsv("{lang}", "train@{scale}"),
    log:
        "logs/subset/{lang}-train@{scale}.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        hours=lambda w: smparams.train_hours(config, w.lang) * float(w.scale),
        scale=config["subset"]["scale"],
        seed=config["seed"],
    script:
        "../workflow_scripts/subset_scaled.py"


use rule finetune as finetune_scaled with:
    input:
        base=P.base,
        train=P.subset_tsv("{lang}", "train@{scale}"),
    output:
        directory(P.finetuned("{lang}", "{task}", "{scale}")),
    log:
        "logs/finetune@{scale}/{lang}-{task}.log",
    benchmark:
        "benchmarks/finetune@{scale}/{lang}-{task}.tsv"


use rule taskvector as taskvector_scaled with:
    input:
        base=P.base,
        finetuned=P.finetuned("{lang}", "{task}", "{scale}"),
    output:
        P.taskvector("{lang}", "{task}", "{scale}"),
    log:
        "logs/taskvector@{scale}/{lang}-{task}.log",
    benchmark:
        "benchmarks/taskvector@{scale}/{lang}-{task}.tsv"


use rule score_pretrained as score_finetuned_scaled with:
    input:
        model=P.finetuned("{lang}", "{task}", "{scale}"),
        test=lambda w: P.test_tsv(w.lang, w.task),
    output:
        P.score_file("finetuned@{scale}", "{lang}", "{task}"),
    log:
        "logs/score/finetuned@{scale}/{lang}-{task}.log",
    benchmark:
        "benchmarks/score/finetuned@{scale}/{lang}-{task}.tsv"


# Figure 4's multi-lingual-training line below scale 1: the joint ml-{task} model trained
# on the scaled train subsets, for the sum of the scaled fine-tunes' optimiser steps (the
# budget rule of rules/joint.smk applied to the smaller data).
use rule joint as joint_scaled with:
    input:
        base=P.base,
        train=lambda w: [
            P.subset_tsv(lang, f"train@{w.scale}")
            for lang in smsettings.pair_languages(P.joint[w.joint])
        ],
    output:
        directory(P.joint_model("{joint}", "{scale}")),
    log:
        "logs/joint@{scale}/{joint}.log",
    benchmark:
        "benchmarks/joint@{scale}/{joint}.tsv"


use rule score_joint as score_joint_scaled with:
    input:
        model=P.joint_model("{joint}", "{scale}"),
        test=lambda w: pair_tests(P.joint[w.joint]),
    output:
        directory(P.scores("joint@{scale}/{joint}")),
    log:
        "logs/score/joint@{scale}/{joint}.log",
    benchmark:
        "benchmarks/score/joint@{scale}/{joint}.tsv"


# A study merge uses the λ of its main setting (ml-asr / ml-st) and, with merge.select, the
# full-data (r, p) selected for each (language, task): one selection serves every variant.
use rule merge as merge_study with:
    input:
        base=P.base,
        taskvectors=lambda w: P.study_taskvectors(w.ssetting),
        sel_tv=lambda w: P.tv_selections(P.study[w.ssetting]["pairs"], w.method),
        sel_lambda=lambda w: P.lambda_selections(P.study[w.ssetting]["kind"], w.method),
    output:
        directory(P.merged("study/{ssetting}", "{method}")),
    log:
        "logs/merge/study/{ssetting}/{method}.log",
    benchmark:
        "benchmarks/merge/study/{ssetting}/{method}.tsv"
    params:
        lam=lambda w: smparams.merge_lambda(config, P.study[w.ssetting]["kind"]),
        params=lambda w: smparams.merge_params(config, P.study[w.ssetting]["pairs"]),


use rule score_pretrained as score_study with:
    input:
        model=P.merged("study/{ssetting}", "{method}"),
        test=lambda w: pair_tests(P.study[w.ssetting]["pairs"]),
    output:
        directory(P.scores("study/{ssetting}/{method}")),
    log:
        "logs/score/study/{ssetting}/{method}.log",
    benchmark:
        "benchmarks/score/study/{ssetting}/{method}.tsv"
    params:
        pairs=lambda w: P.study[w.ssetting]["pairs"],
        decode=config["decode"],
        device=P.device,


rule prune_sweep:
    input:
        base=P.base,
        taskvector=lambda w: P.taskvector(w.lang, "asr", w.dscale),
        test=lambda w: P.test_tsv(w.lang, "asr"),
    output:
        P.prune_sweep("{dscale}", "{lang}"),
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
        ratios=P.retain.get("ratios"),
        prunes=P.retain.get("methods", ["svp", "mp"]),
        hours=lambda w: smparams.train_hours(config, w.lang) * float(w.dscale),
        decode=config["decode"],
        device=P.device,
    script:
        "../workflow_scripts/prune_sweep.py"


rule figure3:
    input:
        **P.fig3_inputs(),
    output:
        png=report(
            P.figure("fig3-num-languages", "png"),
            category="Figures",
            caption="../report/fig3.rst",
        ),
        csv=P.figure("fig3-num-languages", "csv"),
    log:
        "logs/report/fig3.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        preset=config["preset"],
        settings=lambda w: P.comb_settings(),
        finetuned=lambda w, input: os.path.dirname(input.finetuned[0]),
        merged=lambda w: P.fig3_dirs(),
        methods=smsettings.study_methods(config, "num_languages"),
    script:
        "../workflow_scripts/figure3.py"


rule figure4:
    input:
        P.fig4_inputs(),
    output:
        png=report(
            P.figure("fig4-data-scale", "png"),
            category="Figures",
            caption="../report/fig4.rst",
        ),
        csv=P.figure("fig4-data-scale", "csv"),
    log:
        "logs/report/fig4.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        preset=config["preset"],
        langs=P.langs,
        tasks=P.tasks,
        scales=smsettings.data_scales(config),
        hours={lang: smparams.train_hours(config, lang) for lang in P.langs},
        finetuned={s: P.finetuned_scores(s) for s in P.all_scales},
        merged=lambda w: P.fig4_dirs(),
        joint=lambda w: P.fig4_joint_dirs(),
        methods=smsettings.study_methods(config, "data_scale"),
    script:
        "../workflow_scripts/figure4.py"


rule figure5:
    input:
        P.fig5_inputs(),
    output:
        png=report(
            P.figure("fig5-retain-ratio", "png"),
            category="Figures",
            caption="../report/fig5.rst",
        ),
        csv=P.figure("fig5-retain-ratio", "csv"),
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
        tv=list(P.hparam_selections()[0].values()),
        lam=list(P.hparam_selections()[1].values()),
    output:
        csv=report(
            expand(P.table("{name}", "csv"), name=P.hparam_table_names()),
            category="Tables",
            caption="../report/hparams.rst",
        ),
        md=expand(P.table("{name}", "md"), name=P.hparam_table_names()),
    log:
        "logs/report/hparam_tables.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        config=config,
        settings=P.settings,
        tv=P.hparam_selections()[0],
        lam=P.hparam_selections()[1],
    script:
        "../workflow_scripts/hparam_tables.py"
