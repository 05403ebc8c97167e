# Stage: dev-set selection (speechmerge.select) of each task vector's (r, p) and of each merge
# setting's λ per method, from the grids in `merge.select`. Only the DEV split is decoded.
# Without `merge.select` nothing here runs and the merges take λ, r and p from the config.
# Helpers: Plan.tv_selections / Plan.lambda_selections (speechmerge.plan).


rule select_taskvector:
    input:
        base=P.base,
        taskvector=lambda w: P.taskvector(w.lang, w.task),
        dev=lambda w: P.subset_tsv(w.lang, "dev"),
    output:
        P.tv_selection("{lang}", "{task}"),
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
        select=P.select,
        decode=config["decode"],
        device=P.device,
    script:
        "../workflow_scripts/select_taskvector.py"


rule select_lambda:
    input:
        base=P.base,
        taskvectors=setting_taskvectors,
        selections=lambda w: P.tv_selections(P.settings[w.setting]),
        dev=lambda w: [P.subset_tsv(lang, "dev") for lang, _ in P.settings[w.setting]],
    output:
        P.lambda_selection("{setting}"),
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
        pairs=lambda w: P.settings[w.setting],
        params=lambda w: smparams.merge_params(config, P.settings[w.setting]),
        methods=smparams.lambda_methods(config),
        select=P.select,
        decode=config["decode"],
        device=P.device,
    script:
        "../workflow_scripts/select_lambda.py"
