# Stage: decode the test sets and score them (WER for ASR, BLEU for ST).


rule score_pretrained:
    input:
        model=P.base,
        test=lambda w: P.test_tsv(w.lang, w.task),
    output:
        P.score_file("pretrained", "{lang}", "{task}"),
    log:
        "logs/score/pretrained/{lang}-{task}.log",
    benchmark:
        "benchmarks/score/pretrained/{lang}-{task}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    threads: 1
    resources:
        gpu=1,
    params:
        pairs=lambda w: [(w.lang, w.task)],
        decode=config["decode"],
        device=P.device,
    script:
        "../workflow_scripts/score.py"


use rule score_pretrained as score_finetuned with:
    input:
        model=P.finetuned("{lang}", "{task}"),
        test=lambda w: P.test_tsv(w.lang, w.task),
    output:
        P.score_file("finetuned", "{lang}", "{task}"),
    log:
        "logs/score/finetuned/{lang}-{task}.log",
    benchmark:
        "benchmarks/score/finetuned/{lang}-{task}.tsv"


# One job per (setting, method): a merged model decodes its setting's test sets. The per-job
# start-up (~5 s of Python and transformers) buys scheduling freedom: a long setting's
# methods share the cores, and adding a method scores only its own merges.
rule score_merged:
    input:
        model=P.merged("{setting}", "{method}"),
        test=setting_tests,
    output:
        directory(P.scores("merged/{setting}/{method}")),
    log:
        "logs/score/merged/{setting}/{method}.log",
    benchmark:
        "benchmarks/score/merged/{setting}/{method}.tsv"
    conda:
        "../envs/speechmerge.yaml"
    threads: 1
    resources:
        gpu=1,
    params:
        pairs=lambda w: P.settings[w.setting],
        decode=config["decode"],
        device=P.device,
    script:
        "../workflow_scripts/score.py"
