"""Clinical measurements of a result: volumes per side and the tumour's largest diameter."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .terminology import SIDES
from .volume import Volume


def largest_diameter_mm(mask: np.ndarray, grid: Volume) -> float:
    """Largest distance (mm) between two voxel centres of ``mask``'s largest component.

    Measured in physical space, so anisotropic and oblique grids give true lengths; the candidates
    are the convex hull's vertices, which keeps it fast for large tumours.
    """
    if not mask.any():
        return 0.0
    comps, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, comps, np.arange(1, n + 1))
        mask = comps == (int(np.argmax(sizes)) + 1)
    surface = mask & ~ndimage.binary_erosion(mask)
    pts = grid.index_to_physical(np.argwhere(surface)[:, ::-1].astype(np.float64))
    if len(pts) > 4:
        try:
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # flat or degenerate point sets: fall back to all surface points
            pass
    if len(pts) > 4000:
        pts = pts[np.random.default_rng(0).choice(len(pts), 4000, replace=False)]
    diff = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def side_measurements(structures: dict[str, np.ndarray], grid: Volume) -> dict[str, dict]:
    """Per side: kidney without tumour, kidney with tumour and tumour volumes (mL), tumour diameter.

    The keys say which kidney volume they are, so that no reader takes one for the other.
    """
    out: dict[str, dict] = {}
    voxel_ml = grid.voxel_volume_ml
    for side in SIDES:
        kidney = structures.get(f"kidney_{side}")
        tumour = structures.get(f"tumour_{side}")
        if kidney is None and tumour is None:
            continue
        k = int(kidney.sum()) if kidney is not None else 0
        t = int(tumour.sum()) if tumour is not None else 0
        n_tumours = int(ndimage.label(tumour)[1]) if tumour is not None else 0
        out[side] = {
            "kidney_without_tumour_ml": round(k * voxel_ml, 2),
            "kidney_with_tumour_ml": round((k + t) * voxel_ml, 2),
            "tumour_ml": round(t * voxel_ml, 2),
            "tumour_diameter_mm": round(largest_diameter_mm(tumour, grid), 1) if t else 0.0,
            "tumour_count": n_tumours,
        }
    return out
