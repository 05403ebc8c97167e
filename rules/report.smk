# Stage: the paper's tables from the score files.


rule tables:
    input:
        score_files(),
    output:
        csv=report(
            expand(f"{R}/tables/{{name}}.csv", name=table_names()),
            category="Tables",
            caption="../report/tables.rst",
        ),
        md=expand(f"{R}/tables/{{name}}.md", name=table_names()),
    log:
        "logs/report/tables.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        config=config,
        scores=lambda w, input: os.path.commonpath(list(input)),
        settings=SETTINGS,
    script:
        "../workflow_scripts/tables.py"


# Paired-bootstrap CIs and p-values of every comparison the verdicts state
# (speechmerge.significance), from the score files' hypotheses.
rule significance:
    input:
        score_files(),
    output:
        csv=report(
            f"{R}/tables/significance.csv",
            category="Tables",
            caption="../report/significance.rst",
        ),
        md=f"{R}/tables/significance.md",
    log:
        "logs/report/significance.log",
    benchmark:
        "benchmarks/report/significance.tsv"
    conda:
        "../envs/speechmerge.yaml"
    params:
        config=config,
        scores=lambda w, input: os.path.commonpath(list(input)),
        settings=SETTINGS,
    script:
        "../workflow_scripts/significance.py"
