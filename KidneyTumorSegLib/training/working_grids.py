"""A training case on the networks' two working grids, resampled once.

A case is resampled ONCE onto the two canonical grids the networks work on (``to_canonical``
geometry: identity direction): the localiser grid (``cfg.localiser_grid.spacing_mm``, the whole
scan, for the slice networks) and the segmenter grid (``cfg.segmenter.spacing_mm``, cropped to the
kidneys plus the reach of a rotated patch). The CT is trilinear and normalised with
``normalise_hu``; labels are nearest. The arrays stay in memory (image float16, labels uint8);
``case_cache`` keeps them on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig, PreprocessConfig
from ..errors import InputError
from ..preprocess import normalise_hu
from ..resampling import AIR_HU, canonical_box, resample_box
from ..volume import Volume

GRIDS = ("localiser", "segmenter")  # the two working grids, in the order a CachedCase holds them


@dataclass
class CaseArrays:
    """One case on one canonical grid: normalised image and labels, both (z, y, x)."""

    image: np.ndarray  # float16, HU window mapped onto [0, 1]
    labels: np.ndarray  # uint8, 0 / 1 / 2
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float]  # (x, y, z) mm of array[0, 0, 0]


@dataclass
class CachedCase:
    """One case on both working grids (``GRIDS``): what every source builds and the samplers read."""

    case_id: str
    localiser: CaseArrays
    segmenter: CaseArrays


def segmenter_margin_zyx(cfg: ModelConfig) -> tuple[int, int, int]:
    """Voxels kept around the kidneys: half a patch in z, half a rotated patch's diagonal in y, x."""
    px, py, pz = cfg.segmenter.patch_size_xyz
    half_diag = int(math.ceil(math.hypot(px, py) / 2.0)) + 4
    return (pz // 2 + 4, half_diag, half_diag)


def grids_signature(cfg: ModelConfig) -> dict:
    """Everything in ``cfg`` that decides where a case's voxels lie on the two working grids."""
    return {
        "localiser_spacing": list(cfg.localiser_grid.spacing_mm),
        "segmenter_spacing": list(cfg.segmenter.spacing_mm),
        "segmenter_margin": list(segmenter_margin_zyx(cfg)),
    }


def _is_canonical(volume: Volume, spacing) -> bool:
    return np.allclose(volume.direction, np.eye(3)) and np.allclose(volume.spacing, spacing, rtol=1e-4)


def grid_arrays(
    ct: Volume,
    labels: Volume,
    spacing_mm,
    pre: PreprocessConfig,
    crop_margin_zyx=None,
) -> CaseArrays:
    """``ct`` and ``labels`` (same grid) on the canonical grid at ``spacing_mm``, optionally cropped.

    ``crop_margin_zyx``: keep only the kidneys' bounding box grown by this many voxels (clipped to
    the scan). A case without kidney is kept whole.
    """
    if not ct.same_grid(labels):
        raise InputError("The CT and its labels do not share one voxel grid.")
    spacing = tuple(float(s) for s in spacing_mm)
    if _is_canonical(ct, spacing):
        ct_arr, lab_arr, origin = ct.array, labels.array, ct.origin
    else:
        origin, size = canonical_box(ct, spacing)
        ct_arr = resample_box(ct, origin, size, spacing, "linear", AIR_HU).array
        lab_arr = resample_box(labels, origin, size, spacing, "nearest", 0, np.uint8).array
    image = normalise_hu(ct_arr, pre).astype(np.float16)
    lab = np.asarray(lab_arr).astype(np.uint8, copy=False)
    origin = np.asarray(origin, dtype=np.float64)
    if crop_margin_zyx is not None and (lab > 0).any():
        nz = np.nonzero(lab > 0)
        lo = [max(0, int(a.min()) - m) for a, m in zip(nz, crop_margin_zyx)]
        hi = [min(n, int(a.max()) + 1 + m) for a, n, m in zip(nz, lab.shape, crop_margin_zyx)]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        image, lab = image[sl], lab[sl]
        origin = origin + np.asarray(spacing) * np.asarray(lo[::-1], dtype=np.float64)
    return CaseArrays(
        np.ascontiguousarray(image), np.ascontiguousarray(lab), spacing, tuple(float(o) for o in origin)
    )


def prepare_case(case_id: str, ct: Volume, labels: Volume, cfg: ModelConfig) -> CachedCase:
    """A CT and its labels on any grid, resampled once onto both working grids."""
    return CachedCase(
        case_id,
        grid_arrays(ct, labels, cfg.localiser_grid.spacing_mm, cfg.preprocess),
        grid_arrays(ct, labels, cfg.segmenter.spacing_mm, cfg.preprocess, segmenter_margin_zyx(cfg)),
    )


def mask_on_grids(mask: Volume, cfg: ModelConfig) -> tuple[Volume, Volume]:
    """``mask`` resampled by nearest straight onto the two working grids (never handled at its full
    resolution): the whole scan at the localiser spacing, the kidneys' box grown by the patch reach
    at the segmenter spacing."""
    loc_sp = tuple(cfg.localiser_grid.spacing_mm)
    origin, size = canonical_box(mask, loc_sp)
    loc_labels = resample_box(mask, origin, size, loc_sp, "nearest", 0, np.uint8)
    seg_sp = np.asarray(cfg.segmenter.spacing_mm, dtype=np.float64)
    lo, hi = mask.physical_bounds()
    nz = np.nonzero(loc_labels.array > 0)
    if nz[0].size:  # the kidneys' box (from the coarse grid) grown by the patch reach
        idx_lo = np.array([a.min() for a in nz][::-1], dtype=np.float64)
        idx_hi = np.array([a.max() for a in nz][::-1], dtype=np.float64)
        margin = np.asarray(segmenter_margin_zyx(cfg)[::-1]) * seg_sp + 2 * np.asarray(loc_sp)
        lo = np.maximum(lo, np.asarray(loc_labels.origin) + idx_lo * loc_sp - margin)
        hi = np.minimum(hi, np.asarray(loc_labels.origin) + idx_hi * loc_sp + margin)
    size = tuple(int(s) for s in np.maximum(1, np.floor((hi - lo) / seg_sp + 1e-6).astype(int) + 1))
    seg_labels = resample_box(mask, lo, size, tuple(seg_sp), "nearest", 0, np.uint8)
    return loc_labels, seg_labels
