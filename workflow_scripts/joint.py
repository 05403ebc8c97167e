"""Rule joint: a joint-training baseline on the union of its pairs' fine-tuning data."""

from speechmerge.joint import train_joint
from speechmerge.logutil import job_log
from speechmerge.model import select_device
from speechmerge.plan.params import training_runtime
from speechmerge.plan.settings import pair_languages

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.threads) as log:
    pairs = [tuple(p) for p in sm.params.pairs]
    summary = train_joint(
        sm.input.base,
        dict(zip(pair_languages(pairs), sm.input.train)),
        pairs,
        sm.params.hp,
        sm.output[0],
        sm.params.seed,
        select_device(sm.params.device),
        runtime=training_runtime(sm.config),
    )
    log.info("joint %s: %s", sm.wildcards.joint, summary)
