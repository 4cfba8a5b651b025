"""``python -m transferkit`` (and ``torchrun -m transferkit``): the command line."""

import sys

from transferkit.cli.main import main

sys.exit(main())
