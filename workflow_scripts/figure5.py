"""Rule figure5: ASR WER of single fine-tunes after SVP / MP against the retain ratio."""

from speechmerge.logutil import job_log
from speechmerge.report.figures import retain_data, write_figure

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    write_figure("fig5", retain_data(list(sm.input)), sm.output.png, sm.params.preset)
