"""Rule corpus_covost2: one language's CoVoST-2 X->en splits as corpus TSVs + 16 kHz FLAC."""

from speechmerge.covost import write_covost_language
from speechmerge.logutil import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]) as log:
    summary = write_covost_language(sm.wildcards.lang, sm.output[0], sm.params.cfg)
    log.info("corpus %s: %s", sm.wildcards.lang, summary)
