# Stage: decode the test sets and score them (WER for ASR, BLEU for ST).


rule score_pretrained:
    input:
        model=P.base,
        test=lambda w: P.subset_tsv(w.lang, "test"),
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
        test=lambda w: P.subset_tsv(w.lang, "test"),
    output:
        P.score_file("finetuned", "{lang}", "{task}"),
    log:
        "logs/score/finetuned/{lang}-{task}.log",
    benchmark:
        "benchmarks/score/finetuned/{lang}-{task}.tsv"


# One job per merge setting scores every method's merged model: the per-job cost here is
# mostly Python and transformers start-up (~5 s), paid once instead of once per method.
# Adding a method rescores its settings' other methods too (cheap); adding a language
# re-merges and rescores only the settings that contain it.
rule score_merged:
    input:
        model=lambda w: [P.merged(w.setting, m) for m in P.methods],
        test=setting_tests,
    output:
        [directory(P.scores(f"merged/{{setting}}/{m}")) for m in P.methods],
    log:
        "logs/score/merged/{setting}.log",
    benchmark:
        "benchmarks/score/merged/{setting}.tsv"
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
