"""Synthetic contrast-enhanced abdominal CT phantoms around kidney/tumour label maps.

    from KidneyTumorSegLib.phantoms import make_phantom, procedural_labels, PhantomConfig
    labels = procedural_labels(seed=0)
    ct, info = make_phantom(labels, seed=0)
"""

from .generator import PhantomConfig, make_phantom
from .intensity import PHASES
from .procedural import KITS19_DIRECTION, procedural_labels
from .tissues import TISSUE_NAMES

__all__ = [
    "PHASES",
    "KITS19_DIRECTION",
    "TISSUE_NAMES",
    "PhantomConfig",
    "make_phantom",
    "procedural_labels",
]
