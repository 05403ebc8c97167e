"""Memory tuning of the streaming merge: an explicit opt-in, never a side effect.

A library that tunes the allocator of the process that imports it surprises its user, so
nothing here runs unless a program asks: :func:`enable_streaming_memory_tuning` (the CLI's
``merge``/``compress`` commands and the workflow scripts that merge or compute task vectors
call it first thing). Once it is on, for the rest of the process:

* glibc's malloc keeps freed blocks for reuse (:func:`keep_freed_memory`);
* the merge gives the heap's free pages back around tensors above :data:`LARGE_TENSOR_BYTES`
  (:func:`release_around`);
* the merge asks the kernel to read the next tensor while it computes the current one
  (:func:`read_ahead`).

None of it changes a result; all of it is a no-op where unsupported (not glibc, no
``posix_fadvise``). Peak RSS and wall time are measured by ``benchmarks/merge_bench.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Iterable, Iterator
from typing import Protocol

__all__ = [
    "LARGE_TENSOR_BYTES",
    "enable_streaming_memory_tuning",
    "keep_freed_memory",
    "read_ahead",
    "release_around",
    "release_free_memory",
    "tuning_enabled",
]

#: Around merging a tensor this large (in fp32 bytes; before and after), free heap pages go
#: back to the OS (:func:`release_free_memory`), once tuning is on.
LARGE_TENSOR_BYTES = 32 << 20

_enabled = False


class _Prefetching(Protocol):
    def prefetch(self, name: str) -> None: ...


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
    the runs of ``benchmarks/merge_bench.py``). With tuning on, the merge calls it before and
    after each tensor above :data:`LARGE_TENSOR_BYTES` (:func:`release_around`).
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


def enable_streaming_memory_tuning() -> bool:
    """Switch the tuning of this module on for the rest of the process (idempotent).

    Applies :func:`keep_freed_memory` and makes :func:`release_around` and
    :func:`read_ahead` act. Returns whether the allocator tuning applied (glibc only); the
    read-ahead and the trims are on either way.
    """
    global _enabled
    _enabled = True
    return keep_freed_memory()


def tuning_enabled() -> bool:
    """Whether :func:`enable_streaming_memory_tuning` was called in this process."""
    return _enabled


@contextlib.contextmanager
def release_around(fp32_bytes: int) -> Iterator[None]:
    """With tuning on, :func:`release_free_memory` before and after the block when a tensor
    of ``fp32_bytes`` is above :data:`LARGE_TENSOR_BYTES` (its temporaries need room the
    heap's small free blocks lack); otherwise nothing."""
    large = _enabled and fp32_bytes > LARGE_TENSOR_BYTES
    if large:
        release_free_memory()
    yield
    if large:
        release_free_memory()


def read_ahead(readers: Iterable[_Prefetching], name: str | None) -> None:
    """With tuning on, ask each reader to prefetch tensor ``name`` (the next one to merge:
    read from disk while the current one is computed); otherwise, or for None, nothing."""
    if _enabled and name is not None:
        for r in readers:
            r.prefetch(name)
