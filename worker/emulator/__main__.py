"""`python -m worker.emulator` is `edge-worker emulator`."""

import sys

from worker.emulator.cli import main

sys.exit(main())
