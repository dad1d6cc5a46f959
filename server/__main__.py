"""``python -m server`` runs the ``onramp`` command (same as the console script)."""
import sys

from server.ops.cli import main

sys.exit(main())
