"""Rules score_*: decode one model's test sets and score them."""

import os

from speechmerge.decode import score_model
from speechmerge.logutil import job_log
from speechmerge.model import select_device

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.threads):
    tests = [sm.input.test] if isinstance(sm.input.test, str) else list(sm.input.test)
    out = sm.output[0]
    if out.endswith(".json"):  # one (lang, task): the output is the score file itself
        outs = [out]
    else:  # a merged model: one score file per (lang, task) in its folder
        outs = [os.path.join(out, f"{lang}-{task}.json") for lang, task in sm.params.pairs]
    jobs = [(lang, task, test, o) for (lang, task), test, o in zip(sm.params.pairs, tests, outs)]
    system = os.path.relpath(os.path.dirname(outs[0]), "results/scores")
    score_model(sm.input.model, jobs, sm.params.decode, select_device(sm.params.device), system)
