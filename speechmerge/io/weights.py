"""Weight files: safetensors read and written one tensor at a time (memory O(largest tensor)).

* :class:`SafetensorsReader` reads one tensor at a time with plain ``read`` calls. (``safe_open``
  memory-maps the file, and every page it touches stays in the process's resident set while
  the file is open: merging n task vectors through ``safe_open`` shows an RSS of n models.)
* :func:`atomic_save_streaming` writes a safetensors file tensor by tensor (the header is
  computed up front from the names, dtypes and shapes) through
  :func:`speechmerge.io.atomic.atomic_file`: a temp file renamed into place at the end.
* :func:`model_weights_path` finds ``model.safetensors`` in a Hugging Face model dir;
  :func:`all_finite` is the NaN/Inf check every reader of weights applies.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor
from tqdm import tqdm

from .atomic import atomic_file, check_folder

__all__ = [
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "SafetensorsReader",
    "TensorFile",
    "TensorSpec",
    "all_finite",
    "atomic_save_streaming",
    "model_weights_path",
    "nbytes",
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


def nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    """Bytes of a tensor of ``dtype`` and ``shape`` (its data in a safetensors file)."""
    return math.prod(int(x) for x in shape) * torch.empty((), dtype=dtype).element_size()


class TensorFile:
    """What every lazy reader of tensors shares: its tensor names (``self._index``, in file
    order) as ``keys()``, iteration and ``in``; a context manager that calls ``close()``."""

    _index: Collection[str]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index


class SafetensorsReader(TensorFile):
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
            self._index = header
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

    def close(self) -> None:
        self._f.close()

    def metadata(self) -> dict[str, str] | None:
        return None if self._meta is None else dict(self._meta)

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
        size = b - a
        if size != nbytes(dtype, shape):
            raise ValueError(f"tensor {name!r} in {self.path}: {size} bytes for shape {shape}")
        if size == 0:
            return torch.empty(shape, dtype=dtype)
        # read straight into an uninitialised tensor: a bytearray would be zero-filled first,
        # which cost more than the read itself (from the page cache)
        out = torch.empty(size, dtype=torch.uint8)
        view = memoryview(out.numpy())
        self._f.seek(self._start + a)
        got = 0
        while got < size:
            k = self._f.readinto(view[got:])
            if not k:
                raise ValueError(f"tensor {name!r}: unexpected end of file {self.path}")
            got += k
        return out.view(dtype).reshape(shape)


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
        n = nbytes(dtype, shape)
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
