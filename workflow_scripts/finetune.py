"""Rule finetune: full-parameter fine-tuning on one (language, task)."""

from speechmerge.logutil import job_log
from speechmerge.model import select_device
from speechmerge.plan.params import training_runtime
from speechmerge.train import finetune

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.threads) as log:
    w = sm.wildcards
    device = select_device(sm.params.device)
    summary = finetune(
        sm.input.base,
        sm.input.train,
        w.lang,
        w.task,
        sm.params.hp,
        sm.output[0],
        sm.params.seed,
        device,
        runtime=training_runtime(sm.config),
    )
    log.info("finetune %s-%s: %s", w.lang, w.task, summary)
