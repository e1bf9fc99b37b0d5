"""``python -m coolmomentum``: the command line."""

import sys

from coolmomentum.cli import main

sys.exit(main())
