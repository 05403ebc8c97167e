"""Rule prune_sweep: one ASR fine-tune's task vector pruned by SVP and by MP at every retain
ratio (Figure 5), each added to the base and scored on the test set."""

from speechmerge.threads import limit_threads, prefer_short_spin

prefer_short_spin()  # before torch loads: OpenMP reads its spin count once (threads.py)

from speechmerge.io.memory import enable_streaming_memory_tuning
from speechmerge.logutil import job_log
from speechmerge.model import select_device
from speechmerge.select import write_json
from speechmerge.study import prune_sweep

sm = snakemake  # noqa: F821
enable_streaming_memory_tuning()  # opt-in allocator tuning of the streaming merge
limit_threads()  # no more threads than the job's CPUs (affinity, cgroup quota)
with job_log(sm.log[0], sm.threads) as log:
    w, p = sm.wildcards, sm.params
    device = select_device(p.device)
    meta = {"scale": float(w.dscale), "hours": p.hours}
    sweeps = [
        prune_sweep(
            sm.input.base,
            sm.input.taskvector,
            w.lang,
            "asr",
            sm.input.test,
            prune,
            p.ratios,
            p.decode,
            device,
            meta,
        )
        for prune in p.prunes
    ]
    for s in sweeps:
        points = [(pt["retain"], pt["score"]) for pt in s["points"]]
        log.info("%s sweep %s@%s (retain, score): %s", s["prune"], w.lang, w.dscale, points)
    write_json(sm.output[0], {"sweeps": sweeps})
