"""Rule merge: θ0 + λ Σ P(τ_i) with the method's pruning P (streamed tensor by tensor)."""

from speechmerge.logutil import job_log
from speechmerge.merge import merge_models
from speechmerge.select import selected_lambda, selected_params

sm = snakemake  # noqa: F821
with job_log(sm.log[0]) as log:
    method = sm.wildcards.method
    lam, params = sm.params.lam, sm.params.params
    if sm.input.sel_tv:  # dev-selected (r, p) and λ (rules/select.smk)
        params = selected_params(params, list(sm.input.sel_tv))
        lam = selected_lambda(lam, method, sm.input.sel_lambda[0] if sm.input.sel_lambda else None)
        log.info("dev-selected: λ=%s, params=%s", lam, params)
    merge_models(
        sm.input.base,
        list(sm.input.taskvectors),
        method,
        lam=lam,
        params=params,
        out_dir=sm.output[0],
    )
