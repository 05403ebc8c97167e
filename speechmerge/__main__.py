"""``python -m speechmerge``: see :mod:`speechmerge.cli` (entry via :mod:`speechmerge.console`)."""

from .console import main

raise SystemExit(main())
