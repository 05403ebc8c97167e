"""Weight files: safetensors read and written one tensor at a time (memory O(largest tensor)).

* :class:`SafetensorsReader` reads one tensor at a time with plain ``read`` calls. (``safe_open``
  memory-maps the file, and every page it touches stays in the process's resident set while
  the file is open: merging n task vectors through ``safe_open`` shows an RSS of n models.)
  :class:`ShardedSafetensorsReader` is the same over the shards of a sharded checkpoint
  (Hugging Face's ``model.safetensors.index.json``, :mod:`speechmerge.io.shards`).
* :func:`atomic_save_streaming` writes a safetensors file tensor by tensor (the header is
  computed up front from the names, dtypes and shapes) through
  :func:`speechmerge.io.atomic.atomic_file`: a temp file renamed into place at the end.
  :func:`save_model_weights` writes a model dir's weights with it, as one file or as shards
  and their index (``max_shard_size``).
* :func:`model_weights_path` finds the weights of a Hugging Face model dir (``model.safetensors``
  or the index of a sharded checkpoint), :func:`model_weight_files` lists all their files and
  :func:`open_model_weights` opens either kind; :func:`all_finite` is the NaN/Inf check every
  reader of weights applies.
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

from .atomic import atomic_file, atomic_write_text, check_folder
from .shards import INDEX_NAME, WEIGHTS_NAME, parse_shard_size, plan_shards, read_index, shard_name

__all__ = [
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "SafetensorsReader",
    "ShardedSafetensorsReader",
    "TensorFile",
    "TensorSpec",
    "WeightsReader",
    "all_finite",
    "atomic_save_streaming",
    "model_weight_files",
    "model_weights_path",
    "nbytes",
    "open_model_weights",
    "open_weights",
    "save_model_weights",
]

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


class ShardedSafetensorsReader(TensorFile):
    """Lazy reader of a sharded checkpoint: the tensors of every shard its index lists.

    ``path`` is the index (``model.safetensors.index.json``); the shards are opened as
    :class:`SafetensorsReader` (no mmap, one tensor read at a time, so memory stays
    O(largest tensor)) and the interface is theirs: ``keys()`` in the index's order,
    ``get_tensor``, ``shape``, ``dtype``, ``prefetch``, ``metadata`` (that of the first shard
    by file name), ``close``, context manager. Everything is checked at open, before any
    tensor is read, with errors naming the file: a malformed index, a missing shard, a tensor
    the index maps to a shard that lacks it, a tensor in a shard that the index does not map
    there.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"sharded-checkpoint index not found: {self.path}")
        weight_map = read_index(self.path)
        self._shards: dict[str, SafetensorsReader] = {}
        try:
            for file in sorted(set(weight_map.values())):
                shard = self.path.parent / file
                if not shard.is_file():
                    raise FileNotFoundError(f"shard {shard} listed in {self.path} is missing")
                self._shards[file] = SafetensorsReader(shard)
            for name, file in weight_map.items():
                if name not in self._shards[file]:
                    raise ValueError(
                        f"tensor {name!r} is mapped to {self.path.parent / file} by {self.path} "
                        "but is not in that file"
                    )
            for file, r in self._shards.items():
                for name in r:
                    if weight_map.get(name) != file:
                        raise ValueError(
                            f"tensor {name!r} in {r.path} is not mapped to that file by "
                            f"{self.path} (a damaged or mismatched checkpoint)"
                        )
        except BaseException:
            self.close()
            raise
        self._where = {name: self._shards[file] for name, file in weight_map.items()}
        self._index = self._where

    @property
    def files(self) -> list[Path]:
        """The index, then each shard (sorted by file name)."""
        return [self.path, *(r.path for r in self._shards.values())]

    def close(self) -> None:
        for r in self._shards.values():
            r.close()

    def metadata(self) -> dict[str, str] | None:
        return next(iter(self._shards.values())).metadata()

    def _reader(self, name: str) -> SafetensorsReader:
        try:
            return self._where[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in {self.path}") from None

    def shard_path(self, name: str) -> Path:
        """The shard file that holds tensor ``name``."""
        return self._reader(name).path

    def shape(self, name: str) -> tuple[int, ...]:
        return self._reader(name).shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._reader(name).dtype(name)

    def prefetch(self, name: str) -> None:
        """See :meth:`SafetensorsReader.prefetch` (in the shard that holds ``name``)."""
        if name in self._where:
            self._where[name].prefetch(name)

    def get_tensor(self, name: str) -> Tensor:
        """Read tensor ``name`` from its shard into a new CPU tensor."""
        return self._reader(name).get_tensor(name)


#: What :func:`open_weights` returns: one file's reader or a sharded checkpoint's.
WeightsReader = SafetensorsReader | ShardedSafetensorsReader


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


def save_model_weights(
    folder: str | os.PathLike[str],
    specs: Sequence[TensorSpec],
    produce: Callable[[str], Tensor],
    metadata: dict[str, str] | None = None,
    max_shard_size: int | str | None = None,
    progress: bool = False,
    desc: str = "write",
) -> list[Path]:
    """Write a model dir's weights into ``folder``, streaming as :func:`atomic_save_streaming`.

    ``max_shard_size`` None (the default), or a limit the tensors fit in at once: one
    ``model.safetensors``. Otherwise Hugging Face's sharded layout: the tensors split in order
    by :func:`speechmerge.io.shards.plan_shards` (a shard takes tensors until the next would
    take it over the limit; a larger tensor gets a shard of its own) into
    ``model-00001-of-0000N.safetensors`` … (each with ``metadata``), then
    ``model.safetensors.index.json`` (``{"metadata": {"total_size": bytes of tensor data},
    "weight_map": {name: shard}}``, in the tensors' order), written last. ``max_shard_size``
    is bytes or a string such as ``"2GB"`` (:func:`speechmerge.io.shards.parse_shard_size`).
    ``produce`` is called once per spec, in order. Each file is written atomically; the
    whole set is atomic when ``folder`` is a temp dir that is moved into place afterwards
    (what :func:`speechmerge.merge.merge_models` does). A ``folder`` that already holds
    weights is refused (a stale shard or ``model.safetensors`` beside a new index would be
    loaded instead of it). Returns the files written (the index last).
    """
    folder = Path(folder)
    limit = parse_shard_size(max_shard_size)
    stale = [
        p.name for p in (sorted(folder.glob("model-*-of-*.safetensors")) if folder.is_dir() else [])
    ]
    stale += [n for n in (WEIGHTS_NAME, INDEX_NAME) if (folder / n).exists()]
    if stale:
        raise FileExistsError(f"{folder} already holds weights ({', '.join(stale)})")
    names = [name for name, _, _ in specs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"duplicate tensor name {dup!r}")
    sizes = [(name, nbytes(dtype, shape)) for name, dtype, shape in specs]
    groups = [names] if limit is None else plan_shards(sizes, limit)
    if len(groups) <= 1:
        return [
            atomic_save_streaming(
                folder / WEIGHTS_NAME, specs, produce, metadata, progress=progress, desc=desc
            )
        ]
    by_name = {spec[0]: spec for spec in specs}
    bar = tqdm(total=len(specs), desc=desc, unit="tensor", file=sys.stderr, disable=not progress)

    def counted(name: str) -> Tensor:
        t = produce(name)
        bar.update()
        return t

    written, weight_map = [], {}
    with bar:
        for i, group in enumerate(groups, 1):
            file = shard_name(i, len(groups))
            shard = [by_name[name] for name in group]
            written.append(atomic_save_streaming(folder / file, shard, counted, metadata))
            weight_map.update(dict.fromkeys(group, file))
    index = {"metadata": {"total_size": sum(n for _, n in sizes)}, "weight_map": weight_map}
    atomic_write_text(folder / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    return [*written, folder / INDEX_NAME]


def model_weights_path(model_dir: str | os.PathLike[str]) -> Path:
    """The file the weights of a Hugging Face model dir are read from: ``model.safetensors``,
    or the index ``model.safetensors.index.json`` of a sharded checkpoint (as Hugging Face,
    ``model.safetensors`` wins when a dir has both). A damaged dir (a file of its manifest
    missing or of another size) is a ValueError, a dir with neither a FileNotFoundError."""
    d = Path(model_dir)
    check_folder(d)
    for name in (WEIGHTS_NAME, INDEX_NAME):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(
        f"no {WEIGHTS_NAME} (nor a sharded {INDEX_NAME}) in model directory {d}"
    )


def open_weights(path: str | os.PathLike[str]) -> WeightsReader:
    """A lazy reader of weights: ``path`` is a safetensors file, the index of a sharded
    checkpoint (``*.index.json``) or a model dir (:func:`model_weights_path`)."""
    path = Path(path)
    if path.is_dir():
        path = model_weights_path(path)
    if path.name.endswith(".index.json"):
        return ShardedSafetensorsReader(path)
    return SafetensorsReader(path)


def open_model_weights(model_dir: str | os.PathLike[str]) -> WeightsReader:
    """A lazy reader of a Hugging Face model dir's weights, sharded or not."""
    return open_weights(model_weights_path(model_dir))


def model_weight_files(path: str | os.PathLike[str]) -> list[Path]:
    """Every file the weights at ``path`` (as :func:`open_weights`) consist of: the one
    safetensors file, or the index followed by each shard it names (sorted by file name). A
    shard that is missing is a FileNotFoundError naming it and the index."""
    path = Path(path)
    if path.is_dir():
        path = model_weights_path(path)
    if not path.name.endswith(".index.json"):
        return [path]
    shards = [path.parent / f for f in sorted(set(read_index(path).values()))]
    for shard in shards:
        if not shard.is_file():
            raise FileNotFoundError(f"shard {shard} listed in {path} is missing")
    return [path, *shards]
