"""On-the-fly augmentation: in-plane rotation, flips, scaling and intensity jitter.

The paper augments by random rotation in [-30, 30] degrees about the axial (z) axis and random
flips. Rotation and zoom are expressed as a *sampling grid*: for every output voxel, the (z, y, x)
position in the source array it is read from. Image and labels are read through the same grid
(trilinear for the image, nearest for the labels), so they can never drift apart, and a patch is
sampled straight from the cached case, already rotated, without rotating the whole volume. Points
outside the source read 0, which is air after HU normalisation and background for labels: a patch
at the border of a scan is padded. Flips then mirror the read image and labels together (exact
for any size, and a flip applied twice is the identity).

Flips default to left-right only: every working grid is canonical (LPS), so an anterior-posterior
or head-foot flip would show the networks anatomy real scans never have, while a left-right flip
is a plausible mirror kidney. ``flip_axes`` widens this when wanted. Scaling (default +/- 10 %) and
the intensity jitter go beyond the paper; they make the networks less sensitive to patient size,
scanner calibration and contrast phase, which matters when phantoms are the training data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..resampling import lerp_axis

AXES = {"z": 0, "y": 1, "x": 2}


@dataclass
class AugmentConfig:
    enabled: bool = True
    rotation_deg: float = 30.0  # uniform in [-rotation_deg, rotation_deg] about the z axis
    flip_axes: tuple[str, ...] = ("x",)  # each flipped with probability 1/2
    scale_range: tuple[float, float] = (0.9, 1.1)  # isotropic zoom, 1.0 = none
    intensity_scale: tuple[float, float] = (0.9, 1.1)  # contrast, about the image mean
    intensity_shift: float = 0.05  # brightness, in normalised units (1.0 = the whole HU window)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.03  # upper bound of the Gaussian noise's standard deviation
    probability: float = 0.8  # chance that a sample gets the intensity jitter at all
    # In-plane Gaussian blur (sigma in voxels, drawn uniformly) with this probability: a scan with
    # fine pixels, averaged onto a coarse working grid, is smoother than the phantoms drawn there.
    blur_probability: float = 0.25
    blur_sigma: tuple[float, float] = (0.4, 1.2)
    # A 3D patch re-acquired with thick slices (slab averaging, sampling every ``thickness`` and
    # linear interpolation back) with this probability: a 3-5 mm scan resampled to the
    # segmenter's grid is blurred and stair-stepped along z in a way phantoms drawn on a fine grid are not.
    thick_slice_probability: float = 0.0
    thick_slice_mm: tuple[float, float] = (2.5, 6.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AugmentConfig:
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**data)


@dataclass(frozen=True)
class SpatialParams:
    """One draw of the spatial augmentation."""

    angle_deg: float = 0.0
    flips: tuple[bool, bool, bool] = (False, False, False)  # (z, y, x)
    scale: float = 1.0


IDENTITY = SpatialParams()


def draw_spatial(rng: np.random.Generator, aug: AugmentConfig) -> SpatialParams:
    if not aug.enabled:
        return IDENTITY
    angle = float(rng.uniform(-aug.rotation_deg, aug.rotation_deg)) if aug.rotation_deg > 0 else 0.0
    flips = tuple(bool(name in aug.flip_axes and rng.random() < 0.5) for name in ("z", "y", "x"))
    lo, hi = aug.scale_range
    scale = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)
    return SpatialParams(angle, flips, scale)


def sampling_coords(
    centre_zyx,
    size_zyx,
    params: SpatialParams,
    spacing_xyz=(1.0, 1.0, 1.0),
    scale_z: bool = True,
) -> np.ndarray:
    """Source coordinates (3, *size_zyx) of an output box whose voxel ``size // 2`` is ``centre_zyx``.

    Output offsets are whole voxels (so the identity reads voxel centres exactly, and image and
    nearest-neighbour labels agree even for even patch sizes), zoomed (a scale > 1 shows a larger
    anatomy, i.e. reads a smaller neighbourhood) and rotated about z in millimetres, so a grid with
    unequal x and y spacing still rotates rigidly. ``scale_z=False`` keeps z offsets unzoomed (stacks
    of neighbouring slices for the z-localiser stay exactly one slice apart). Flips are not part of
    the grid: ``flip`` mirrors the read arrays exactly.
    """
    offsets = [np.arange(n, dtype=np.float64) - (n // 2) for n in size_zyx]
    oz, oy, ox = np.meshgrid(*offsets, indexing="ij")
    inv = 1.0 / params.scale
    sx, sy = float(spacing_xyz[0]), float(spacing_xyz[1])
    ym, xm = oy * sy * inv, ox * sx * inv
    a = math.radians(params.angle_deg)
    c, s = math.cos(a), math.sin(a)
    ry = (c * ym - s * xm) / sy
    rx = (s * ym + c * xm) / sx
    rz = oz * inv if scale_z else oz
    cz, cy, cx = (float(v) for v in centre_zyx)
    return np.stack([rz + cz, ry + cy, rx + cx])


def flip(array: np.ndarray, params: SpatialParams, ndim: int = 3) -> np.ndarray:
    """Mirror the last ``ndim`` (spatial: z, y, x or y, x) axes of ``array`` as ``params`` says."""
    flips = params.flips[3 - ndim :]
    axes = tuple(array.ndim - ndim + i for i, f in enumerate(flips) if f)
    return np.ascontiguousarray(np.flip(array, axes)) if axes else array


def read(array: np.ndarray, coords: np.ndarray, order: int, cval: float = 0.0, dtype=None) -> np.ndarray:
    """``array`` read at ``coords`` (order 1: trilinear, order 0: nearest), ``cval`` outside.

    Only the sub-box the coordinates touch is converted and interpolated, so reading a patch from
    a large (float16) cached volume costs what the patch costs. Coordinates on voxel centres return
    the voxel values exactly: the identity transform is lossless and two flips undo each other.
    """
    out_dtype = dtype or (array.dtype if order == 0 else np.float32)
    flat = coords.reshape(coords.shape[0], -1)
    lo = np.maximum(np.floor(flat.min(axis=1)).astype(np.int64) - 1, 0)
    hi = np.minimum(np.ceil(flat.max(axis=1)).astype(np.int64) + 2, np.asarray(array.shape))
    if np.any(hi <= lo):
        return np.full(coords.shape[1:], cval, dtype=out_dtype)
    sub = array[tuple(slice(a, b) for a, b in zip(lo, hi))]
    local = coords - lo.reshape((-1,) + (1,) * (coords.ndim - 1))
    if order == 0:
        idx = np.floor(local + 0.5).astype(np.int64)
        inside = np.ones(idx.shape[1:], dtype=bool)
        for axis, n in enumerate(sub.shape):
            inside &= (idx[axis] >= 0) & (idx[axis] < n)
        out = np.full(idx.shape[1:], cval, dtype=out_dtype)
        out[inside] = sub[tuple(i[inside] for i in idx)]
        return out
    src = sub if sub.dtype in (np.float32, np.float64) else sub.astype(np.float32)
    out = ndimage.map_coordinates(src, local, order=order, mode="constant", cval=cval, prefilter=False)
    return out.astype(out_dtype, copy=False)


def apply_spatial(
    image: np.ndarray | None,
    labels: np.ndarray | None,
    params: SpatialParams,
    spacing_xyz=(1.0, 1.0, 1.0),
    centre_zyx=None,
    size_zyx=None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Transform a whole volume (or a box of it) and its labels through the same sampling grid."""
    ref = image if image is not None else labels
    shape = ref.shape
    size = tuple(size_zyx) if size_zyx is not None else shape
    centre = centre_zyx if centre_zyx is not None else [n // 2 for n in shape]
    coords = sampling_coords(centre, size, params, spacing_xyz)
    img = flip(read(image, coords, 1, 0.0, np.float32), params) if image is not None else None
    lab = flip(read(labels, coords, 0, 0), params) if labels is not None else None
    return img, lab


def slab_average(image: np.ndarray, width_vox: float) -> np.ndarray:
    """Mean over a slab ``width_vox`` voxels thick (fractional ends weighted) centred on each voxel
    of axis 0: a box slice profile that moves nothing, whatever the width's parity."""
    half = 0.5 * float(width_vox)
    reach = int(math.ceil(half - 0.5))
    offsets = np.arange(-reach, reach + 1, dtype=np.float64)
    weights = np.clip(np.minimum(offsets + 0.5, half) - np.maximum(offsets - 0.5, -half), 0.0, 1.0)
    return ndimage.correlate1d(image, weights / weights.sum(), axis=0, mode="nearest")


def thick_slices(image: np.ndarray, thickness_vox: float, phase: float) -> np.ndarray:
    """``image`` (z first) as a scan of ``thickness_vox``-voxel slices would show it after
    interpolation back to its grid: each slice averages its slab, slices lie ``thickness_vox``
    apart starting ``phase`` (0-1 of a slice) into the array, and values in between are linear."""
    if thickness_vox <= 1.0:
        return image
    slab = slab_average(image.astype(np.float32), thickness_vox)
    n = image.shape[0]
    first = phase * thickness_vox
    k = np.arange(-1, int(math.ceil((n - first) / thickness_vox)) + 2)
    acquired = lerp_axis(slab, first + thickness_vox * k, 0)
    return lerp_axis(acquired, (np.arange(n) - first) / thickness_vox + 1.0, 0)


def simulate_thick_slices(image: np.ndarray, rng: np.random.Generator, aug: AugmentConfig,
                          spacing_z_mm: float) -> np.ndarray:
    """With ``aug.thick_slice_probability``, ``thick_slices`` at a thickness drawn from
    ``aug.thick_slice_mm`` (a grid already coarser than that is left alone)."""
    if not aug.enabled or aug.thick_slice_probability <= 0 or rng.random() >= aug.thick_slice_probability:
        return image
    thickness = float(rng.uniform(*aug.thick_slice_mm)) / float(spacing_z_mm)
    return thick_slices(image, thickness, float(rng.random()))


def intensity_jitter(image: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Contrast, brightness, gamma and noise on a normalised image (values about [0, 1])."""
    if not aug.enabled or rng.random() >= aug.probability:
        return image
    out = image.astype(np.float32, copy=True)
    mean = float(out.mean())
    out = (out - mean) * np.float32(rng.uniform(*aug.intensity_scale)) + np.float32(mean)
    out += np.float32(rng.uniform(-aug.intensity_shift, aug.intensity_shift))
    gamma = float(math.exp(rng.uniform(math.log(aug.gamma_range[0]), math.log(aug.gamma_range[1]))))
    np.clip(out, 0.0, None, out=out)
    if abs(gamma - 1.0) > 1e-3:
        np.power(out, np.float32(gamma), out=out)
    if aug.blur_probability > 0 and rng.random() < aug.blur_probability:
        sigma = float(rng.uniform(*aug.blur_sigma))
        out = ndimage.gaussian_filter(out, [0.0] * (out.ndim - 2) + [sigma, sigma], mode="nearest", truncate=3.0)
    if aug.noise_std > 0:
        sigma = float(rng.uniform(0.0, aug.noise_std))
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
    return out
