"""``python -m KidneyTumorSegLib.training train|evaluate ...`` (also under torchrun -m)."""

import sys

from .cli import main

sys.exit(main())
