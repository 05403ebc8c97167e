"""Rule figure4: WER / BLEU against the training data per language."""

from speechmerge.logutil import job_log
from speechmerge.report.figures import data_scale_data, write_figure

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    p = sm.params
    df = data_scale_data(
        p.langs, p.tasks, p.scales, p.hours, p.finetuned, p.merged, p.methods, p.joint
    )
    write_figure("fig4", df, sm.output.png, p.preset)
