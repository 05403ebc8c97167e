# Stage: the paper's tables from the score files.


rule tables:
    input:
        P.score_files(),
    output:
        csv=report(
            expand(P.table("{name}", "csv"), name=P.table_names()),
            category="Tables",
            caption="../report/tables.rst",
        ),
        md=expand(P.table("{name}", "md"), name=P.table_names()),
    log:
        "logs/report/tables.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        config=config,
        scores=lambda w, input: os.path.commonpath(list(input)),
        settings=P.settings,
    script:
        "../workflow_scripts/tables.py"


# Paired-bootstrap CIs and p-values of every comparison the verdicts state
# (speechmerge.report.significance), from the score files' hypotheses.
rule significance:
    input:
        P.score_files(),
    output:
        csv=report(
            P.table("significance", "csv"),
            category="Tables",
            caption="../report/significance.rst",
        ),
        md=P.table("significance", "md"),
    log:
        "logs/report/significance.log",
    benchmark:
        "benchmarks/report/significance.tsv"
    conda:
        "../envs/speechmerge.yaml"
    params:
        config=config,
        scores=lambda w, input: os.path.commonpath(list(input)),
        settings=P.settings,
    script:
        "../workflow_scripts/significance.py"
