"""``python -m speechmerge``: see :mod:`speechmerge.cli`."""

from .cli import main

raise SystemExit(main())
