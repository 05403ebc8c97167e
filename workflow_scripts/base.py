"""Rule base: pretrain the synthetic base, convert a CTranslate2 Whisper, or snapshot a
pretrained one."""

from speechmerge.convert import convert_ct2
from speechmerge.logutil import job_log
from speechmerge.model import select_device
from speechmerge.plan.params import training_runtime
from speechmerge.train import pretrain_synthetic_base, snapshot_pretrained

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.threads) as log:
    base = sm.params.base
    if base["source"] == "synthetic":
        corpora = {lang: sm.input[lang] for lang in base["synthetic"]["languages"]}
        device = select_device(sm.params.device)
        summary = pretrain_synthetic_base(
            corpora,
            base["synthetic"],
            sm.output[0],
            sm.params.seed,
            device,
            runtime=training_runtime(sm.config),
        )
    elif base["source"] == "ct2":
        ct2 = base.get("ct2", {})
        summary = convert_ct2(
            ct2.get("path"),
            sm.output[0],
            window_seconds=ct2.get("window_seconds"),
            sha256=ct2.get("sha256"),
        )
    else:
        summary = snapshot_pretrained(base["pretrained"], sm.output[0])
    log.info("base: %s", summary)
