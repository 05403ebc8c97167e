"""Rule tables: the paper's tables (CSV + Markdown) from the score files."""

from speechmerge.logutil import job_log
from speechmerge.report.tables import write_tables

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    write_tables(sm.params.config, sm.params.settings, sm.params.scores, list(sm.output.csv))
