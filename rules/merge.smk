# Stage: merge the task vectors of one setting with one method (paper eqs. 1-8).


rule merge:
    input:
        base=P.base,
        taskvectors=setting_taskvectors,
        sel_tv=lambda w: P.tv_selections(P.settings[w.setting], w.method),
        sel_lambda=lambda w: P.lambda_selections(w.setting, w.method),
    output:
        directory(P.merged("{setting}", "{method}")),
    log:
        "logs/merge/{setting}/{method}.log",
    benchmark:
        "benchmarks/merge/{setting}/{method}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    params:
        lam=lambda w: smparams.merge_lambda(config, w.setting),
        params=lambda w: smparams.merge_params(config, P.settings[w.setting]),
    script:
        "../workflow_scripts/merge.py"
