"""Rule corpus_synthetic: speak one language's corpus (base, train, dev, test splits)."""

from speechmerge.corpus import synthesize_language
from speechmerge.logutil import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    if sm.params.cfg is None:
        raise ValueError("config key 'corpus.synthetic' is required for the synthetic source")
    synthesize_language(sm.wildcards.lang, sm.output[0], sm.params.cfg, sm.params.seed)
