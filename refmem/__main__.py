"""``python -m refmem`` runs the command-line interface (same as the ``refmem`` console script)."""

import sys

from .cli import main

sys.exit(main())
