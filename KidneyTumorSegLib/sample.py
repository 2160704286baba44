"""A synthetic contrast CT to try the module on in one click, made here (no download, no patient).

The same phantom the module's self-test segments: two kidneys, a tumour, abdomen around them, on a
1.5 x 1.5 x 3 mm grid, stored as int16 HU. Slicer's Sample Data module offers it; the file is made
once into Slicer's cache folder and reused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .volume import Volume

SAMPLE_NAME = "KidneyTumorSegPhantom"
SAMPLE_FILE = "KidneyTumorSegPhantom-CT.nrrd"
SAMPLE_NODE_NAME = "KidneyTumorSeg phantom CT"
SAMPLE_SEED = 3
SAMPLE_SHAPE_ZYX = (80, 256, 256)
SAMPLE_SPACING_XYZ = (1.5, 1.5, 3.0)


def make_sample_ct(seed: int = SAMPLE_SEED) -> tuple[Volume, Volume]:
    """(CT in HU as int16, its true labels 0/1/2), the same for the same seed on every machine."""
    from .phantoms import make_phantom, procedural_labels

    truth = procedural_labels(seed, shape_zyx=SAMPLE_SHAPE_ZYX, spacing_xyz=SAMPLE_SPACING_XYZ, n_kidneys=2)
    ct, _info = make_phantom(truth, seed)
    return ct.with_array(np.round(ct.array).astype(np.int16)), truth


def write_sample_ct(path: str | os.PathLike, seed: int = SAMPLE_SEED) -> Path:
    """Write the sample CT (atomically) and return its path."""
    from .io import write_volume

    ct, _truth = make_sample_ct(seed)
    return write_volume(ct, path)
