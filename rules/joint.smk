# Stage: joint-training baselines (multi-lingual, multi-task, both; speechmerge.joint), their
# scores, and Table 4's training-then-merging settings (merges of joint models' task vectors).
# JOINT, COMBINED and COMBINED_METHODS come from rules/common.smk.


wildcard_constraints:
    joint="|".join(re.escape(j) for j in JOINT) or "NONE",
    combined="|".join(re.escape(c) for c in COMBINED) or "NONE",


rule joint:
    input:
        base=f"{R}/models/base",
        # one training TSV per language, in the order the script zips them back in
        train=lambda w: [
            subset_tsv(lang, "train")
            for lang in smjoint.pair_languages(JOINT[w.joint])
        ],
    output:
        directory(f"{R}/models/joint/{{joint}}"),
    log:
        "logs/joint/{joint}.log",
    benchmark:
        "benchmarks/joint/{joint}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    threads: 1
    resources:
        gpu=1,
    params:
        pairs=lambda w: JOINT[w.joint],
        hp=lambda w: smjoint.joint_hparams(config, w.joint),
        seed=config["seed"],
        device=config.get("device", "auto"),
    script:
        "../workflow_scripts/joint.py"


use rule taskvector as joint_taskvector with:
    input:
        base=f"{R}/models/base",
        finetuned=f"{R}/models/joint/{{joint}}",
    output:
        f"{R}/taskvectors/joint/{{joint}}.safetensors",
    log:
        "logs/taskvector/joint/{joint}.log",
    benchmark:
        "benchmarks/taskvector/joint/{joint}.tsv"


use rule score_pretrained as score_joint with:
    input:
        model=f"{R}/models/joint/{{joint}}",
        test=lambda w: [subset_tsv(lang, "test") for lang, _ in JOINT[w.joint]],
    output:
        directory(f"{R}/scores/joint/{{joint}}"),
    log:
        "logs/score/joint/{joint}.log",
    benchmark:
        "benchmarks/score/joint/{joint}.tsv"
    params:
        pairs=lambda w: JOINT[w.joint],
        decode=config["decode"],
        device=config.get("device", "auto"),


rule merge_combined:
    input:
        base=f"{R}/models/base",
        taskvectors=lambda w: [
            f"{R}/taskvectors/joint/{name}.safetensors"
            for name in COMBINED[w.combined]["models"]
        ],
    output:
        directory(f"{R}/merged/{{combined}}/{{method}}"),
    log:
        "logs/merge/{combined}/{method}.log",
    benchmark:
        "benchmarks/merge/{combined}/{method}.tsv"
    wildcard_constraints:
        method="|".join(COMBINED_METHODS),
    conda:
        "../envs/speechmerge.yaml"
    params:
        lam=lambda w: smcfg.merge_lambda(config, w.combined),
        params=lambda w: smjoint.combined_params(config, w.combined),
    script:
        "../workflow_scripts/merge.py"


rule score_combined:
    input:
        model=f"{R}/merged/{{combined}}/{{method}}",
        test=lambda w: [
            subset_tsv(lang, "test") for lang, _ in COMBINED[w.combined]["pairs"]
        ],
    output:
        directory(f"{R}/scores/merged/{{combined}}/{{method}}"),
    log:
        "logs/score/merged/{combined}/{method}.log",
    benchmark:
        "benchmarks/score/merged/{combined}/{method}.tsv"
    wildcard_constraints:
        method="|".join(COMBINED_METHODS),
    conda:
        "../envs/speechmerge.yaml"
    threads: 1
    resources:
        gpu=1,
    params:
        pairs=lambda w: COMBINED[w.combined]["pairs"],
        decode=config["decode"],
        device=config.get("device", "auto"),
    script:
        "../workflow_scripts/score.py"
