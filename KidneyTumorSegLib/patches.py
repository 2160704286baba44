"""Patch planning and Gaussian-weighted stitching for the 3D segmenter.

Windows of the segmenter's patch size cover each kidney box with overlap; a box smaller than a
patch gets one centred window. Window starts may be negative or run past the canvas: the caller
reads such windows with padding (``extract``), so windows at the volume border are padded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from . import resampling
from .localisation import Box
from .volume import Volume


def axis_starts(lo: int, hi: int, patch: int, overlap: float) -> list[int]:
    """Window starts along one axis covering ``[lo, hi)`` with the given fractional overlap."""
    length = hi - lo
    if length <= patch:
        return [lo + (length - patch) // 2]
    step = max(1, int(math.floor(patch * (1.0 - overlap))))
    n = int(math.ceil((length - patch) / step)) + 1
    if n == 1:
        return [lo]
    return [int(round(lo + i * (length - patch) / (n - 1))) for i in range(n)]


def plan_windows(boxes: Iterable[Box], patch_zyx, overlap: float) -> list[tuple[int, int, int]]:
    """Starts (z, y, x) of windows covering every box; duplicates removed, order stable."""
    starts: list[tuple[int, int, int]] = []
    seen = set()
    for box in boxes:
        per_axis = [axis_starts(lo, hi, p, overlap) for lo, hi, p in zip(box.lo, box.hi, patch_zyx)]
        for z in per_axis[0]:
            for y in per_axis[1]:
                for x in per_axis[2]:
                    if (z, y, x) not in seen:
                        seen.add((z, y, x))
                        starts.append((z, y, x))
    return starts


def extract(array: np.ndarray, start, patch_zyx, fill: float = 0.0) -> np.ndarray:
    """The window at ``start`` of ``array`` (last three axes), padded with ``fill`` outside."""
    out = np.full(array.shape[:-3] + tuple(patch_zyx), fill, dtype=array.dtype)
    src, dst = _overlap_slices(array.shape[-3:], start, patch_zyx)
    if src is not None:
        out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def _overlap_slices(shape, start, patch):
    src, dst = [], []
    for dim, s, p in zip(shape, start, patch):
        a, b = max(0, s), min(dim, s + p)
        if a >= b:
            return None, None
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    return tuple(src), tuple(dst)


def gaussian_weights(patch_zyx, sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """Importance map that trusts a window's centre more than its borders (sums need not be 1)."""
    grids = np.meshgrid(*[np.arange(p, dtype=np.float64) for p in patch_zyx], indexing="ij")
    w = np.ones(patch_zyx, dtype=np.float64)
    for g, p in zip(grids, patch_zyx):
        sigma = max(p * sigma_scale, 1e-6) * 2.0
        w *= np.exp(-0.5 * ((g - (p - 1) / 2.0) / sigma) ** 2)
    w /= w.max()
    return np.maximum(w, floor).astype(np.float32)


class Stitcher:
    """Accumulates weighted window predictions (C, z, y, x) into a canvas and normalises them."""

    def __init__(self, channels: int, canvas_zyx, patch_zyx):
        self.sum = np.zeros((channels, *canvas_zyx), dtype=np.float32)
        self.weight = np.zeros(tuple(canvas_zyx), dtype=np.float32)
        self.kernel = gaussian_weights(patch_zyx)
        self.patch = tuple(patch_zyx)

    def add(self, start, prediction: np.ndarray) -> None:
        src, dst = _overlap_slices(self.weight.shape, start, self.patch)
        if src is None:
            return
        k = self.kernel[dst]
        self.sum[(slice(None), *src)] += prediction[(slice(None), *dst)] * k
        self.weight[src] += k

    def result(self) -> np.ndarray:
        """Weighted mean per voxel; voxels no window touched are 0."""
        out = np.zeros_like(self.sum)
        covered = self.weight > 0
        out[:, covered] = self.sum[:, covered] / self.weight[covered]
        return out


def fuse_scales(fine: np.ndarray, canvas: Volume, coarse: np.ndarray, coarse_canvas: Volume,
                how: str = "mean", fine_looked: np.ndarray | None = None) -> np.ndarray:
    """Stitched probabilities (C, z, y, x) of the fine grid combined with those of a coarser grid's
    windows over the same boxes, brought onto the fine ``canvas`` (trilinear): their mean, or their
    maximum, or ("split") the mean for the region and the maximum for the tumour, wherever the coarse
    windows looked; elsewhere the fine grid's alone. ``fine_looked``
    (z, y, x bool): where the fine windows looked, when the canvas reaches beyond them; there the
    coarse grid's probabilities stand alone."""
    if how not in ("mean", "max", "split"):  # "widen" is the mean on a canvas the caller has grown
        raise ValueError(f"context fusion is 'mean', 'max' or 'split', not {how!r}")
    ones = coarse_canvas.with_array(np.ones(coarse.shape[1:], np.float32))
    looked = resampling.resample_onto(ones, canvas, "linear", 0.0).array > 0.999
    out = fine.astype(np.float32, copy=True)
    for c in range(fine.shape[0]):
        seen = resampling.resample_onto(coarse_canvas.with_array(coarse[c].astype(np.float32)), canvas,
                                        "linear", 0.0).array
        # "split": the mean for the kidney-and-tumour region (channel 0), the maximum for the tumour
        peak = how == "max" or (how == "split" and c > 0)
        both = np.maximum(fine[c], seen) if peak else 0.5 * (fine[c] + seen)
        out[c][looked] = both[looked]
        if fine_looked is not None:
            alone = looked & ~fine_looked
            out[c][alone] = seen[alone]
    return out


def context_seeds(region: np.ndarray, voxel_ml: float, min_ml: float) -> np.ndarray | None:
    """The fine look's region parts (z, y, x bool) that need the coarse look's wider view: connected
    parts of at least ``min_ml``, or touching a side (x or y) face of the canvas, where the patch
    saw only part of what it labelled. None when there is no such part: the coarse look has
    nothing to add."""
    comps, n = ndimage.label(region)
    if n == 0:
        return None
    ml = np.bincount(comps.ravel(), minlength=n + 1) * voxel_ml
    wanted = ml >= min_ml
    for side in (comps[:, :, 0], comps[:, :, -1], comps[:, 0, :], comps[:, -1, :]):
        wanted[np.unique(side)] = True
    wanted[0] = False
    return wanted[comps] if wanted.any() else None


def gate_fusion(fine: np.ndarray, fused: np.ndarray, fused_region: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The fused probabilities (C, z, y, x) inside the fused region's connected parts that overlap
    the ``seeds`` (and inside the seeds); the fine grid's alone everywhere else, so a second look
    cannot move a region its gate did not open."""
    comps, n = ndimage.label(fused_region)
    chosen = np.zeros(n + 1, bool)
    chosen[np.unique(comps[seeds])] = True
    chosen[0] = False
    zone = chosen[comps] | seeds
    return np.where(zone[None], fused, fine).astype(np.float32, copy=False)
