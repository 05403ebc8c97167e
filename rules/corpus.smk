# Stage: corpus (per language) and duration-based subsets (per language): train, dev and
# one test set, or one per task when subset.test_hours differs by task (P.test_splits).


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
        [P.subset_tsv("{lang}", split) for split in P.subset_splits],
        summary=f"{R}/subsets/{{lang}}/summary.json",
    log:
        "logs/subset/{lang}.log",
    conda:
        "../envs/speechmerge.yaml"
    params:
        hours=lambda w: P.subset_hours(
            {
                "train": smparams.train_hours(config, w.lang),
                "dev": config["subset"]["dev_hours"],
            }
        ),
        scale=config["subset"]["scale"],
        seed=config["seed"],
    script:
        "../workflow_scripts/subset.py"
