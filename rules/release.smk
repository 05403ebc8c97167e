# Stage: release dirs: each scored merged model's files (hard links) with a card that has its
# scores. The merged dir is not changed after its job (rule merge's output, with its
# manifest), so the scores go into a copy of its card beside hard links of its files.


# One job per (setting, method), as rule score_merged: the work is a few links and a card.
rule release:
    input:
        model=P.merged("{setting}", "{method}"),
        scores=P.scores("merged/{setting}/{method}"),
    output:
        directory(P.release("{setting}", "{method}")),
    log:
        "logs/release/{setting}/{method}.log",
    benchmark:
        "benchmarks/release/{setting}/{method}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    script:
        "../workflow_scripts/release.py"


# Table 4's training-then-merging settings (rules/joint.smk), scored per method.
rule release_combined:
    input:
        model=P.merged("{combined}", "{method}"),
        scores=P.scores("merged/{combined}/{method}"),
    output:
        directory(P.release("{combined}", "{method}")),
    log:
        "logs/release/{combined}/{method}.log",
    benchmark:
        "benchmarks/release/{combined}/{method}.tsv"
    wildcard_constraints:
        method="|".join(P.combined_methods),
    conda:
        "../envs/speechmerge.yaml"
    script:
        "../workflow_scripts/release.py"
