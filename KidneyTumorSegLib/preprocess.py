"""Preprocessing: HU window and trilinear resampling onto canonical (LPS-aligned) grids.

Every working grid of the engine has identity direction, so axial slices are array[k] and the
x axis points to the patient's left, whatever the orientation of the input file.
"""

from __future__ import annotations

import math

import numpy as np

from .config import PreprocessConfig
from .volume import Volume

AIR_HU = -1024.0


def normalise_hu(array: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Clip to [hu_min, hu_max] and map linearly onto [0, 1] (float32)."""
    out = np.clip(array.astype(np.float32, copy=False), cfg.hu_min, cfg.hu_max)
    out -= np.float32(cfg.hu_min)
    out *= np.float32(1.0 / (cfg.hu_max - cfg.hu_min))
    return out


def canonical_box(volume: Volume, spacing_mm) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Origin and size of an identity-direction grid at ``spacing_mm`` covering ``volume``.

    The last voxel centre lies at or beyond the volume's last one, so nothing of the scan is lost.
    """
    lo, hi = volume.physical_bounds()
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    size = np.maximum(1, np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1)
    return lo, tuple(int(s) for s in size)


def resample_box(
    volume: Volume,
    origin_xyz,
    size_xyz,
    spacing_mm,
    interpolator: str = "linear",
    default_value: float = AIR_HU,
    output_dtype=None,
) -> Volume:
    """Resample ``volume`` onto an identity-direction grid (trilinear by default).

    Before a strong down-sampling the image is first averaged over whole voxel blocks (SimpleITK
    BinShrink), so a 4 mm localiser grid from a 0.7 mm scan sees mean HU, not aliased noise.
    """
    import SimpleITK as sitk

    image = volume.to_sitk()
    if interpolator == "linear":
        axis_aligned = np.allclose(np.abs(volume.direction), np.eye(3), atol=1e-3)
        factors = [max(1, int(math.floor(t / s))) for t, s in zip(spacing_mm, volume.spacing)]
        if axis_aligned and max(factors) >= 2:
            image = sitk.BinShrink(image, factors)
        if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
            image = sitk.Cast(image, sitk.sitkFloat32)
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolator]
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(tuple(float(o) for o in origin_xyz))
    resampler.SetOutputSpacing(tuple(float(s) for s in spacing_mm))
    resampler.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    resampler.SetSize(tuple(int(s) for s in size_xyz))
    resampler.SetInterpolator(interp)
    resampler.SetDefaultPixelValue(float(default_value))
    out = sitk.GetArrayFromImage(resampler.Execute(image))
    if output_dtype is not None:
        out = out.astype(output_dtype, copy=False)
    return Volume(out, tuple(spacing_mm), tuple(origin_xyz), np.eye(3))


def to_canonical(volume: Volume, spacing_mm, interpolator: str = "linear", default_value=AIR_HU) -> Volume:
    """The whole volume on an identity-direction grid at ``spacing_mm``."""
    origin, size = canonical_box(volume, spacing_mm)
    return resample_box(volume, origin, size, spacing_mm, interpolator, default_value)


def resample_onto(volume: Volume, reference: Volume, interpolator: str = "linear", default_value=0.0) -> Volume:
    """Resample ``volume`` onto ``reference``'s exact grid (used to bring results back)."""
    import SimpleITK as sitk

    image = volume.to_sitk()
    if interpolator == "linear" and image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        image = sitk.Cast(image, sitk.sitkFloat32)
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolator]
    ref = sitk.Image(reference.size_xyz, sitk.sitkUInt8)
    ref.SetSpacing(reference.spacing)
    ref.SetOrigin(reference.origin)
    ref.SetDirection(tuple(reference.direction.flatten()))
    out = sitk.Resample(image, ref, sitk.Transform(), interp, float(default_value), image.GetPixelID())
    return reference.with_array(sitk.GetArrayFromImage(out))
