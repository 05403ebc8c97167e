"""Rule hparam_tables: Tables 5 (ASR) and 6 (ST), the hyper-parameters this run used."""

from speechmerge.logutil import job_log
from speechmerge.report.hparams import write_hparam_tables

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    p = sm.params
    write_hparam_tables(p.config, p.settings, list(sm.output.csv), p.tv, p.lam)
