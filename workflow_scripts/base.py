"""Rule base: pretrain the synthetic base, or snapshot a pretrained Whisper."""

from speechmerge.logutil import job_log
from speechmerge.model import select_device
from speechmerge.train import pretrain_synthetic_base, snapshot_pretrained

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.threads) as log:
    base = sm.params.base
    if base["source"] == "synthetic":
        corpora = {lang: sm.input[lang] for lang in base["synthetic"]["languages"]}
        device = select_device(sm.params.device)
        summary = pretrain_synthetic_base(
            corpora, base["synthetic"], sm.output[0], sm.params.seed, device
        )
    else:
        summary = snapshot_pretrained(base["pretrained"], sm.output[0])
    log.info("base: %s", summary)
