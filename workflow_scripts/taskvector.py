"""Rule taskvector: τ = θ_ft − θ0, as safetensors."""

from speechmerge.io.memory import enable_streaming_memory_tuning
from speechmerge.logutil import job_log
from speechmerge.taskvector import compute_task_vector

sm = snakemake  # noqa: F821
enable_streaming_memory_tuning()  # opt-in allocator tuning of the streaming merge
with job_log(sm.log[0]):
    compute_task_vector(sm.input.base, sm.input.finetuned, sm.output[0])
