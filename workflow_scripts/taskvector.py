"""Rule taskvector: τ = θ_ft − θ0, as safetensors."""

from speechmerge.threads import limit_threads, prefer_short_spin

prefer_short_spin()  # before torch loads: OpenMP reads its spin count once (threads.py)

from speechmerge.io.memory import enable_streaming_memory_tuning
from speechmerge.logutil import job_log
from speechmerge.taskvector import compute_task_vector

sm = snakemake  # noqa: F821
enable_streaming_memory_tuning()  # opt-in allocator tuning of the streaming merge
limit_threads()  # no more threads than the job's CPUs (affinity, cgroup quota)
with job_log(sm.log[0]):
    compute_task_vector(sm.input.base, sm.input.finetuned, sm.output[0])
