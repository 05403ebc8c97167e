"""What a run reports, from its score files (the rules of ``rules/report.smk`` and
``rules/study.smk`` call these; :mod:`speechmerge.plan` says which exist):

* :mod:`.tables` — the paper's Tables 1-4, 7-11 (pandas → CSV + a Markdown twin);
* :mod:`.hparams` — Tables 5-6, the hyper-parameters used;
* :mod:`.significance` — ``significance.csv``: the paired-bootstrap CI of every comparison;
* :mod:`.figures` — Figures 3-5 (matplotlib, imported only when a figure is drawn);
* :mod:`.results_md` — the results section of the README / docs, from a run's files.
"""
