"""Preprocessing: the HU window every network sees, mapped onto [0, 1].

Moving images between grids is :mod:`.resampling`'s job; this is what happens to the values.
"""

from __future__ import annotations

import numpy as np

from .config import PreprocessConfig


def normalise_hu(array: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Clip to [hu_min, hu_max] and map linearly onto [0, 1] (float32)."""
    out = np.clip(array.astype(np.float32, copy=False), cfg.hu_min, cfg.hu_max)
    out -= np.float32(cfg.hu_min)
    out *= np.float32(1.0 / (cfg.hu_max - cfg.hu_min))
    return out
