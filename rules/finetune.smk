# Stage: full-parameter fine-tuning per (language, task), and its task vector τ = θ_ft − θ0.


rule finetune:
    input:
        base=f"{R}/models/base",
        train=lambda w: subset_tsv(w.lang, "train"),
    output:
        directory(f"{R}/models/finetuned/{{lang}}-{{task}}"),
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
        hp=lambda w: smcfg.finetune_hparams(config, w.lang, w.task),
        seed=config["seed"],
        device=config.get("device", "auto"),
    script:
        "../workflow_scripts/finetune.py"


rule taskvector:
    input:
        base=f"{R}/models/base",
        finetuned=f"{R}/models/finetuned/{{lang}}-{{task}}",
    output:
        f"{R}/taskvectors/{{lang}}-{{task}}.safetensors",
    log:
        "logs/taskvector/{lang}-{task}.log",
    benchmark:
        "benchmarks/taskvector/{lang}-{task}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    script:
        "../workflow_scripts/taskvector.py"
