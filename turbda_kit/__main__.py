"""``python -m turbda_kit ...`` is the ``turbda`` command (see :mod:`turbda_kit.workflow.cli`)."""

import sys

from .workflow.cli import main

sys.exit(main())
