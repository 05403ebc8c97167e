"""Rules score_*: decode models' test sets and score them (one or several models per job)."""

import os

from speechmerge.decode import score_model
from speechmerge.logutil import job_log
from speechmerge.model import select_device
from speechmerge.plan import SCORES

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.threads):
    tests = [sm.input.test] if isinstance(sm.input.test, str) else list(sm.input.test)
    models = [sm.input.model] if isinstance(sm.input.model, str) else list(sm.input.model)
    device = select_device(sm.params.device)
    pairs = sm.params.pairs
    if len(sm.output) == 1 and sm.output[0].endswith(".json"):  # one model, one (lang, task)
        outs_per_model = [[sm.output[0]]]
    else:  # one folder per model, one score file per (lang, task) in it
        outs_per_model = [
            [os.path.join(o, f"{lang}-{task}.json") for lang, task in pairs] for o in sm.output
        ]
    if len(outs_per_model) != len(models):
        raise ValueError(f"{len(models)} models for {len(outs_per_model)} outputs")
    for model, outs in zip(models, outs_per_model):
        jobs = [(lang, task, test, o) for (lang, task), test, o in zip(pairs, tests, outs)]
        system = os.path.relpath(os.path.dirname(outs[0]), SCORES)
        score_model(model, jobs, sm.params.decode, device, system)
