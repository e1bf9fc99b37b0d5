"""``python -m coolmomentum``: the command line."""

import sys

from coolmomentum.bench.cli import main

sys.exit(main())
