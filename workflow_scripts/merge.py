"""Rule merge: θ0 + λ Σ P(τ_i) with the method's pruning P (streamed tensor by tensor)."""

from speechmerge.threads import limit_threads, prefer_short_spin

prefer_short_spin()  # before torch loads: OpenMP reads its spin count once (threads.py)

from speechmerge.io.memory import enable_streaming_memory_tuning
from speechmerge.logutil import job_log
from speechmerge.merge import merge_models
from speechmerge.plan.params import merge_max_shard_size
from speechmerge.select import selected_lambda, selected_params

sm = snakemake  # noqa: F821
enable_streaming_memory_tuning()  # opt-in allocator tuning of the streaming merge
limit_threads()  # no more threads than the job's CPUs (affinity, cgroup quota)
with job_log(sm.log[0]) as log:
    method = sm.wildcards.method
    lam, params = sm.params.lam, sm.params.params
    # Dev-selected (r, p) and λ (rules/select.smk); merge_combined (rules/joint.smk) has none.
    sel_tv = list(getattr(sm.input, "sel_tv", []))
    sel_lambda = list(getattr(sm.input, "sel_lambda", []))
    if sel_tv:
        params = selected_params(params, sel_tv)
        log.info("dev-selected (r, p): %s", params)
    if sel_lambda:
        lam = selected_lambda(lam, method, sel_lambda[0])
        log.info("dev-selected λ: %s", lam)
    merge_models(
        sm.input.base,
        list(sm.input.taskvectors),
        method,
        lam=lam,
        params=params,
        out_dir=sm.output[0],
        # how the output is stored, not what it is: from the config, not a param (no reruns)
        max_shard_size=merge_max_shard_size(sm.config),
    )
