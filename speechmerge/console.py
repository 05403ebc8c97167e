"""The ``speechmerge`` console command and ``python -m speechmerge``: OpenMP's passive wait
policy is set before anything loads torch (:func:`speechmerge.threads.prefer_passive_wait`),
then :func:`speechmerge.cli.main` runs."""

from __future__ import annotations

from .threads import prefer_passive_wait


def main() -> int:
    prefer_passive_wait()
    from .cli import main as cli_main  # deferred: torch must load after the wait policy is set

    return cli_main()
