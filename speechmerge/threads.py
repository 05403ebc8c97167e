"""CPU threads of the merge on a shared machine: how many, and how they wait.

Issue 16 measured it: with two fine-tunes beside it on 2 cores, LoRS of ten
whisper-small-shaped task vectors used 5x the CPU-seconds it used on a quiet machine
(``benchmarks/merge_bench.py --load 2 --omp-wait default`` reproduces it; docs/performance.md). The cause is OpenMP's wait policy: between parallel
regions (every GEMM and SVD step of a merge is one) libgomp's threads spin before they sleep
(300 000 rounds by default), and a thread that spins while the other thread of its team is
descheduled burns a core for nothing -- the spinning is counted as work, and it takes the core
from the thread it waits for. Two remedies, both an explicit opt-in like
:mod:`speechmerge.io.memory`:

* :func:`prefer_short_spin` sets ``GOMP_SPINCOUNT=1000`` (spin briefly, then sleep) unless
  the user chose a policy. OpenMP reads it once, when torch loads its runtime, so it must run
  before ``import torch``; it says whether it came in time.
* :func:`available_cpus` counts the CPUs this process may use: its affinity mask and the
  cgroup's CPU quota (a SLURM job or a container granted 4 of a node's 64 cores), which
  torch's default thread count ignores; :func:`limit_threads` caps torch's threads to it.

The CLI (``speechmerge`` / ``python -m speechmerge``) and the workflow's merge-type jobs
(merge, task vectors, dev selection, prune sweep) call both. Training and decoding are left as
they were (not measured under load).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

__all__ = [
    "SHORT_SPIN",
    "SPIN_COUNT",
    "WAIT_POLICY",
    "available_cpus",
    "cgroup_cpu_limit",
    "limit_threads",
    "prefer_short_spin",
]

#: The environment variable OpenMP reads its wait policy from (ACTIVE spins, PASSIVE sleeps).
WAIT_POLICY = "OMP_WAIT_POLICY"
#: libgomp's spin count at a barrier before a thread sleeps (its default: 300 000).
SPIN_COUNT = "GOMP_SPINCOUNT"
#: The spin count set by :func:`prefer_short_spin` (libgomp's own for oversubscribed teams).
SHORT_SPIN = 1000

_CGROUP = Path("/sys/fs/cgroup")


def prefer_short_spin() -> bool:
    """Set ``GOMP_SPINCOUNT=1000`` unless the user set it or ``OMP_WAIT_POLICY`` (their
    choice wins): OpenMP threads spin 1000 rounds at a barrier, then sleep.

    1000 is what libgomp itself uses when a team has more threads than CPUs; its default for
    an unset policy is 300 000, which wastes whole time slices when a team's other thread is
    descheduled. ``OMP_WAIT_POLICY=PASSIVE`` (no spin at all) fixed the load case too but made
    a quiet LoRS ~1.8x slower (a futex wake-up per parallel region); 1000 spins kept the quiet
    speed (measurements: docs/performance.md). Returns whether the setting in force is ours
    *and* it came before torch loaded OpenMP (after ``import torch`` it is read no more and
    only reaches child processes).
    """
    if WAIT_POLICY in os.environ or SPIN_COUNT in os.environ:
        return False
    os.environ[SPIN_COUNT] = str(SHORT_SPIN)
    return "torch" not in sys.modules


def cgroup_cpu_limit(root: str | os.PathLike[str] = _CGROUP) -> float | None:
    """CPUs granted by this process's cgroup quota (quota / period), or None if unlimited.

    cgroup v2: ``cpu.max`` ("max 100000" or "200000 100000") of the process's own cgroup
    (from ``/proc/self/cgroup``), else of the root; cgroup v1: ``cpu/cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us`` (-1 = unlimited). Unreadable or malformed files count as unlimited.
    """
    root = Path(root)
    candidates = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hier, _, path = line.partition("::")
            if hier == "0" and path:  # cgroup v2 entry "0::/user.slice/…"
                candidates.append(root / path.lstrip("/") / "cpu.max")
    except OSError:
        pass
    candidates.append(root / "cpu.max")
    for f in candidates:
        try:
            fields = f.read_text().split()
        except OSError:
            continue
        return _ratio(*fields[:2]) if len(fields) >= 2 else None
    for base in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota = (base / "cpu.cfs_quota_us").read_text().strip()
            period = (base / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            continue
        return _ratio(quota, period)
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = float(quota), float(period)
    except ValueError:  # "max": unlimited
        return None
    return q / p if q > 0 and p > 0 else None


def available_cpus(root: str | os.PathLike[str] = _CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up,
    at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)


def limit_threads(requested: int | None = None) -> int:
    """Cap torch's intra-op threads to :func:`available_cpus` (or to ``requested``).

    An explicit ``requested`` or the user's ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` is kept
    as given; otherwise torch's default (the machine's cores) is lowered to what the process
    may use. Returns the thread count in force.
    """
    import torch  # deferred: prefer_short_spin must be callable before torch loads

    if requested:
        torch.set_num_threads(int(requested))
    elif not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        torch.set_num_threads(max(1, min(torch.get_num_threads(), available_cpus())))
    return torch.get_num_threads()
