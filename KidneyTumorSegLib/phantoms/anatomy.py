"""Organ layout: build the whole-abdomen tissue map on the coarse LPS grid around the kidneys.

Order matters and is the point of this module: body layers, muscles and bones first; then the
perirenal zone is reserved around the kidneys; the chest, liver, spleen, stomach, pancreas, vessels
and bowel take only what is still fat; finally the perirenal fat and the scanner table.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..resampling import labels_on_grid
from ..volume import Volume
from . import tissues as ts
from .body import make_body
from .bowel import paint_bowel
from .canvas import Canvas
from .layout import make_layout
from .muscles import paint_back_muscles, paint_layers
from .organs import paint_organs
from .shapes import Grid
from .skeleton import paint_skeleton
from .vessels import paint_vessels


def working_grid(labels: Volume, spacing_mm: float) -> Grid:
    """Axis-aligned LPS grid covering the label's field of view, at ``spacing_mm`` in-plane."""
    lo, hi = labels.physical_bounds()
    # slice spacing along physical z: the index axis closest to z
    c = int(np.argmax(np.abs(labels.direction[2, :])))
    dz = labels.spacing[c] * abs(labels.direction[2, c])
    sz = float(np.clip(dz, spacing_mm, 4.0))
    pad = np.array([spacing_mm, spacing_mm, sz])
    return Grid.covering(lo - pad, hi + pad, (spacing_mm, spacing_mm, sz))


def build_anatomy(labels: Volume, rng: np.random.Generator, spacing_mm: float, phase: str,
                  oral_contrast_prob: float = 0.35) -> Canvas:
    in_plane = [labels.spacing[c] for c in range(3) if c != int(np.argmax(np.abs(labels.direction[2, :])))]
    grid = working_grid(labels, max(spacing_mm, 0.95 * min(in_plane)))
    kid = labels_on_grid(labels, grid) > 0
    lay = make_layout(labels, kid, grid, rng)
    body = make_body(rng, grid, lay)
    depth, theta = body.depth(grid)
    tissue = np.zeros(grid.shape, np.uint8)
    cv = Canvas(grid=grid, tissue=tissue, rng=rng, lay=lay, body=body, depth=depth, theta=theta,
                inside=np.zeros(grid.shape, bool), cavity=np.zeros(grid.shape, bool),
                kidney_zone=np.zeros(grid.shape, bool))
    cv.extra["phase"] = phase
    cv.extra["oral"] = bool(rng.random() < oral_contrast_prob)
    paint_layers(cv)
    # perirenal zone: kidneys plus a fat rim, reserved before the organs are placed
    peri = rng.uniform(3.0, 12.0)
    if kid.any():
        pad = [int(np.ceil(peri / s)) + 1 for s in grid.spacing[::-1]]
        nz = [np.nonzero(np.any(kid, axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)]
        box = tuple(slice(max(0, v[0] - p), v[-1] + 1 + p) for v, p in zip(nz, pad))
        dist = ndi.distance_transform_edt(~kid[box], sampling=grid.spacing[::-1])
        from .shapes import smooth_noise

        vary = 1.0 + 0.6 * smooth_noise(rng, dist.shape, 4.0)
        cv.kidney_zone[box] = dist <= np.maximum(peri * vary, 1.5)
    cv.peritoneal = _peritoneal(cv)
    paint_back_muscles(cv)
    paint_skeleton(cv)
    below = paint_organs(cv)
    paint_vessels(cv, below)
    paint_bowel(cv, below)
    # perirenal fat: whatever organ strayed into the zone gives way, bone and vessels stay
    keep = np.isin(cv.tissue, (ts.CORTICAL, ts.CANCELLOUS, ts.AORTA, ts.VEIN, ts.COLLECTING, ts.CSF, ts.DISC))
    zone = cv.kidney_zone & ~keep
    cv.tissue[zone & cv.inside] = ts.FAT
    cv.tissue[kid] = ts.FAT  # the kidneys themselves are rendered on the caller's grid
    _table(cv)
    return cv


def _table(cv: Canvas) -> None:
    if cv.rng.random() < 0.25:
        return
    g = cv.grid
    y_back = float(np.max(cv.body.cy + cv.body.b_post))
    gap = cv.rng.uniform(0, 8)
    thick = cv.rng.uniform(25, 50)
    X = g.x[None, None, :] - cv.lay.x0
    Y = g.y[None, :, None]
    top = y_back + gap - 0.00035 * X**2 * 0  # flat top under the patient
    m = (Y > top) & (Y < top + thick) & (np.abs(X) < cv.rng.uniform(180, 240))
    m = np.broadcast_to(m, g.shape) & (cv.tissue == ts.AIR)
    cv.tissue[m] = ts.TABLE


def _peritoneal(cv: Canvas) -> np.ndarray:
    """Voxels anterior to the retroperitoneum: behind the kidneys' level only in the flanks, and
    high up (under the diaphragm) where liver and spleen reach the posterior wall."""
    lay, g = cv.lay, cv.grid
    tops = [k.top for k in lay.kidneys] or [lay.z_l1 + 0.8 * lay.level_h]
    mids = [k.centre[2] for k in lay.kidneys] or [lay.z_l1]
    z_hi, z_mid = max(tops) + 15.0, float(np.mean(mids))
    z_crest = min(lay.z_l1 - 3.3 * lay.level_h, z_mid - 20.0)
    y_post = np.interp(g.z, [z_crest - 40.0, z_crest, z_mid, z_hi],
                       [lay.y_vb + 90.0, lay.y_vb - 8.0, lay.y_vb - 8.0, lay.y_vb + 60.0])
    lat = 0.6 * np.clip(np.abs(g.x - lay.x0) - 85.0, 0, None)
    return g.y[None, :, None] < (y_post[:, None, None] + lat[None, None, :])
