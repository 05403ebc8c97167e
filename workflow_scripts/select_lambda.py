"""Rule select_lambda: λ per method for one merge setting, by its dev score."""

from speechmerge.threads import limit_threads, prefer_short_spin

prefer_short_spin()  # before torch loads: OpenMP reads its spin count once (threads.py)

from speechmerge.io.memory import enable_streaming_memory_tuning
from speechmerge.logutil import job_log
from speechmerge.model import select_device
from speechmerge.select import edge_warnings, select_lambda, selected_params, write_json

sm = snakemake  # noqa: F821
enable_streaming_memory_tuning()  # opt-in allocator tuning of the streaming merge
limit_threads()  # no more threads than the job's CPUs (affinity, cgroup quota)
with job_log(sm.log[0], sm.threads) as log:
    device = select_device(sm.params.device)
    params = selected_params(sm.params.params, list(sm.input.selections))
    sel = select_lambda(
        sm.input.base,
        list(sm.input.taskvectors),
        sm.params.pairs,
        params,
        list(sm.input.dev),
        sm.params.methods,
        sm.params.select,
        sm.params.decode,
        device,
        sm.wildcards.setting,
    )
    log.info("selected λ for %s: %s", sm.wildcards.setting, sel["lambda"])
    for line in edge_warnings(sel):
        log.warning("%s: %s", sm.wildcards.setting, line)
    write_json(sm.output[0], sel)
