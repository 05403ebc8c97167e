"""Task vectors τ = θ_ft − θ_0 (LoRS-Merging paper, Sec. 3.1.1), stored as safetensors files.

A task-vector file holds one tensor per *floating* tensor of the base model (same names and
shapes); non-float tensors (e.g. integer buffers) are omitted and copied from the base at merge
time. Task vectors of float16/bfloat16 models are stored in float32 so that the subtraction is
not rounded; float32/float64 models keep their dtype. File metadata: ``{"base", "finetuned"}``.

I/O is streaming in both directions, so memory stays O(largest tensor), not O(model):

* :class:`SafetensorsReader` reads one tensor at a time with plain ``read`` calls. (``safe_open``
  memory-maps the file, and every page it touches stays in the process's resident set while
  the file is open: merging n task vectors through ``safe_open`` shows an RSS of n models.)
* :func:`atomic_save_streaming` writes a safetensors file tensor by tensor (the header is
  computed up front from the names, dtypes and shapes) to a temp file that is renamed at the
  end.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from .atomic import atomic_file, check_folder

__all__ = [
    "WEIGHTS_NAME",
    "SafetensorsReader",
    "TensorSpec",
    "all_finite",
    "atomic_save_file",
    "atomic_save_streaming",
    "check_task_vector_metadata",
    "compute_task_vector",
    "keep_freed_memory",
    "model_weights_path",
    "open_task_vectors",
    "release_free_memory",
    "task_vector_dtype",
]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)
_ST_NAMES: dict[torch.dtype, str] = {v: k for k, v in _ST_DTYPES.items()}

#: (name, dtype, shape) of one tensor of a file written by :func:`atomic_save_streaming`.
TensorSpec = tuple[str, torch.dtype, tuple[int, ...]]


class SafetensorsReader:
    """Lazy reader of one safetensors file that reads each tensor with ``readinto`` (no mmap).

    Same interface as the handles of ``safe_open`` used here: ``keys()``, ``get_tensor(name)``,
    ``metadata()``, plus ``shape(name)`` and ``dtype(name)``. Use as a context manager or call
    :meth:`close`. Errors name the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"safetensors file not found: {self.path}")
        self._f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        try:
            size = os.fstat(self._f.fileno()).st_size
            head = self._f.read(8)
            if len(head) != 8:
                raise ValueError("file is shorter than 8 bytes")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(self._f.read(n))
            self._meta: dict[str, str] | None = header.pop("__metadata__", None)
            self._start = 8 + n
            self._entries: dict[str, dict[str, Any]] = header
            for name, e in header.items():
                if e["dtype"] not in _ST_DTYPES:
                    raise ValueError(f"tensor {name!r} has unsupported dtype {e['dtype']}")
                a, b = e["data_offsets"]
                if not 0 <= a <= b or self._start + b > size:
                    raise ValueError(f"tensor {name!r} has bad data offsets {[a, b]}")
        except BaseException as err:
            self._f.close()
            if isinstance(err, (ValueError, KeyError, TypeError, json.JSONDecodeError)):
                msg = f"not a valid safetensors file: {self.path}: {err}"
                raise ValueError(msg) from err  # noqa: TRY004
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def keys(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def metadata(self) -> dict[str, str] | None:
        return None if self._meta is None else dict(self._meta)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def _entry(self, name: str) -> dict[str, Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in {self.path}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in self._entry(name)["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return _ST_DTYPES[self._entry(name)["dtype"]]

    def prefetch(self, name: str) -> None:
        """Ask the kernel to start reading tensor ``name`` into the page cache (asynchronous,
        ``POSIX_FADV_WILLNEED``; a no-op where unsupported). The merge calls it for the next
        tensor while it computes the current one, so cold files are read from disk in the
        background; it costs no process memory."""
        if name not in self or not hasattr(os, "posix_fadvise"):
            return
        a, b = self._entry(name)["data_offsets"]
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._f.fileno(), self._start + a, b - a, os.POSIX_FADV_WILLNEED)

    def get_tensor(self, name: str) -> Tensor:
        """Read tensor ``name`` into a new CPU tensor (only its bytes are read)."""
        e = self._entry(name)
        dtype, shape = _ST_DTYPES[e["dtype"]], self.shape(name)
        a, b = e["data_offsets"]
        nbytes = b - a
        expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if nbytes != expected:
            raise ValueError(f"tensor {name!r} in {self.path}: {nbytes} bytes for shape {shape}")
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        # read straight into an uninitialised tensor: a bytearray would be zero-filled first,
        # which cost more than the read itself (from the page cache)
        out = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(out.numpy())
        self._f.seek(self._start + a)
        got = 0
        while got < nbytes:
            k = self._f.readinto(view[got:])
            if not k:
                raise ValueError(f"tensor {name!r}: unexpected end of file {self.path}")
            got += k
        return out.view(dtype).reshape(shape)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_free_memory() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``; else a no-op).

    The counterpart of :func:`keep_freed_memory` for the few large tensors (the token
    embedding is 150 MB in whisper-small): after one of them, the blocks it freed would stay
    in the heap, fragmented, and raise the peak RSS of methods with many temporaries (TIES on
    ten whisper-small task vectors: 2.2x one fp32 model without this, 1.4-2.1x with it in
    the runs of ``benchmarks/merge_bench.py``). The merge calls it before and after each
    tensor above 32 MiB.
    """
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse (process-wide; once per process).

    A streaming merge allocates and frees tensors of the same few sizes thousands of times.
    By default glibc returns blocks above 128 KiB-32 MiB to the OS (``munmap``, or a heap
    trim) on free, so every new tensor costs fresh pages: a page fault and a kernel zeroing
    per 4 KiB, which cost more than the reading and the arithmetic of Task Arithmetic
    (measured in one process on the embeddings and one encoder and one decoder layer of ten
    whisper-small-shaped task vectors: TA 2.4x faster with this, LoRS 1.3x).
    Here blocks up to 1 GiB come from the heap and the heap is trimmed only above 2 GiB of
    free space: freed tensors are reused. Peak RSS is measured by ``benchmarks/merge_bench.py``.
    Returns whether it was applied (glibc only; elsewhere a no-op).
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        return bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok)
    except (OSError, AttributeError):
        return False


def all_finite(t: Tensor) -> bool:
    """Whether a tensor has no NaN/Inf (always True for non-float tensors).

    Fast path: a finite sum proves it (a NaN or an Inf entry makes the sum NaN or Inf) with
    one reduction, instead of ``isfinite``'s several passes and a bool tensor; only a
    non-finite sum (a bad entry, or an overflowing sum of finite values) needs the full check.
    """
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def atomic_save_streaming(
    path: str | os.PathLike[str],
    specs: Sequence[TensorSpec],
    produce: Callable[[str], Tensor],
    metadata: dict[str, str] | None = None,
    progress: bool = False,
    desc: str = "write",
) -> Path:
    """Write a safetensors file tensor by tensor: memory is one tensor, not the whole file.

    ``specs`` fixes the names, dtypes and shapes (and so the header) up front; ``produce(name)``
    is called once per spec, in order, and must return a tensor of exactly that dtype and shape.
    The file is written to a temp file next to ``path`` and renamed at the end; on any error
    (including one raised by ``produce``) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape in specs:
        if name in header:
            raise ValueError(f"duplicate tensor name {name!r}")
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": _ST_NAMES[dtype],
            "shape": [int(x) for x in shape],
            "data_offsets": [offset, offset + n],
        }
        offset += n
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # align the data section to 8 bytes, like safetensors
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(len(hbytes).to_bytes(8, "little"))
        f.write(hbytes)
        for name, dtype, shape in tqdm(
            specs, desc=desc, unit="tensor", file=sys.stderr, disable=not progress
        ):
            t = produce(name)
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise RuntimeError(
                    f"tensor {name!r}: produced {t.dtype} {tuple(t.shape)}, "
                    f"expected {dtype} {tuple(shape)}"
                )
            if t.numel():
                f.write(
                    memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
                )
            del t
    return path


def check_task_vector_metadata(path: str | os.PathLike[str], meta: dict[str, str] | None) -> None:
    """Refuse a file that is a model's weights, not a task vector.

    Task-vector files written here say so in their metadata (dense ones carry ``base`` and
    ``finetuned``, compressed ones ``speechmerge_format``, decompressed ones
    ``decompressed_from``); files without metadata are taken as hand-made task vectors. A file whose metadata marks neither but has a ``format`` key (what
    ``save_pretrained`` writes) is a model's weights: merging it as τ would add the whole
    model to the base.
    """
    meta = meta or {}
    if "speechmerge_format" in meta or {"base", "finetuned"} <= set(meta):
        return
    if "decompressed_from" in meta or not meta:
        return
    raise ValueError(
        f"{path} is not a task-vector file (its metadata {meta} is that of a model's weights); "
        "pass the fine-tuned model directory (--finetuned DIR) to compute its task vector"
    )


def model_weights_path(model_dir: str | os.PathLike[str]) -> Path:
    """Path of ``model.safetensors`` inside a Hugging Face model directory.

    Raises NotImplementedError for sharded checkpoints and FileNotFoundError if there is none.
    """
    d = Path(model_dir)
    check_folder(d)
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
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def compute_task_vector(
    base_dir: str | os.PathLike[str],
    finetuned_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    progress: bool = False,
) -> Path:
    """Compute τ = θ_ft − θ_0 tensor by tensor and write it to ``out_path`` (safetensors).

    Streams: reads one tensor of each model at a time and writes it straight to the output
    (memory is O(largest tensor)). Checks that both models have the same tensor names, shapes
    and dtypes and finite values; errors name the offending tensor and file(s), and leave no
    output. Returns ``out_path``.
    """
    base_file = model_weights_path(base_dir)
    ft_file = model_weights_path(finetuned_dir)
    keep_freed_memory()
    with SafetensorsReader(base_file) as fb, SafetensorsReader(ft_file) as ff:
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


@contextlib.contextmanager
def open_task_vectors(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Any]]:
    """Open several task-vector files lazily; yields the list of readers.

    Dense files give a :class:`SafetensorsReader`; compressed ones (written by
    :func:`speechmerge.compress.compress_lors`, detected by their metadata) a
    :class:`speechmerge.compress.CompressedTaskVector` that yields the dense LoRS(τ) tensors.
    Each reader supports ``.keys()``, ``.get_tensor(name)``, ``.shape(name)``, ``.dtype(name)``
    and ``.metadata()`` and reads one tensor at a time. Files are closed on exit.
    """
    from .compress import open_task_vector

    with contextlib.ExitStack() as stack:
        handles = []
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"task vector file not found: {p}")
            h = stack.enter_context(open_task_vector(p))
            check_task_vector_metadata(p, h.metadata())
            handles.append(h)
        yield handles
