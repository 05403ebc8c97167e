# Stage: merge the task vectors of one setting with one method (paper eqs. 1-8).


rule merge:
    input:
        base=f"{R}/models/base",
        taskvectors=setting_taskvectors,
        sel_tv=lambda w: tv_selections(SETTINGS[w.setting], w.method),
        sel_lambda=lambda w: lambda_selections(w.setting, w.method),
    output:
        directory(f"{R}/merged/{{setting}}/{{method}}"),
    log:
        "logs/merge/{setting}/{method}.log",
    benchmark:
        "benchmarks/merge/{setting}/{method}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    params:
        lam=lambda w: smcfg.merge_lambda(config, w.setting),
        params=lambda w: smcfg.merge_params(config, SETTINGS[w.setting]),
    script:
        "../workflow_scripts/merge.py"
