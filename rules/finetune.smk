# Stage: full-parameter fine-tuning per (language, task), and its task vector τ = θ_ft − θ0.


rule finetune:
    input:
        base=P.base,
        train=lambda w: P.subset_tsv(w.lang, "train"),
    output:
        directory(P.finetuned("{lang}", "{task}")),
    log:
        "logs/finetune/{lang}-{task}.log",
    benchmark:
        "benchmarks/finetune/{lang}-{task}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    threads: 1
    resources:
        gpu=1,
    params:
        hp=lambda w: smparams.finetune_hparams(config, w.lang, w.task),
        seed=config["seed"],
        device=P.device,
    script:
        "../workflow_scripts/finetune.py"


rule taskvector:
    input:
        base=P.base,
        finetuned=P.finetuned("{lang}", "{task}"),
    output:
        P.taskvector("{lang}", "{task}"),
    log:
        "logs/taskvector/{lang}-{task}.log",
    benchmark:
        "benchmarks/taskvector/{lang}-{task}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    script:
        "../workflow_scripts/taskvector.py"
