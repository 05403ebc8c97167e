"""Rule subset_scaled: a smaller training subset (train hours × a Figure 4 data scale)."""

from speechmerge.corpus import make_subset
from speechmerge.logutil import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]) as log:
    src = f"{sm.input.corpus}/train.tsv"
    summary = make_subset(src, sm.output[0], sm.params.hours, sm.params.scale, sm.params.seed)
    log.info("train@%s: %s", sm.wildcards.scale, summary)
