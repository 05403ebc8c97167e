# Stage: corpus (per language) and duration-based subsets (per language).


# Exactly one corpus rule exists, the one of config["source"]; both write corpus/{lang}.
if config["source"] == "covost2":

    rule corpus_covost2:
        output:
            directory(P.corpus_dir("{lang}")),
        log:
            "logs/corpus/{lang}.log",
        benchmark:
            "benchmarks/corpus/{lang}.tsv"
        conda:
            "../envs/speechmerge.yaml"
        params:
            cfg=config.get("corpus", {}).get("covost2", {}),
        script:
            "../workflow_scripts/corpus_covost2.py"

else:

    rule corpus_synthetic:
        output:
            directory(P.corpus_dir("{lang}")),
        log:
            "logs/corpus/{lang}.log",
        benchmark:
            "benchmarks/corpus/{lang}.tsv"
        conda:
            "../envs/speechmerge.yaml"
        params:
            cfg=config.get("corpus", {}).get("synthetic"),
            seed=config["seed"],
        script:
            "../workflow_scripts/corpus_synthetic.py"


rule subset:
    input:
        corpus=lambda w: P.corpus_dir(w.lang),
    output:
        train=P.subset_tsv("{lang}", "train"),
        dev=P.subset_tsv("{lang}", "dev"),
        test=P.subset_tsv("{lang}", "test"),
        summary=f"{R}/subsets/{{lang}}/summary.json",
    log:
        "logs/subset/{lang}.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        hours=lambda w: {
            "train": smparams.train_hours(config, w.lang),
            "dev": config["subset"]["dev_hours"],
            "test": config["subset"]["test_hours"],
        },
        scale=config["subset"]["scale"],
        seed=config["seed"],
    script:
        "../workflow_scripts/subset.py"
