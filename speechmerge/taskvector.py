"""Task vectors τ = θ_ft − θ_0 (LoRS-Merging paper, Sec. 3.1.1), stored as safetensors files.

A task-vector file holds one tensor per *floating* tensor of the base model (same names and
shapes); non-float tensors (e.g. integer buffers) are omitted and copied from the base at merge
time. Task vectors of float16/bfloat16 models are stored in float32 so that the subtraction is
not rounded; float32/float64 models keep their dtype. File metadata: ``{"base", "finetuned"}``.

:func:`compute_task_vector` streams (:mod:`speechmerge.io.weights`): memory is O(largest
tensor), not O(model). :func:`check_task_vector_metadata` tells a task-vector file from a
model's weights; compressed task vectors and the reader of both kinds are in
:mod:`speechmerge.compress`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .io.weights import all_finite, atomic_save_streaming, open_model_weights

__all__ = ["check_task_vector_metadata", "compute_task_vector", "task_vector_dtype"]


def check_task_vector_metadata(path: str | os.PathLike[str], meta: dict[str, str] | None) -> None:
    """Refuse a file that is a model's weights, not a task vector.

    Task-vector files written here say so in their metadata (dense ones carry ``base`` and
    ``finetuned``, compressed ones ``speechmerge_format``, decompressed ones
    ``decompressed_from``); files without metadata, or with metadata of their own, are taken
    as hand-made task vectors (``benchmarks/merge_bench.py`` writes ``{"bench": i}``). A file
    whose metadata marks neither but has a ``format`` key (what ``save_pretrained`` writes) is
    a model's weights: merging it as τ would add the whole model to the base.
    """
    meta = meta or {}
    if "speechmerge_format" in meta or {"base", "finetuned"} <= set(meta):
        return
    if "decompressed_from" in meta or "format" not in meta:
        return  # hand-made task vectors: no metadata, or none of save_pretrained's
    raise ValueError(
        f"{path} is not a task-vector file (its metadata {meta} is that of a model's weights); "
        "pass the fine-tuned model directory (--finetuned DIR) to compute its task vector"
    )


def task_vector_dtype(dtype: torch.dtype) -> torch.dtype:
    """Storage dtype of τ for model dtype ``dtype`` (half precisions are promoted to float32)."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def compute_task_vector(
    base_dir: str | os.PathLike[str],
    finetuned_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    progress: bool = False,
) -> Path:
    """Compute τ = θ_ft − θ_0 tensor by tensor and write it to ``out_path`` (safetensors).

    Streams: reads one tensor of each model at a time and writes it straight to the output
    (memory is O(largest tensor)); either model may be a sharded checkpoint
    (:class:`speechmerge.io.weights.ShardedSafetensorsReader`). Checks that both models have
    the same tensor names, shapes and dtypes and finite values; errors name the offending
    tensor and file(s), and leave no output. Returns ``out_path``.
    """
    with open_model_weights(base_dir) as fb, open_model_weights(finetuned_dir) as ff:
        base_file, ft_file = fb.path, ff.path
        bkeys, fkeys = set(fb.keys()), set(ff.keys())
        if bkeys - fkeys:
            k = min(bkeys - fkeys)
            raise ValueError(f"tensor {k!r} of {base_file} is missing from {ft_file}")
        if fkeys - bkeys:
            k = min(fkeys - bkeys)
            raise ValueError(f"tensor {k!r} of {ft_file} is missing from {base_file}")
        for name in sorted(bkeys):
            if fb.shape(name) != ff.shape(name) or fb.dtype(name) != ff.dtype(name):
                raise ValueError(
                    f"tensor {name!r} differs: {fb.shape(name)} {fb.dtype(name)} in {base_file} "
                    f"vs {ff.shape(name)} {ff.dtype(name)} in {ft_file}"
                )
        specs = [
            (name, task_vector_dtype(fb.dtype(name)), fb.shape(name))
            for name in sorted(bkeys)
            if fb.dtype(name).is_floating_point
        ]

        def produce(name: str) -> Tensor:
            b = fb.get_tensor(name)
            f = ff.get_tensor(name)
            for t, src in ((b, base_file), (f, ft_file)):
                if not all_finite(t):
                    raise ValueError(f"tensor {name!r} has NaN/Inf values in {src}")
            wd = task_vector_dtype(b.dtype)
            return f.to(wd) - b.to(wd)

        meta = {"base": str(base_dir), "finetuned": str(finetuned_dir)}
        atomic_save_streaming(
            out_path, specs, produce, metadata=meta, progress=progress, desc="task vector"
        )
    return Path(out_path)
