"""Rule significance: paired-bootstrap CIs and p-values of the verdicts' comparisons."""

from speechmerge.logutil import job_log
from speechmerge.report.significance import write_significance

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    write_significance(sm.params.config, sm.params.settings, sm.params.scores, sm.output.csv)
