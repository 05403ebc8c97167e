"""Rules release*: each merged model's files (hard links) with its card and scores."""

from speechmerge.card import release_model
from speechmerge.logutil import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]) as log:
    models = [sm.input.model] if isinstance(sm.input.model, str) else list(sm.input.model)
    scores = [sm.input.scores] if isinstance(sm.input.scores, str) else list(sm.input.scores)
    for model, score_dir, out in zip(models, scores, sm.output, strict=True):
        _, linked, copied = release_model(model, score_dir, out)
        log.info(
            "%s: %d files hard-linked, %d copied, card with %s", out, linked, copied, score_dir
        )
