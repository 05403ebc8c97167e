"""Progress of long loops (training steps, decoded utterances) that suits terminals and log files.

On a terminal, a tqdm bar. Anywhere else (a Snakemake job's log file, a SLURM output file),
no bar: a bar redraws into a file as carriage-return noise. Instead one log line every
`interval` seconds with the count, the rate and the last statistics (e.g. the loss)::

    train: step 120/1125 (11%) loss 1.2345 | 0.52 steps/s, 16.6 utterances/s | 3m50s elapsed, ~32m left

and, at the end, a line with the loop's wall time and throughput. The job's closing line
(:func:`speechmerge.logutil.job_log`) adds up every loop of the job.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

from tqdm import tqdm

log = logging.getLogger(__name__)

#: Seconds between two progress lines in a non-terminal log.
INTERVAL = 30.0

# (desc kind, unit, count, items unit, items, seconds) of every loop closed during the current
# job_log; None outside a job.
_job_loops: list[tuple[str, str, int, str | None, int, float]] | None = None

PLURAL = {"step": "steps", "utt": "utterances", "tensor": "tensors", "s": "audio seconds"}


def _plural(unit: str) -> str:
    return PLURAL.get(unit, unit + "s")


def fmt_seconds(s: float) -> str:
    s = max(0, round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt_stat(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class Progress:
    """Count a loop's progress: ``update(n, items=..., **stats)`` after each unit of work,
    ``close()`` at the end (or use it as a context manager).

    `unit` is what `total` counts (``step``, ``utt``); `items` optionally names a second
    count whose throughput is reported too (the utterances of training steps). `tty`
    (default: whether stderr is a terminal) chooses the bar or the periodic lines;
    `enabled=False` shows neither (the totals still reach the job's closing line). `clock`
    is for tests."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "step",
        items: str | None = None,
        interval: float = INTERVAL,
        enabled: bool = True,
        tty: bool | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit, self.items_unit = total, desc, unit, items
        self.interval, self.clock, self.log = interval, clock, logger or log
        self.enabled = enabled
        self.tty = (sys.stderr.isatty() if tty is None else tty) and enabled
        self.n = self.items = 0
        self.stats: dict[str, Any] = {}
        self.t0 = self.last = clock()
        self.closed = False
        self.bar = None
        if self.tty:
            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1)

    def update(self, n: int = 1, items: int = 0, **stats) -> None:
        self.n += n
        self.items += items
        self.stats.update(stats)
        if self.bar is not None:
            self.bar.update(n)
            if stats:
                self.bar.set_postfix({k: _fmt_stat(v) for k, v in stats.items()}, refresh=False)
            return
        now = self.clock()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self.log.info("%s", self.line(now))

    def rates(self, now: float | None = None) -> tuple[float, float | None]:
        """(units/s, items/s or None) since the start."""
        dt = max((self.clock() if now is None else now) - self.t0, 1e-9)
        return self.n / dt, (self.items / dt if self.items_unit else None)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        rate, item_rate = self.rates(now)
        count = f"{self.unit} {self.n}" + (f"/{self.total}" if self.total else "")
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        stats = "".join(f" {k} {_fmt_stat(v)}" for k, v in self.stats.items())
        speed = f"{rate:.3g} {_plural(self.unit)}/s"
        if item_rate is not None:
            speed += f", {item_rate:.3g} {_plural(self.items_unit)}/s"
        eta = ""
        if self.total and rate > 0:
            eta = f", ~{fmt_seconds((self.total - self.n) / rate)} left"
        return f"{self.desc}: {count}{stats} | {speed} | {fmt_seconds(now - self.t0)} elapsed{eta}"

    def close(self) -> dict:
        """End the loop: log its wall time and throughput, count it for the job's closing line,
        and return them."""
        if self.bar is not None:
            self.bar.close()
        now = self.clock()
        seconds = now - self.t0
        rate, item_rate = self.rates(now)
        summary = {"seconds": round(seconds, 1), f"{_plural(self.unit)}_per_s": round(rate, 4)}
        if self.items_unit:
            summary[f"{_plural(self.items_unit)}_per_s"] = round(item_rate, 4)
        if not self.closed:
            self.closed = True
            if _job_loops is not None:
                kind = self.desc.split()[0]
                loop = (kind, self.unit, self.n, self.items_unit, self.items, seconds)
                _job_loops.append(loop)
            if self.enabled:
                counts = (self.unit, self.n, self.items_unit, self.items, seconds)
                self.log.info("%s done: %s", self.desc, _throughput(*counts))
        return summary

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _throughput(unit: str, n: int, items_unit: str | None, items: int, seconds: float) -> str:
    dt = max(seconds, 1e-9)
    text = f"{n} {_plural(unit)}"
    rates = f"{n / dt:.3g} {_plural(unit)}/s"
    if items_unit:
        text += f", {items} {_plural(items_unit)}"
        rates += f", {items / dt:.3g} {_plural(items_unit)}/s"
    return f"{text} in {seconds:.1f}s ({rates})"


def track(iterable: Iterable, desc: str, *, total: int | None = None, **kw) -> Iterator:
    """Iterate over `iterable`, counting one `unit` per element (see :class:`Progress`)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, **kw) as p:
        for x in iterable:
            yield x
            p.update(1)


def start_job() -> None:
    """Start collecting the loops of a job (called by :func:`speechmerge.logutil.job_log`)."""
    global _job_loops
    _job_loops = []


def end_job() -> str:
    """Stop collecting; return the job's throughput, loops added up by kind (the first word
    of their `desc`: ``train``, ``decode``, ...), e.g. ``train: 1125 steps, 36000
    utterances in 3512.0s (0.32 steps/s, 10.3 utterances/s)``; empty without loops."""
    global _job_loops
    loops, _job_loops = _job_loops or [], None
    totals: dict[tuple[str, str, str | None], list[float]] = {}
    for kind, unit, n, items_unit, items, seconds in loops:
        t = totals.setdefault((kind, unit, items_unit), [0, 0, 0.0])
        t[0] += n
        t[1] += items
        t[2] += seconds
    return "; ".join(
        f"{kind}: {_throughput(unit, int(n), items_unit, int(items), s)}"
        for (kind, unit, items_unit), (n, items, s) in totals.items()
    )
