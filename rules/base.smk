# Stage: the base model θ0 (pretrained here for the synthetic preset, else from_pretrained).


rule base:
    input:
        unpack(lambda w: P.base_corpora()),
    output:
        directory(P.base),
    log:
        "logs/base/base.log",
    benchmark:
        "benchmarks/base/base.tsv"
    conda:
        "../envs/speechmerge.yaml"
    threads: workflow.cores
    resources:
        gpu=1,
    params:
        base=config["base"],
        seed=config["seed"],
        device=P.device,
    script:
        "../workflow_scripts/base.py"
