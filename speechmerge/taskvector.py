"""Task vectors τ = θ_ft − θ_0 (LoRS-Merging paper, Sec. 3.1.1), stored as safetensors files.

A task-vector file holds one tensor per *floating* tensor of the base model (same names and
shapes); non-float tensors (e.g. integer buffers) are omitted and copied from the base at merge
time. Task vectors of float16/bfloat16 models are stored in float32 so that the subtraction is
not rounded; float32/float64 models keep their dtype. File metadata: ``{"base", "finetuned"}``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

__all__ = [
    "WEIGHTS_NAME",
    "atomic_save_file",
    "compute_task_vector",
    "model_weights_path",
    "open_task_vectors",
    "task_vector_dtype",
]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def model_weights_path(model_dir: str | os.PathLike[str]) -> Path:
    """Path of ``model.safetensors`` inside a Hugging Face model directory.

    Raises NotImplementedError for sharded checkpoints and FileNotFoundError if there is none.
    """
    d = Path(model_dir)
    p = d / WEIGHTS_NAME
    if p.is_file():
        return p
    if (d / INDEX_NAME).is_file():
        raise NotImplementedError(
            f"sharded safetensors checkpoints are not supported yet: {d} has {INDEX_NAME}"
        )
    raise FileNotFoundError(f"no {WEIGHTS_NAME} in model directory {d}")


def task_vector_dtype(dtype: torch.dtype) -> torch.dtype:
    """Storage dtype of τ for model dtype ``dtype`` (half precisions are promoted to float32)."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def atomic_save_file(
    tensors: dict[str, Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None
) -> None:
    """Write a safetensors file atomically (temp file in the same directory + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def compute_task_vector(
    base_dir: str | os.PathLike[str],
    finetuned_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> Path:
    """Compute τ = θ_ft − θ_0 tensor by tensor and write it to ``out_path`` (safetensors).

    Checks that both models have the same tensor names, shapes and dtypes and finite values;
    errors name the offending tensor and file(s). Returns ``out_path``.
    """
    base_file = model_weights_path(base_dir)
    ft_file = model_weights_path(finetuned_dir)
    out: dict[str, Tensor] = {}
    with (
        safe_open(str(base_file), framework="pt") as fb,
        safe_open(str(ft_file), framework="pt") as ff,
    ):
        bkeys, fkeys = set(fb.keys()), set(ff.keys())
        if bkeys - fkeys:
            k = min(bkeys - fkeys)
            raise ValueError(f"tensor {k!r} of {base_file} is missing from {ft_file}")
        if fkeys - bkeys:
            k = min(fkeys - bkeys)
            raise ValueError(f"tensor {k!r} of {ft_file} is missing from {base_file}")
        for name in sorted(bkeys):
            b = fb.get_tensor(name)
            f = ff.get_tensor(name)
            if b.shape != f.shape or b.dtype != f.dtype:
                raise ValueError(
                    f"tensor {name!r} differs: {tuple(b.shape)} {b.dtype} in {base_file} vs "
                    f"{tuple(f.shape)} {f.dtype} in {ft_file}"
                )
            if not b.is_floating_point():
                continue
            for t, src in ((b, base_file), (f, ft_file)):
                if not torch.isfinite(t).all():
                    raise ValueError(f"tensor {name!r} has NaN/Inf values in {src}")
            wd = task_vector_dtype(b.dtype)
            out[name] = (f.to(wd) - b.to(wd)).contiguous()
    meta = {"base": str(base_dir), "finetuned": str(finetuned_dir)}
    atomic_save_file(out, out_path, metadata=meta)
    return Path(out_path)


@contextlib.contextmanager
def open_task_vectors(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Any]]:
    """Open several safetensors files lazily (``safe_open``); yields the list of handles.

    Each handle supports ``.keys()``, ``.get_tensor(name)``, ``.get_slice(name)`` and
    ``.metadata()``. Files are closed on exit.
    """
    with contextlib.ExitStack() as stack:
        handles = []
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"task vector file not found: {p}")
            handles.append(stack.enter_context(safe_open(str(p), framework="pt")))
        yield handles
