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
