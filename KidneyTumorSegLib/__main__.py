"""``python -m KidneyTumorSegLib``: the same command line as ``kidney-tumor-seg``."""

import sys

from .cli import main

sys.exit(main())
