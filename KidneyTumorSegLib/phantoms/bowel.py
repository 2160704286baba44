"""Bowel and pelvic organs: colon frame with haustra and mottled faeces, packed small-bowel loops
(fluid, gas or oral contrast with enhancing walls), mesenteric vessels, bladder (contrast layering in
the excretory phase), rectum and a midline pelvic organ."""

from __future__ import annotations

import numpy as np

from . import tissues as ts
from .canvas import Canvas
from .shapes import tube
from .skeleton import spine_y


def _gut(cv: Canvas, pts, radius, content, wall=2.5, gas_frac=0.0, where=None):
    """A bowel segment: enhancing wall, content, and gas floating anteriorly (supine patient)."""
    pts = np.asarray(pts, float)
    sl, q = tube(cv.grid, pts, radius)
    if sl is None:
        return
    m = (q <= 1) & cv.free(sl)
    if cv.peritoneal is not None:
        m &= cv.peritoneal[sl]
    if where is not None:
        m &= where[sl]
    if not m.any():
        return
    cv.tissue[sl][m] = ts.BOWEL_WALL
    rmax = float(np.max(radius))
    lumen = m & (q <= 1 - wall / rmax)
    cv.tissue[sl][lumen] = content
    if gas_frac > 0 and lumen.any():
        Y = np.broadcast_to(cv.grid.y[sl[1]][None, :, None], lumen.shape)
        lev = np.percentile(Y[lumen], 100 * gas_frac)
        cv.tissue[sl][lumen & (Y < lev)] = ts.BOWEL_GAS


def _haustra(rng, n, r0, depth=0.25):
    per = rng.uniform(2.5, 4.0)
    return r0 * (1 - depth * 0.5 * (1 + np.cos(2 * np.pi * np.arange(n) / per)))


def _resample(pts, step):
    pts = np.asarray(pts, float)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    t = np.arange(0, s[-1] + 1e-6, step)
    return np.stack([np.interp(t, s, pts[:, a]) for a in range(3)], axis=1)


def paint_bowel(cv: Canvas, below: np.ndarray) -> None:
    lay, rng, body, g = cv.lay, cv.rng, cv.body, cv.grid
    x0, h, z1 = lay.x0, lay.level_h, lay.z_l1
    a = float(np.median(body.a))
    cy = float(np.interp(z1, body.z, body.cy))
    ba = float(np.interp(z1, body.z, body.b_ant))
    bp = float(np.interp(z1, body.z, body.b_post))
    z_cec = z1 - rng.uniform(3.2, 4.0) * h
    z_hep = z1 - rng.uniform(0.2, 0.8) * h
    z_spl = z1 + rng.uniform(0.3, 1.2) * h
    z_crest = z1 - 3.3 * h
    colon = [
        (x0 - 0.62 * a, cy - 0.05 * bp, z_cec), (x0 - 0.68 * a, cy + 0.05 * bp, z1 - 1.5 * h),
        (x0 - 0.62 * a, cy - 0.1 * ba, z_hep), (x0 - 0.3 * a, cy - 0.6 * ba, z_hep - 0.3 * h),
        (x0, cy - 0.72 * ba, z1 - rng.uniform(0.8, 2.2) * h), (x0 + 0.35 * a, cy - 0.55 * ba, z_hep),
        (x0 + 0.68 * a, cy + 0.1 * bp, z_spl), (x0 + 0.7 * a, cy + 0.2 * bp, z1 - 1.2 * h),
        (x0 + 0.62 * a, cy + 0.1 * bp, z_crest), (x0 + 0.35 * a, cy - 0.3 * ba, z_crest - 45),
        (x0 - 0.05 * a, cy - 0.2 * ba, z_crest - 60), (x0, spine_y(cv, 5) + 10, z_crest - 95),
        (x0, spine_y(cv, 5) + 30, z_crest - 160),
    ]
    pts = _resample(colon, 12.0)
    pts += rng.normal(size=pts.shape) * [4, 4, 3]
    r = _haustra(rng, len(pts), rng.uniform(18, 27))
    fill = np.where(rng.random(3) < 0.5, ts.FECES, ts.BOWEL_FLUID)
    for i, seg in enumerate(np.array_split(np.arange(len(pts)), 3)):
        sel = np.r_[seg, seg[-1] + 1] if seg[-1] + 1 < len(pts) else seg
        if len(sel) < 2:
            continue
        _gut(cv, pts[sel], r[sel], int(fill[i]), wall=2.2, gas_frac=rng.uniform(0.0, 0.3) * (rng.random() < 0.6), where=below)
    # small bowel: random walks packed in the anterior and lower abdomen
    content = ts.ORAL_CONTRAST if cv.extra["oral"] else ts.BOWEL_FLUID
    lo = np.array([x0 - 0.55 * a, cy - 0.95 * ba, z1 - 4.2 * h])
    hi = np.array([x0 + 0.55 * a, cy + 0.2 * bp, z1 + 0.2 * h])
    sl = g.box(lo, hi)
    if sl is None:
        return
    n_loops = int(rng.integers(25, 45))
    for _ in range(n_loops):
        sub = cv.free(sl) & below[sl]
        idx = np.argwhere(sub[::2, ::2, ::2])
        if len(idx) == 0:
            break
        i = idx[rng.integers(len(idx))] * 2
        p = np.array([g.x[sl[2]][i[2]], g.y[sl[1]][i[1]], g.z[sl[0]][i[0]]])
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        walk = [p]
        rad = rng.uniform(9, 14)
        for _ in range(int(rng.integers(10, 28))):
            for _try in range(6):
                nd = d + rng.normal(size=3) * 0.8
                nd /= np.linalg.norm(nd)
                q = walk[-1] + nd * rng.uniform(12, 20)
                zi, yi, xi = g.index_of(q)
                if cv.cavity[zi, yi, xi] and below[zi, yi, xi] and cv.tissue[zi, yi, xi] == ts.FAT:
                    break
            walk.append(q)
            d = nd
        cont = content if rng.random() < 0.8 else ts.BOWEL_FLUID
        _gut(cv, walk, rad, cont, wall=rng.uniform(1.6, 2.6), gas_frac=rng.uniform(0, 0.25) * (rng.random() < 0.5),
             where=below)
    _pelvis_organs(cv, below)
    _mesentery(cv, below)


def _pelvis_organs(cv: Canvas, below):
    lay, rng = cv.lay, cv.rng
    z_fh = cv.extra.get("z_fh", lay.z_l1 - 5 * lay.level_h - 85)
    y_fh = cv.extra.get("y_fh", spine_y(cv, 4) - 35)
    if z_fh + 120 < cv.grid.z[0]:
        return
    x0 = lay.x0
    fillb = rng.uniform(0.5, 1.3)
    bc = (x0 + rng.uniform(-8, 8), y_fh - 45, z_fh + 20 + 15 * fillb)
    br = (45 * fillb + 10, 32 * fillb + 8, 35 * fillb + 8)
    sl, m = cv.ellipsoid(ts.BLADDER, bc, br, where=cv.inside & (cv.tissue == ts.FAT), rim=3.0,
                         rim_value=ts.SOFT_TISSUE)
    if sl is not None and cv.extra["phase"] == "excretory":
        Y = np.broadcast_to(cv.grid.y[sl[1]][None, :, None], m.shape)
        lev = bc[1] + rng.uniform(-0.3, 0.6) * br[1]
        dense = m & (Y > lev) & (cv.tissue[sl] == ts.BLADDER)
        cv.tissue[sl][dense] = ts.COLLECTING
    cv.ellipsoid(ts.SOFT_TISSUE, (x0, bc[1] + br[1] + 15, bc[2] + rng.uniform(-20, 25)),
                 (rng.uniform(20, 40), 18, rng.uniform(20, 40)), where=cv.inside & (cv.tissue == ts.FAT))
    ys = spine_y(cv, 5)
    rect = [(x0, ys + 20, z_fh - 30), (x0 + 5, ys + 35, z_fh + 20), (x0 + 10, ys + 25, z_fh + 70)]
    _gut(cv, rect, rng.uniform(14, 22), ts.FECES, wall=2.5, gas_frac=rng.uniform(0, 0.3))


def _mesentery(cv: Canvas, below):
    """Small vessels in the visceral fat: thresholded thin ridges of a smooth random field."""
    from .shapes import smooth_noise

    g = cv.grid
    step = 2
    f = smooth_noise(cv.rng, tuple(int(np.ceil(n / step)) for n in g.shape), 1.2)
    f = np.repeat(np.repeat(np.repeat(f, step, 0), step, 1), step, 2)[: g.shape[0], : g.shape[1], : g.shape[2]]
    m = (f > 2.3) & below & cv.cavity & (cv.tissue == ts.FAT) & ~cv.kidney_zone
    cv.tissue[m] = ts.MESENTERIC_VESSEL
