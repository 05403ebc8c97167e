# Stage: joint-training baselines (multi-lingual, multi-task, both; speechmerge.joint), their
# scores, and Table 4's training-then-merging settings (merges of joint models' task vectors).
# P.joint, P.combined and P.combined_methods: speechmerge.plan.


rule joint:
    input:
        base=P.base,
        # one training TSV per language, in the order the script zips them back in
        train=lambda w: [
            P.subset_tsv(lang, "train")
            for lang in smsettings.pair_languages(P.joint[w.joint])
        ],
    output:
        directory(P.joint_model("{joint}")),
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
        pairs=lambda w: P.joint[w.joint],
        hp=lambda w: smparams.joint_hparams(config, w.joint),
        seed=config["seed"],
        device=P.device,
    script:
        "../workflow_scripts/joint.py"


use rule taskvector as joint_taskvector with:
    input:
        base=P.base,
        finetuned=P.joint_model("{joint}"),
    output:
        P.joint_taskvector("{joint}"),
    log:
        "logs/taskvector/joint/{joint}.log",
    benchmark:
        "benchmarks/taskvector/joint/{joint}.tsv"


use rule score_pretrained as score_joint with:
    input:
        model=P.joint_model("{joint}"),
        test=lambda w: pair_tests(P.joint[w.joint]),
    output:
        directory(P.scores("joint/{joint}")),
    log:
        "logs/score/joint/{joint}.log",
    benchmark:
        "benchmarks/score/joint/{joint}.tsv"
    params:
        pairs=lambda w: P.joint[w.joint],
        decode=config["decode"],
        device=P.device,


rule merge_combined:
    input:
        base=P.base,
        taskvectors=lambda w: [
            P.joint_taskvector(name) for name in P.combined[w.combined]["models"]
        ],
    output:
        directory(P.merged("{combined}", "{method}")),
    log:
        "logs/merge/{combined}/{method}.log",
    benchmark:
        "benchmarks/merge/{combined}/{method}.tsv"
    wildcard_constraints:
        method="|".join(P.combined_methods),
    conda:
        "../envs/speechmerge.yaml"
    params:
        lam=lambda w: smparams.merge_lambda(config, w.combined),
        params=lambda w: smparams.combined_params(config, w.combined),
    script:
        "../workflow_scripts/merge.py"


rule score_combined:
    input:
        model=P.merged("{combined}", "{method}"),
        test=lambda w: pair_tests(P.combined[w.combined]["pairs"]),
    output:
        directory(P.scores("merged/{combined}/{method}")),
    log:
        "logs/score/merged/{combined}/{method}.log",
    benchmark:
        "benchmarks/score/merged/{combined}/{method}.tsv"
    wildcard_constraints:
        method="|".join(P.combined_methods),
    conda:
        "../envs/speechmerge.yaml"
    threads: 1
    resources:
        gpu=1,
    params:
        pairs=lambda w: P.combined[w.combined]["pairs"],
        decode=config["decode"],
        device=P.device,
    script:
        "../workflow_scripts/score.py"
