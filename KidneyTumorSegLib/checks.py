"""Plausibility checks on an input volume before any network sees it.

A contrast CT in Hounsfield units has air (about -1000 HU) around the body or fat (about -100 HU)
inside it, and soft tissue between. MR images and CTs stored as raw detector values (0-4095) have
neither; they are refused unless the user insists, because the networks would silently fail.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, NotCTError
from .volume import Volume

NOT_CT = (
    "The image does not look like a CT in Hounsfield units (no air or fat values below -50); "
    "a contrast-enhanced CT in HU is needed. Use --allow-non-ct to run anyway."
)


def intensity_sample(array: np.ndarray, max_voxels: int = 2_000_000) -> np.ndarray:
    """A strided sample of the voxels: statistics without touching every voxel of a huge scan."""
    step = max(1, int(np.ceil((array.size / max_voxels) ** (1 / 3))))
    return np.asarray(array[::step, ::step, ::step], dtype=np.float32).ravel()


def looks_like_hu_ct(sample: np.ndarray) -> bool:
    """Air or fat present (a low percentile well below zero) and no absurd positive range."""
    p1, p99 = np.percentile(sample, [1, 99])
    return bool(p1 < -50.0 and p99 < 4000.0)


def check_ct_volume(volume: Volume, allow_non_ct: bool = False) -> list[str]:
    """Raise for unusable input; return warnings for usable but doubtful input."""
    arr = volume.array
    if min(arr.shape) < 2:
        raise InputError(f"The image has shape {arr.shape} (z, y, x); a 3D volume of several slices is needed.")
    sample = intensity_sample(arr)
    if not np.all(np.isfinite(sample)) or not np.all(np.isfinite(arr)):
        raise InputError("The image holds NaN or infinite voxels.")
    if float(sample.max()) == float(sample.min()) and float(arr.max()) == float(arr.min()):
        raise InputError(f"The image is constant (every voxel is {float(arr.flat[0]):g}); there is nothing to segment.")
    warnings = []
    if not looks_like_hu_ct(sample):
        if not allow_non_ct:
            raise NotCTError(NOT_CT)
        warnings.append("The image does not look like a CT in Hounsfield units; results may be meaningless.")
    extent = np.asarray(volume.size_xyz) * np.asarray(volume.spacing)
    if extent[2] < 40.0:
        warnings.append(f"The scan covers only {extent[2]:.0f} mm along its slice axis; kidneys may be cut off.")
    return warnings
