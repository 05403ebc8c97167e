"""Rule select_taskvector: one task vector's (r, p) by dev score of base + LoRS(τ)."""

from speechmerge.threads import limit_threads, prefer_short_spin

prefer_short_spin()  # before torch loads: OpenMP reads its spin count once (threads.py)

from speechmerge.io.memory import enable_streaming_memory_tuning
from speechmerge.logutil import job_log
from speechmerge.model import select_device
from speechmerge.select import edge_warnings, select_taskvector, write_json

sm = snakemake  # noqa: F821
enable_streaming_memory_tuning()  # opt-in allocator tuning of the streaming merge
limit_threads()  # no more threads than the job's CPUs (affinity, cgroup quota)
with job_log(sm.log[0], sm.threads) as log:
    w, p = sm.wildcards, sm.params
    sel = select_taskvector(
        sm.input.base,
        sm.input.taskvector,
        w.lang,
        w.task,
        dev_tsv=sm.input.dev,
        select_cfg=p.select,
        decode_cfg=p.decode,
        device=select_device(p.device),
    )
    log.info("selected %s-%s: r=%s p=%s", w.lang, w.task, sel["rank_ratio"], sel["keep_ratio"])
    for line in edge_warnings(sel):
        log.warning("%s-%s: %s", w.lang, w.task, line)
    write_json(sm.output[0], sel)
