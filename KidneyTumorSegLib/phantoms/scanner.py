"""Scanner model: in-plane PSF, slice-thickness partial volume, correlated noise, bias and cupping,
optional streaks from dense bone.

Noise is band-pass filtered white noise (a difference of Gaussians), which gives the grainy,
non-white texture of filtered back-projection, scaled to a drawn SD of 8-25 HU and modulated along z
with the body's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from . import tissues as ts


@dataclass
class ScannerDraw:
    psf_mm: float  # in-plane Gaussian sigma
    thickness_mm: float  # slice thickness (FWHM of the slice profile)
    noise_sd: float
    noise_sigma_px: float  # grain size
    band: float  # how much low-frequency noise is removed (0 white-ish, 0.6 strongly band-pass)
    streaks: bool
    bias_hu: float
    cupping_hu: float


def draw_scanner(rng: np.random.Generator, slice_spacing: float, noise_range=(8.0, 25.0),
                 streak_prob: float = 0.35, thickness_range=None) -> ScannerDraw:
    """One scanner. The slice thickness follows the grid's slice spacing, unless ``thickness_range``
    (mm) is given: then it is drawn from that range whatever the grid, which mimics scans acquired
    with thin or thick slices and resampled onto a working grid (training phantoms)."""
    thickness = max(slice_spacing, rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0])) * rng.uniform(1.0, 1.2)
    thickness = min(thickness, max(slice_spacing * 1.5, 1.0))
    if thickness_range is not None:
        thickness = rng.uniform(float(thickness_range[0]), float(thickness_range[1]))
    return ScannerDraw(
        psf_mm=rng.uniform(0.35, 0.8), thickness_mm=float(thickness),
        noise_sd=rng.uniform(*noise_range), noise_sigma_px=rng.uniform(0.55, 1.1), band=rng.uniform(0.2, 0.6),
        streaks=bool(rng.random() < streak_prob), bias_hu=rng.uniform(0, 15), cupping_hu=rng.uniform(0, 20),
    )


def blur_coarse(ct: np.ndarray, spacing_xyz, sc: ScannerDraw) -> np.ndarray:
    """PSF and slice profile on the coarse (z, y, x) grid."""
    sx, sy, sz = spacing_xyz
    sig_z = sc.thickness_mm / 2.355 / sz
    sig_xy = sc.psf_mm / np.array([sy, sx])
    return ndi.gaussian_filter(ct, (sig_z, sig_xy[0], sig_xy[1]), mode="nearest", truncate=3.0)


def bias_field(rng, shape, depth: np.ndarray, inside: np.ndarray, sc: ScannerDraw) -> np.ndarray:
    """Additive smooth field: random low-order bias plus beam-hardening cupping (darker centre)."""
    from .shapes import smooth_noise

    f = smooth_noise(rng, shape, max(4.0, min(shape[1:]) / 6.0)) * sc.bias_hu
    cup = np.clip(depth / 100.0, 0, 1.5) * sc.cupping_hu
    return np.where(inside, f - cup, 0).astype(np.float32)


def streaks(rng, tissue: np.ndarray, grid, inside: np.ndarray) -> np.ndarray:
    """Bright/dark streaks radiating from dense bone in the axial slices where it is dense.

    One streak pattern is drawn on a canvas twice the slice size and shifted to each slice's bone
    centroid, so the cost is one pattern plus a copy per slice.
    """
    nz, ny, nx = tissue.shape
    dx, dy = grid.spacing[0], grid.spacing[1]
    X = (np.arange(2 * nx) - nx)[None, :] * dx
    Y = (np.arange(2 * ny) - ny)[:, None] * dy
    r = np.hypot(X, Y)
    pat = np.zeros((2 * ny, 2 * nx), np.float32)
    width = rng.uniform(1.0, 2.5)
    for k in range(int(rng.integers(4, 10))):
        a = rng.uniform(0, np.pi)
        amp = rng.uniform(15, 60) * (1 if k % 2 else -1)
        d = X * np.sin(a) - Y * np.cos(a)
        pat += (amp * np.exp(-0.5 * (d / width) ** 2)).astype(np.float32)
    pat *= np.exp(-r / 150.0).astype(np.float32)
    out = np.zeros(tissue.shape, np.float32)
    bone = tissue == ts.CORTICAL
    counts = bone.sum(axis=(1, 2))
    for z in np.nonzero(counts >= 40)[0]:
        yy, xx = np.nonzero(bone[z])
        ci, cj = int(round(xx.mean())), int(round(yy.mean()))
        strength = min(1.0, counts[z] / 800.0)
        out[z] = pat[ny - cj : 2 * ny - cj, nx - ci : 2 * nx - ci] * strength
    out *= inside
    return out


def add_noise(ct: np.ndarray, slice_axis: int, sc: ScannerDraw, rng: np.random.Generator,
              sd_per_slice: np.ndarray | None = None, slab: int = 16) -> None:
    """Add correlated noise in place; correlation lies in the slice plane.

    White noise is drawn at half the in-plane resolution, band-pass filtered there and linearly
    upsampled: the grain of filtered back-projection at a quarter of the cost of full resolution.
    """
    from ..resampling import lerp_axis

    v = np.moveaxis(ct, slice_axis, 0)
    n1, n2 = v.shape[1:]
    h1, h2 = n1 // 2 + 2, n2 // 2 + 2
    s1 = max(0.3, sc.noise_sigma_px / 2.0)
    s2 = 3.0 * s1
    f1 = np.arange(n1) / 2.0
    f2 = np.arange(n2) / 2.0
    scale = None
    for s in range(0, v.shape[0], slab):
        m = min(slab, v.shape[0] - s)
        w = rng.standard_normal((m, h1, h2), dtype=np.float32)
        nz = ndi.gaussian_filter(w, (0, s1, s1), truncate=3.0)
        if sc.band > 0:
            nz -= sc.band * ndi.gaussian_filter(w, (0, s2, s2), truncate=3.0)
        up = lerp_axis(lerp_axis(nz, f1, 1), f2, 2)
        if scale is None:
            scale = sc.noise_sd / max(float(up.std()), 1e-6)
        amp = np.full(m, scale, np.float32)
        if sd_per_slice is not None:
            amp *= sd_per_slice[s : s + m].astype(np.float32)
        up *= amp[:, None, None]
        v[s : s + m] += up
