# Stage: dev-set selection (speechmerge.select) of each task vector's (r, p) and of each merge
# setting's λ per method, from the grids in `merge.select`. Only the DEV split is decoded.
# Without `merge.select` nothing here runs and the merges take λ, r and p from the config.
# Helpers: rules/study_common.smk.


rule select_taskvector:
    input:
        base=f"{R}/models/base",
        taskvector=lambda w: taskvector(w.lang, w.task),
        dev=lambda w: subset_tsv(w.lang, "dev"),
    output:
        f"{R}/selection/taskvectors/{{lang}}-{{task}}.json",
    log:
        "logs/selection/taskvectors/{lang}-{task}.log",
    benchmark:
        "benchmarks/selection/taskvectors/{lang}-{task}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    threads: 1
    resources:
        gpu=1,
    params:
        select=SELECT,
        decode=config["decode"],
        device=config.get("device", "auto"),
    script:
        "../workflow_scripts/select_taskvector.py"


rule select_lambda:
    input:
        base=f"{R}/models/base",
        taskvectors=setting_taskvectors,
        selections=lambda w: tv_selections(SETTINGS[w.setting]),
        dev=lambda w: [subset_tsv(lang, "dev") for lang, _ in SETTINGS[w.setting]],
    output:
        f"{R}/selection/lambda/{{setting}}.json",
    log:
        "logs/selection/lambda/{setting}.log",
    benchmark:
        "benchmarks/selection/lambda/{setting}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    threads: 1
    resources:
        gpu=1,
    params:
        pairs=lambda w: SETTINGS[w.setting],
        params=lambda w: smcfg.merge_params(config, SETTINGS[w.setting]),
        methods=smselect.lambda_methods(config),
        select=SELECT,
        decode=config["decode"],
        device=config.get("device", "auto"),
    script:
        "../workflow_scripts/select_lambda.py"
