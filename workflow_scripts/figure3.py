"""Rule figure3: WER / BLEU against the number of merged languages."""

from speechmerge.logutil import job_log
from speechmerge.report.figures import num_languages_data, write_figure

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    p = sm.params
    df = num_languages_data(p.settings, p.finetuned, p.merged, p.methods)
    write_figure("fig3", df, sm.output.png, p.preset)
