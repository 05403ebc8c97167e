"""Compressed task vectors: LoRS(τ) stored as low-rank factors + a sparse residual.

:func:`compress_lors` writes, for every prunable matrix
(:func:`speechmerge.architecture.is_prunable`) of a task-vector file, the LoRS decomposition of
the paper (eqs. 5-7) ``LoRS(τ) = L + S`` as

* ``{name}::us``  -- ``U_r Σ_r`` (d x r) and ``{name}::v`` -- ``V_r`` (k x r): ``L = us @ vᵀ``;
* ``{name}::idx`` -- int64 flat (row-major) indices of the kept residual entries and
  ``{name}::val`` -- their values: ``S.view(-1)[idx] = val``.

Every other tensor is stored dense under its own name (unchanged τ, which is what LoRS-Merging
merges for non-prunable tensors); so is a prunable matrix whose factors would not be smaller
than the dense matrix (its dense LoRS(τ)). The file metadata records the format
(``speechmerge_format = "lors-compressed"``, ``format_version``), ``rank_ratio``,
``keep_ratio``, the byte sizes of the dense τ and of the compressed tensors, and their ratio
``compression_ratio = dense_bytes / compressed_bytes``.

:class:`CompressedTaskVector` is a lazy reader that yields the dense LoRS(τ) tensor by tensor,
with the same interface as :class:`speechmerge.io.weights.SafetensorsReader`;
:func:`open_task_vectors` opens dense and compressed files alike, so merging compressed task
vectors with ``ta`` is LoRS-Merging (:func:`speechmerge.merge.merge_models` reads its inputs
through it). :func:`decompress` writes the dense LoRS(τ) file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .architecture import is_prunable
from .io.weights import (
    SafetensorsReader,
    TensorFile,
    TensorSpec,
    all_finite,
    atomic_save_streaming,
    nbytes,
)
from .linalg import topk_mask, work_dtype
from .prune import (
    check_ratio,
    check_rounding,
    count_from_ratio,
    lors_dense,
    rank_from_ratio,
    svd_exact,
    svp_factors,
)
from .taskvector import check_task_vector_metadata

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CompressedTaskVector",
    "compress_lors",
    "decompress",
    "is_compressed",
    "is_task_vector_file",
    "open_task_vector",
    "open_task_vectors",
]

FORMAT = "lors-compressed"
FORMAT_VERSION = "1"
SEP = "::"
_PARTS = ("us", "v", "idx", "val")


def is_compressed(metadata: dict[str, str] | None) -> bool:
    """Whether a safetensors metadata dict is that of a compressed task vector."""
    return bool(metadata) and metadata.get("speechmerge_format") == FORMAT


def _plan(
    name: str,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    rank_ratio: float,
    keep_ratio: float,
    rounding: str | None = None,
) -> list[TensorSpec] | None:
    """Stored tensors of one prunable matrix, or None to store it dense."""
    meta = torch.empty(shape, dtype=dtype, device="meta")
    if not is_prunable(name, meta):
        return None
    d, k = shape
    r = rank_from_ratio(shape, rank_ratio, rounding)
    if r >= min(d, k):  # SVP is the identity and the residual is 0: LoRS(τ) = τ
        return None
    wd = work_dtype(dtype)
    nnz = count_from_ratio(d * k, keep_ratio, rounding)
    specs = [
        (f"{name}{SEP}us", wd, (d, r)),
        (f"{name}{SEP}v", wd, (k, r)),
        (f"{name}{SEP}idx", torch.int64, (nnz,)),
        (f"{name}{SEP}val", wd, (nnz,)),
    ]
    if sum(nbytes(dt, sh) for _, dt, sh in specs) >= nbytes(dtype, shape):
        return None
    return specs


def _lors_parts(
    t: Tensor, rank_ratio: float, keep_ratio: float, exact: bool | None, rounding: str | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(us, v, idx, val) with ``LoRS(t) = us @ vᵀ + scatter(idx, val)`` exactly as
    :func:`speechmerge.prune.lors_dense` computes it (same SVD, same top-k)."""
    f = svp_factors(t, rank_ratio, exact=exact, rounding=rounding)
    assert f is not None
    us, v = f
    wd = work_dtype(t.dtype)
    low = (us @ v.T).to(t.dtype)
    resid = (t.to(wd) - low.to(wd)).reshape(-1)
    k = count_from_ratio(resid.numel(), keep_ratio, rounding)
    if k > 0:
        idx = topk_mask(resid.abs(), k).nonzero().reshape(-1)  # sorted, same set as lors_dense
    else:
        idx = torch.zeros(0, dtype=torch.int64)
    return us, v, idx.to(torch.int64), resid[idx].contiguous()


def compress_lors(
    tv_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    rank_ratio: float,
    keep_ratio: float,
    exact: bool | None = None,
    progress: bool = False,
    rounding: str | None = None,
) -> dict[str, Any]:
    """Write the compressed LoRS(τ) of the task vector at ``tv_path`` to ``out_path``.

    Streams tensor by tensor; written atomically. ``exact`` is passed to the SVD (None: the
    seeded randomized SVD for small ranks, as in :func:`speechmerge.prune.svp`); ``rounding``
    as in :mod:`speechmerge.prune` (``"paper"``: the authors' rank and count, exact SVD; it is
    then recorded in the metadata). Returns the metadata written (all values are strings, as
    safetensors metadata must be).
    """
    rounding = check_rounding(rounding)
    exact = svd_exact(exact, rounding)
    rank_ratio = check_ratio(rank_ratio, "rank_ratio")
    keep_ratio = check_ratio(keep_ratio, "keep_ratio")
    with SafetensorsReader(tv_path) as r:
        src_meta = r.metadata() or {}
        if is_compressed(src_meta):
            raise ValueError(f"{tv_path} is already a compressed task vector")
        check_task_vector_metadata(tv_path, src_meta)
        specs: list[TensorSpec] = []
        dense_lors: set[str] = set()  # prunable matrices stored as their dense LoRS(τ)
        dense_bytes = 0
        for name in r:
            if SEP in name:
                raise ValueError(f"tensor name {name!r} in {tv_path} contains {SEP!r}")
            dtype, shape = r.dtype(name), r.shape(name)
            dense_bytes += nbytes(dtype, shape)
            plan = (
                _plan(name, dtype, shape, rank_ratio, keep_ratio, rounding)
                if len(shape) == 2
                else None
            )
            specs.extend(plan if plan is not None else [(name, dtype, shape)])
            if (
                plan is None
                and len(shape) == 2
                and is_prunable(name, torch.empty(shape, dtype=dtype, device="meta"))
                and rank_from_ratio(shape, rank_ratio, rounding) < min(shape)
            ):
                dense_lors.add(name)  # pruned, but its factors would not be smaller
        compressed_bytes = sum(nbytes(dt, sh) for _, dt, sh in specs)
        meta = {k: v for k, v in src_meta.items() if k != "format"}
        meta.update(
            {
                "speechmerge_format": FORMAT,
                "format_version": FORMAT_VERSION,
                "source": str(tv_path),
                "rank_ratio": repr(rank_ratio),
                "keep_ratio": repr(keep_ratio),
                "exact_svd": str(exact),
                "dense_bytes": str(dense_bytes),
                "compressed_bytes": str(compressed_bytes),
                "compression_ratio": f"{dense_bytes / max(compressed_bytes, 1):.4f}",
            }
        )
        if rounding != "ceil":  # default files keep the metadata they had
            meta["rounding"] = rounding
        cache: dict[str, Tensor] = {}

        def produce(stored: str) -> Tensor:
            if stored in dense_lors:
                t = r.get_tensor(stored)
                return lors_dense(
                    t, rank_ratio, keep_ratio, exact=exact, rounding=rounding
                ).contiguous()
            if SEP not in stored:
                return r.get_tensor(stored).contiguous()
            name, part = stored.rsplit(SEP, 1)
            if part == "us":
                t = r.get_tensor(name)
                if not all_finite(t):
                    raise ValueError(f"tensor {name!r} has NaN/Inf values in {tv_path}")
                cache.clear()
                cache.update(
                    zip(
                        _PARTS,
                        _lors_parts(t, rank_ratio, keep_ratio, exact, rounding),
                        strict=True,
                    )
                )
            return cache.pop(part)

        atomic_save_streaming(out_path, specs, produce, meta, progress=progress, desc="compress")
    return meta


class CompressedTaskVector(TensorFile):
    """Lazy reader of a compressed task vector: ``get_tensor(name)`` is the dense LoRS(τ).

    Interface of :class:`speechmerge.io.weights.SafetensorsReader` (``keys``, ``get_tensor``,
    ``shape``, ``dtype``, ``metadata``, context manager) over the *logical* tensor names.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._r = SafetensorsReader(path)
        meta = self._r.metadata()
        if not is_compressed(meta):
            self._r.close()
            raise ValueError(f"{path} is not a compressed task vector (metadata {meta})")
        if meta.get("format_version") != FORMAT_VERSION:  # type: ignore[union-attr]
            self._r.close()
            raise ValueError(
                f"{path}: unsupported compressed format version {meta.get('format_version')!r}"  # type: ignore[union-attr]
            )
        self._names: list[str] = []
        self._index = self._names
        self._compressed: set[str] = set()
        stored = set(self._r.keys())
        for s in self._r:
            if SEP not in s:
                self._names.append(s)
            elif s.endswith(f"{SEP}us"):
                name = s[: -len(f"{SEP}us")]
                missing = [p for p in _PARTS if f"{name}{SEP}{p}" not in stored]
                if missing:
                    self._r.close()
                    raise ValueError(f"{path}: tensor {name!r} lacks {SEP}{missing[0]}")
                bad = self._bad_parts(name)
                if bad:
                    self._r.close()
                    raise ValueError(f"{path}: compressed tensor {name!r}: {bad}")
                self._names.append(name)
                self._compressed.add(name)

    def _bad_parts(self, name: str) -> str | None:
        """Why the stored parts of ``name`` cannot form a (d, k) matrix (None if they can)."""
        us, v, idx, val = (tuple(self._r.shape(f"{name}{SEP}{p}")) for p in _PARTS)
        if len(us) != 2 or len(v) != 2 or us[1] != v[1]:
            return f"factor shapes {us} ({SEP}us) and {v} ({SEP}v) are not (d, r) and (k, r)"
        if len(idx) != 1 or idx != val:
            return f"sparse parts have shapes {idx} ({SEP}idx) and {val} ({SEP}val)"
        return None

    def close(self) -> None:
        self._r.close()

    def metadata(self) -> dict[str, str] | None:
        return self._r.metadata()

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._compressed:
            return (self._r.shape(f"{name}{SEP}us")[0], self._r.shape(f"{name}{SEP}v")[0])
        return self._r.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        if name in self._compressed:
            return self._r.dtype(f"{name}{SEP}val")
        return self._r.dtype(name)

    def prefetch(self, name: str) -> None:
        """See :meth:`speechmerge.io.weights.SafetensorsReader.prefetch` (all stored parts)."""
        if name not in self._compressed:
            self._r.prefetch(name)
            return
        for part in _PARTS:
            self._r.prefetch(f"{name}{SEP}{part}")

    def get_tensor(self, name: str) -> Tensor:
        if name not in self._compressed:
            return self._r.get_tensor(name)
        us, v = self._r.get_tensor(f"{name}{SEP}us"), self._r.get_tensor(f"{name}{SEP}v")
        idx, val = self._r.get_tensor(f"{name}{SEP}idx"), self._r.get_tensor(f"{name}{SEP}val")
        d, k = us.shape[0], v.shape[0]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d * k):
            raise ValueError(f"tensor {name!r} in {self.path}: sparse index out of range")
        low = us @ v.T
        sparse = torch.zeros(d * k, dtype=val.dtype)
        sparse[idx] = val
        return low + sparse.reshape(d, k)


def is_task_vector_file(path: Path) -> bool:
    """Whether ``path`` is a task-vector file written by speechmerge (dense, compressed or
    decompressed: its safetensors metadata says so)."""
    try:
        with SafetensorsReader(path) as r:
            meta = r.metadata() or {}
    except (OSError, ValueError):
        return False
    return is_compressed(meta) or "decompressed_from" in meta or {"base", "finetuned"} <= set(meta)


def open_task_vector(path: str | os.PathLike[str]) -> SafetensorsReader | CompressedTaskVector:
    """A reader for a dense or a compressed task-vector file (detected by its metadata)."""
    r = SafetensorsReader(path)
    if is_compressed(r.metadata()):
        r.close()
        return CompressedTaskVector(path)
    return r


@contextlib.contextmanager
def open_task_vectors(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Any]]:
    """Open several task-vector files lazily; yields the list of readers.

    Dense files give a :class:`speechmerge.io.weights.SafetensorsReader`; compressed ones
    (written by :func:`compress_lors`, detected by their metadata) a
    :class:`CompressedTaskVector` that yields the dense LoRS(τ) tensors. Each reader supports
    ``.keys()``, ``.get_tensor(name)``, ``.shape(name)``, ``.dtype(name)`` and ``.metadata()``
    and reads one tensor at a time; a model's weights are refused
    (:func:`speechmerge.taskvector.check_task_vector_metadata`). Files are closed on exit.
    """
    with contextlib.ExitStack() as stack:
        handles = []
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"task vector file not found: {p}")
            h = stack.enter_context(open_task_vector(p))
            check_task_vector_metadata(p, h.metadata())
            handles.append(h)
        yield handles


def decompress(
    path: str | os.PathLike[str], out_path: str | os.PathLike[str], progress: bool = False
) -> Path:
    """Write the dense LoRS(τ) of a compressed task vector as a plain task-vector file."""
    with CompressedTaskVector(path) as c:
        meta = {
            k: v
            for k, v in (c.metadata() or {}).items()
            if k not in ("speechmerge_format", "format_version")
        }
        meta["decompressed_from"] = str(path)
        specs = [(n, c.dtype(n), c.shape(n)) for n in c]
        atomic_save_streaming(out_path, specs, c.get_tensor, meta, progress=progress)
    return Path(out_path)
