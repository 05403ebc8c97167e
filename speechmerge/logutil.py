"""Logging for workflow jobs: everything a job prints (logging, tqdm bars, warnings) goes to
its Snakemake log file, with a closing line giving the job's wall time and the throughput of
its long loops (training steps and utterances per second, decoded utterances per second;
:mod:`speechmerge.progress`)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from . import progress
from .io.atomic import terminate_on_sigterm


@contextlib.contextmanager
def job_log(path: str | None, threads: int | None = None):
    """Send logging and stderr to `path` (append) for the duration of a job."""
    stream = open(path, "a", buffering=1, encoding="utf-8") if path else sys.stderr  # noqa: SIM115
    old_stderr = sys.stderr
    sys.stderr = stream
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if threads:
        # deferred: every job imports this module, most never touch torch
        import torch

        torch.set_num_threads(int(threads))
    t0 = time.time()
    progress.start_job()
    job = logging.getLogger("speechmerge.job")
    try:
        with terminate_on_sigterm():  # temp outputs are removed on SIGTERM too
            yield job
    except BaseException:
        loops = progress.end_job()
        job.exception("job failed after %.1fs%s", time.time() - t0, f" ({loops})" if loops else "")
        raise
    else:
        loops = progress.end_job()
        job.info("job done in %.1fs wall time%s", time.time() - t0, f"; {loops}" if loops else "")
    finally:
        root.removeHandler(handler)
        sys.stderr = old_stderr
        if path:
            stream.close()
