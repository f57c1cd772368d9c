"""``python -m steerflow``: the same command line as the ``steerflow`` script."""

import sys

from steerflow.cli import main

sys.exit(main())
