"""Rule merge: θ0 + λ Σ P(τ_i) with the method's pruning P (streamed tensor by tensor)."""

from speechmerge.logutil import job_log
from speechmerge.merge import merge_models

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    merge_models(
        sm.input.base,
        list(sm.input.taskvectors),
        sm.wildcards.method,
        lam=sm.params.lam,
        params=sm.params.params,
        out_dir=sm.output[0],
    )
