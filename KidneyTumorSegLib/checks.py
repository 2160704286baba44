"""Plausibility checks on an input volume before any network sees it.

A contrast CT in Hounsfield units holds fat (about -100 HU) and usually air (about -1000 HU), with
most of the body's voxels between -150 and 250 HU. The networks only know such images; on anything
else they fail silently, so anything else is refused unless the user insists (``--allow-non-ct``):

- MR images and images normalised to [0, 1] or to z-scores have no values far below zero;
- a CT stored with its rescale not applied (raw detector values 0-4095: air near 0, water near
  1024) has air where HU has soft tissue, and its soft tissue near +1024, where HU has dense bone.

Values below -1100 are padding outside the scanner's field of view (-2000, -3024 or -32768 by
vendor), not tissue, and are left out of the statistics. The decision looks at three things on a
strided sample: fat-or-air values present, the body's voxels centred on soft tissue, and no mass
of voxels near +1024. A tightly body-cropped HU CT (fat, no air around the body) passes on fat.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, NotCTError
from .volume import Volume

PADDING_BELOW = -1100.0  # nothing physical is below air; lower values are field-of-view padding
FAT_OR_AIR = (-1100.0, -60.0)  # air, lung and fat in HU
SOFT_TISSUE = (-150.0, 250.0)  # fat, organs, muscle, enhanced kidney and tumour in HU
RAW_SOFT_TISSUE = (874.0, 1274.0)  # the same tissues when stored as HU + 1024 (rescale not applied)


def intensity_sample(array: np.ndarray, max_voxels: int = 2_000_000) -> np.ndarray:
    """A strided sample of the voxels: statistics without touching every voxel of a huge scan."""
    step = max(1, int(np.ceil((array.size / max_voxels) ** (1 / 3))))
    return np.asarray(array[::step, ::step, ::step], dtype=np.float64).ravel()


def hu_statistics(sample: np.ndarray) -> dict:
    """The numbers the CT-in-HU decision rests on (also shown in the message when it fails)."""
    values = sample[sample >= PADDING_BELOW]
    n = max(1, values.size)
    body = values[values > -500.0]

    def frac(v, lo_hi):
        return float(np.count_nonzero((v >= lo_hi[0]) & (v <= lo_hi[1]))) / max(1, v.size)

    p1, p50, p99 = np.percentile(values, [1, 50, 99]) if values.size else (np.nan,) * 3
    return {
        "padding_fraction": 1.0 - values.size / max(1, sample.size),
        "fat_or_air_fraction": float(np.count_nonzero(values <= FAT_OR_AIR[1])) / n,
        "soft_tissue_fraction_of_body": frac(body, SOFT_TISSUE),
        "raw_soft_tissue_fraction": frac(values, RAW_SOFT_TISSUE),
        "p1": float(p1),
        "median": float(p50),
        "p99": float(p99),
        "body_median": float(np.median(body)) if body.size else float("nan"),
    }


def hu_verdict(stats: dict) -> str | None:
    """None when the statistics fit a CT in HU, else the reason (a clause for the message)."""
    if stats["padding_fraction"] > 0.98:
        return "almost every voxel is below -1100"
    if stats["raw_soft_tissue_fraction"] > 0.15:
        return (
            f"{stats['raw_soft_tissue_fraction']:.0%} of the voxels lie between 874 and 1274, where soft tissue "
            "lies when the scanner's rescale to HU (-1024) was not applied"
        )
    if stats["fat_or_air_fraction"] < 0.01:
        return f"no fat or air values below -60; values run from {stats['p1']:.0f} to {stats['p99']:.0f}"
    if stats["soft_tissue_fraction_of_body"] < 0.3:
        return f"the body's voxels are not centred on soft tissue (median {stats['body_median']:.0f})"
    if stats["p99"] >= 4000.0:
        return f"1% of the voxels are above {stats['p99']:.0f}, far beyond bone"
    return None


def looks_like_hu_ct(sample: np.ndarray) -> bool:
    """True when a sample of voxel values fits a CT in Hounsfield units."""
    return hu_verdict(hu_statistics(np.asarray(sample, dtype=np.float64).ravel())) is None


def _name(source) -> str:
    return f"The image {source}" if source is not None else "The image"


def _all_finite(array: np.ndarray, slab: int = 8) -> bool:
    if array.dtype.kind not in "fc":
        return True
    return all(np.isfinite(array[k : k + slab]).all() for k in range(0, array.shape[0], slab))


def check_ct_volume(volume: Volume, allow_non_ct: bool = False, source=None) -> list[str]:
    """Raise for unusable input; return warnings for usable but doubtful input.

    ``source`` (a path or a name) is named in the messages when given.
    """
    arr = volume.array
    name = _name(source)
    if min(arr.shape) < 2:
        raise InputError(f"{name} has shape {arr.shape} (z, y, x); a 3D volume of several slices is needed.")
    if not _all_finite(arr):
        raise InputError(f"{name} holds NaN or infinite voxels; a CT needs a finite value in every voxel.")
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise InputError(f"{name} is constant (every voxel is {float(lo):g}); there is nothing to segment.")
    sample = intensity_sample(arr)
    warnings = []
    reason = hu_verdict(hu_statistics(sample))
    if reason is not None:
        if not allow_non_ct:
            raise NotCTError(
                f"{name} does not look like a CT in Hounsfield units ({reason}); a contrast-enhanced CT "
                "in HU is needed, so use --allow-non-ct only if you are sure it is one."
            )
        warnings.append(
            f"{name} does not look like a CT in Hounsfield units ({reason}); results may be meaningless."
        )
    extent = np.asarray(volume.size_xyz) * np.asarray(volume.spacing)
    if extent[2] < 40.0:
        warnings.append(f"The scan covers only {extent[2]:.0f} mm along its slice axis; kidneys may be cut off.")
    return warnings
