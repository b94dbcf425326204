"""``python -m turbda_kit.report ...`` (see :mod:`turbda_kit.report.cli`)."""

from .cli import main

raise SystemExit(main())
