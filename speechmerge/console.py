"""The ``speechmerge`` console command and ``python -m speechmerge``: OpenMP's short spin
count is set before anything loads torch (:func:`speechmerge.threads.prefer_short_spin`),
then :func:`speechmerge.cli.main` runs."""

from __future__ import annotations

from .threads import prefer_short_spin


def main() -> int:
    prefer_short_spin()
    from .cli import main as cli_main  # deferred: torch must load after the spin count is set

    return cli_main()
