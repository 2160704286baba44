"""From the localisers' outputs to where the kidneys are: a z-range, then one box per kidney.

Both functions work on canonical grids (identity direction), in voxel indices (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .config import XYLocaliserConfig, ZLocaliserConfig


@dataclass(frozen=True)
class Box:
    """A half-open voxel box ``[lo, hi)`` in (z, y, x) on some canonical grid."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(h - lo for lo, h in zip(self.lo, self.hi))

    @property
    def centre(self) -> np.ndarray:
        return (np.asarray(self.lo) + np.asarray(self.hi)) / 2.0

    def to_physical(self, spacing_xyz, origin_xyz) -> tuple[np.ndarray, np.ndarray]:
        """LPS corners (min, max) of the box's voxel centres on an identity-direction grid."""
        sp = np.asarray(spacing_xyz)
        org = np.asarray(origin_xyz)
        lo = org + sp * np.asarray(self.lo[::-1], dtype=float)
        hi = org + sp * (np.asarray(self.hi[::-1], dtype=float) - 1)
        return lo, hi


def _smoothed_above(slice_probs: np.ndarray, spacing_z: float, cfg: ZLocaliserConfig):
    """The per-slice probabilities smoothed along z (single-slice false alarms vanish) and the
    slices at or above the threshold; (None, None) for an empty scan."""
    probs = np.asarray(slice_probs, dtype=np.float64)
    if probs.size == 0:
        return None, None
    sigma = cfg.smoothing_mm / spacing_z
    smooth = ndimage.gaussian_filter1d(probs, sigma, mode="nearest") if sigma > 0.3 else probs
    return smooth, smooth >= cfg.threshold


def z_range(slice_probs: np.ndarray, spacing_z: float, cfg: ZLocaliserConfig) -> tuple[int, int] | None:
    """The z-range ``[k0, k1)`` of the kidneys from per-slice probabilities, or None.

    The probabilities are smoothed along z, thresholded, and the runs above threshold that lie
    close together are merged; the run holding the most probability mass is kept, so a false alarm
    in the chest or pelvis does not stretch the range. (The pipeline now keeps every run:
    ``candidate_slices``.)
    """
    smooth, above = _smoothed_above(slice_probs, spacing_z, cfg)
    if above is None or not above.any():
        return None
    gap = max(1, int(round(20.0 / spacing_z)))  # runs closer than 2 cm belong together
    closed = ndimage.binary_closing(above, structure=np.ones(2 * gap + 1)) | above
    runs, n = ndimage.label(closed)
    mass = ndimage.sum(smooth, runs, index=np.arange(1, n + 1))
    best = int(np.argmax(mass)) + 1
    ks = np.nonzero(runs == best)[0]
    margin = int(round(cfg.margin_mm / spacing_z))
    return max(0, int(ks[0]) - margin), min(smooth.size, int(ks[-1]) + 1 + margin)


def candidate_slices(slice_probs: np.ndarray, spacing_z: float, cfg: ZLocaliserConfig) -> np.ndarray:
    """Every slice of every run the z-localiser marks (smoothed, thresholded, grown by the margin).

    ``z_range`` keeps one run; kidneys at different heights, a displaced or pelvic kidney, or a
    false alarm holding more probability than a kidney make that one run wrong. Here every run
    stays a candidate, and the xy-localiser and the plausibility of what it finds decide.
    """
    _, above = _smoothed_above(slice_probs, spacing_z, cfg)
    if above is None:
        return np.zeros(0, bool)
    margin = int(round(cfg.margin_mm / spacing_z))
    if margin and above.any():
        above = ndimage.binary_dilation(above, structure=np.ones(2 * margin + 1))
    return above


def _grown_box(sl: tuple[slice, ...], spacing_xyz, margin_mm: float, shape) -> Box:
    """The box of an object slice grown by ``margin_mm`` on every side, clipped to ``shape``."""
    margin = [int(np.ceil(margin_mm / s)) for s in spacing_xyz[::-1]]
    return Box(tuple(max(0, s.start - m) for s, m in zip(sl, margin)),
               tuple(min(dim, s.stop + m) for s, m, dim in zip(sl, margin, shape)))


@dataclass(frozen=True)
class Candidate:
    """A connected blob of the xy-localiser's kidney mask, and how kidney-like it is."""

    box: Box
    volume_ml: float
    z_extent_mm: float
    centre_x: float  # index on the localiser grid
    score: float


def kidney_candidates(mask: np.ndarray, slice_probs: np.ndarray, spacing_xyz, cfg: XYLocaliserConfig,
                      max_ml: float = 8000.0, max_z_mm: float = 400.0) -> list[Candidate]:
    """Plausible kidneys among the mask's components: at least ``min_component_ml`` and at most
    ``max_ml`` (a kidney with the largest tumours stays far below; a whole-abdomen blob does not), no
    taller than ``max_z_mm``;
    scored by volume times the z-localiser's mean probability over the blob's slices."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    labels, n = ndimage.label(mask)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    probs = np.asarray(slice_probs, dtype=np.float64)
    out = []
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        blob = labels[sl] == idx
        ml = float(blob.sum()) * voxel_ml
        z_mm = (sl[0].stop - sl[0].start) * spacing_xyz[2]
        if ml < cfg.min_component_ml or ml > max_ml or z_mm > max_z_mm:
            continue
        per_slice = blob.sum(axis=(1, 2)).astype(np.float64)
        zp = float((probs[sl[0]] * per_slice).sum() / per_slice.sum()) if probs.size else 1.0
        cx = float(np.nonzero(blob)[2].mean() + sl[2].start)
        out.append(Candidate(_grown_box(sl, spacing_xyz, cfg.margin_mm, mask.shape), ml, z_mm, cx, ml * max(zp, 1e-3)))
    return sorted(out, key=lambda c: -c.score)


def choose_kidney_boxes(candidates: list[Candidate], midline_x: float | None, per_side: int = 2) -> list[Box]:
    """Boxes for the segmenter: the best ``per_side`` candidates on each side of the midline (index
    on the localiser grid; None: the two best overall). The segmenter, which sees the kidney in 3D,
    is the final judge, so a doubtful second candidate on a side costs time, not accuracy; a false
    alarm on one side can no longer take the place of the other side's kidney."""
    if midline_x is None:
        chosen = candidates[:2]
    else:
        right = [c for c in candidates if c.centre_x < midline_x][:per_side]
        left = [c for c in candidates if c.centre_x >= midline_x][:per_side]
        chosen = sorted(right + left, key=lambda c: -c.score)
    return _merge_overlapping([c.box for c in chosen])


def kidney_boxes(mask: np.ndarray, spacing_xyz, cfg: XYLocaliserConfig, max_kidneys: int = 2) -> list[Box]:
    """One box per kidney from a 3D stack of 2D kidney masks (z, y, x).

    Connected components smaller than ``min_component_ml`` are dropped; the largest ``max_kidneys``
    are kept (one works: single kidneys and nephrectomies are common), each grown by ``margin_mm``.
    Components whose boxes overlap heavily (a horseshoe kidney) are merged into one box.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    labels, n = ndimage.label(mask)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1)) * voxel_ml
    order = [i + 1 for i in np.argsort(sizes)[::-1] if sizes[i] >= cfg.min_component_ml][:max_kidneys]
    objects = ndimage.find_objects(labels)
    boxes = [_grown_box(objects[idx - 1], spacing_xyz, cfg.margin_mm, mask.shape) for idx in order]
    return _merge_overlapping(boxes)


def _overlap_fraction(a: Box, b: Box) -> float:
    inter = np.prod([max(0, min(ah, bh) - max(al, bl)) for al, ah, bl, bh in zip(a.lo, a.hi, b.lo, b.hi)])
    smaller = min(np.prod(a.size), np.prod(b.size))
    return float(inter) / float(smaller) if smaller else 0.0


def _merge_overlapping(boxes: list[Box], threshold: float = 0.5) -> list[Box]:
    merged = list(boxes)
    changed = True
    while changed and len(merged) > 1:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                if _overlap_fraction(merged[i], merged[j]) >= threshold:
                    a, b = merged[i], merged.pop(j)
                    merged[i] = Box(
                        tuple(min(x, y) for x, y in zip(a.lo, b.lo)),
                        tuple(max(x, y) for x, y in zip(a.hi, b.hi)),
                    )
                    changed = True
                    break
            if changed:
                break
    return merged
