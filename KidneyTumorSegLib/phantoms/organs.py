"""Solid organs of the upper abdomen and chest: diaphragm, lungs, heart, liver with its vessels,
gallbladder, spleen, stomach, pancreas, adrenals.  Organs only take voxels that are still fat in
the cavity and outside the kidneys' perirenal zone, so they pack around each other and never
cover a kidney."""

from __future__ import annotations

import numpy as np

from . import tissues as ts
from .canvas import Canvas
from .shapes import ellipsoid, rotation_from_axes, smooth_noise, tube
from .skeleton import spine_y


def _organ(cv: Canvas, value, parts, noise=0.06, where=None, allow=()):
    """Union of ellipsoids (centre, radii, rotation) with a roughened surface, painted on free voxels."""
    boxes = [ellipsoid(cv.grid, c, r, rot, pad=8.0) for c, r, rot in parts]
    boxes = [b for b in boxes if b[0] is not None]
    if not boxes:
        return None, None
    lo = [min(b[0][a].start for b in boxes) for a in range(3)]
    hi = [max(b[0][a].stop for b in boxes) for a in range(3)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(b - a for a, b in zip(lo, hi))
    f = np.full(shape, np.inf, np.float32)
    for bsl, _, r in boxes:
        sub = tuple(slice(s.start - o, s.stop - o) for s, o in zip(bsl, lo))
        np.minimum(f[sub], r, out=f[sub])
    if noise:
        f = f + noise * smooth_noise(cv.rng, shape, 4.0)
    mask = (f <= 1.0) & cv.free(sl, allow)
    if where is not None:
        mask &= where[sl]
    cv.tissue[sl][mask] = value
    return sl, mask


def diaphragm_z(cv: Canvas):
    """Height of the diaphragm (mm) on the grid's (y, x) plane: two domes, low posterior recesses."""
    lay, body, g = cv.lay, cv.body, cv.grid
    zr = cv.extra["z_dome_r"]
    zl = cv.extra["z_dome_l"]
    X = g.x[None, :] - lay.x0
    a = float(np.median(body.a))
    cy = float(np.median(body.cy))
    Y = g.y[:, None] - (cy - 0.15 * float(np.median(body.b_ant)))
    top = np.where(X < 0, zr, zl) - 8 * np.exp(-((X / 40.0) ** 2))  # dip under the heart
    d2 = (np.abs(X) / a - 0.35) ** 2 / 0.45 + (Y / float(np.median(body.b_post) + 40)) ** 2
    return top - cv.extra["dome_depth"] * np.clip(d2, 0, 1.3)


def paint_chest(cv: Canvas) -> np.ndarray:
    """Diaphragm, lungs, heart, pericardial fat; returns the mask of voxels below the diaphragm."""
    lay, rng, g = cv.lay, cv.rng, cv.grid
    zd = diaphragm_z(cv)
    below = g.z[:, None, None] < zd[None]
    above = ~below & cv.cavity
    # diaphragm muscle sheet
    sheet = cv.cavity & (np.abs(g.z[:, None, None] - zd[None] - 2.0) < 2.5)
    cv.tissue[sheet & (cv.tissue == ts.FAT)] = ts.MUSCLE
    if not above.any():
        return below
    zc = float(np.max(zd)) - 10
    n_heart = (lay.z_l1 - zc) / lay.level_h
    y_ant = float(np.interp(zc, cv.body.z, cv.body.cy - cv.body.b_ant))
    hc = (lay.x0 + rng.uniform(15, 35), y_ant + rng.uniform(65, 85), zc + rng.uniform(45, 60))
    rotm = rotation_from_axes([0.6, -0.5, -0.6], [0, 0, 1])
    radii = (rng.uniform(60, 75), rng.uniform(45, 55), rng.uniform(42, 52))
    cv.ellipsoid(ts.FAT, hc, tuple(r + 6 for r in radii), rotm, where=above)
    cv.ellipsoid(ts.MYOCARDIUM, hc, radii, rotm, where=above)
    cv.ellipsoid(ts.HEART_BLOOD, hc, tuple(r - 9 for r in radii), rotm, where=above)
    # mediastinum: spine, aorta, oesophagus stay tissue; the rest of the chest cavity is lung
    X = g.x[None, None, :] - lay.x0
    yspine = spine_y(cv, n_heart)
    medi = (np.abs(X) < 22) & (g.y[None, :, None] > yspine - 40)
    lung = above & (cv.tissue == ts.FAT) & ~medi
    lung &= g.z[:, None, None] > zd[None] + 4.5
    cv.tissue[lung] = ts.LUNG
    return below


def paint_liver(cv: Canvas, below: np.ndarray) -> None:
    lay, rng, body = cv.lay, cv.rng, cv.body
    zr = cv.extra["z_dome_r"]
    x0, yv = lay.x0, lay.y_vb
    z_mid = zr - rng.uniform(65, 85)
    cy = float(np.interp(z_mid, body.z, body.cy))
    a = float(np.interp(z_mid, body.z, body.a))
    ba = float(np.interp(z_mid, body.z, body.b_ant))
    size = rng.uniform(0.75, 1.05)
    parts = [
        ((x0 - 0.45 * a, cy + 5, z_mid), (0.55 * a * size, 0.95 * ba * size, 80 * size), None),
        ((x0 - 0.25 * a, cy - 0.25 * ba, z_mid + 20), (0.5 * a * size, 0.7 * ba, 65 * size), None),
        ((x0 + 0.15 * a, cy - 0.55 * ba, z_mid + 30),
         (0.45 * a * rng.uniform(0.6, 1.2), 0.32 * ba, 45 * size), None),
        ((x0 - 15, yv - 35, z_mid + 15), (30, 28, 45), None),  # caudate
    ]
    if rng.random() < 0.4:  # Riedel lobe: a long right lobe tip
        parts.append(((x0 - 0.55 * a, cy - 10, z_mid - 70), (35, 40, 60), None))
    sl, mask = _organ(cv, ts.LIVER, parts, noise=0.05, where=below & cv.peritoneal)
    if sl is None:
        return
    cv.extra["liver_box"] = sl
    # portal vein from the confluence to the hilum, hepatic veins to the IVC, branches
    conf = np.array([x0 - 5, yv - 55, lay.z_l1 + 5])
    hil = np.array([x0 - 0.25 * a, cy - 10, z_mid + 5])
    cv.tube(ts.VEIN, [conf, hil], 7.0, where=below & ~cv.kidney_zone)
    top = np.array([x0 - 12, yv - 25, zr - 25])
    liver = cv.tissue == ts.LIVER
    for _i in range(rng.integers(3, 5)):
        ang = np.deg2rad(rng.uniform(95, 260))  # towards the right lobe and anterior
        end = top + np.array([np.cos(ang) * 0.6 * a, np.sin(ang) * 0.5 * ba - 20, rng.uniform(-60, -10)])
        _branch(cv, [top, end], 5.5, liver, depth=2)
    for _i in range(rng.integers(4, 7)):
        d = rng.normal(size=3) * [50, 40, 40] + [-30, -5, 15]
        _branch(cv, [hil, hil + d], 5.0, liver, depth=2)
    # gallbladder under the liver, anterior on the right
    gb = (x0 - 0.3 * a + rng.uniform(-15, 15), cy - 0.5 * ba, z_mid - rng.uniform(35, 60))
    if rng.random() < 0.85:
        gr = rotation_from_axes([0.3, -0.6, -0.7], [1, 0, 0])
        cv.ellipsoid(ts.GALLBLADDER, gb, (rng.uniform(25, 45), 14, 14), gr,
                     where=below & ~cv.kidney_zone & cv.cavity & (cv.tissue != ts.MUSCLE))


def _branch(cv: Canvas, pts, radius, where, depth):
    sl, q = tube(cv.grid, pts, [radius, radius * 0.6])
    if sl is not None:
        m = (q <= 1) & where[sl]
        cv.tissue[sl][m] = ts.HEPATIC_VESSEL
    if depth > 0:
        a, b = np.asarray(pts[0]), np.asarray(pts[-1])
        for _ in range(2):
            f = cv.rng.uniform(0.4, 0.8)
            p = a + f * (b - a)
            d = (b - a) * cv.rng.uniform(0.3, 0.6) + cv.rng.normal(size=3) * 18
            _branch(cv, [p, p + d], radius * 0.6, where, depth - 1)


def paint_spleen_stomach_pancreas(cv: Canvas, below: np.ndarray) -> None:
    lay, rng, body = cv.lay, cv.rng, cv.body
    x0, yv, z1 = lay.x0, lay.y_vb, lay.z_l1
    zl = cv.extra["z_dome_l"]
    kl = lay.kidney("left")
    z_sp = (kl.top if kl is not None else z1 + 20) + rng.uniform(5, 35)
    z_sp = min(z_sp, zl - 35)
    a = float(np.interp(z_sp, body.z, body.a))
    cy = float(np.interp(z_sp, body.z, body.cy))
    bp = float(np.interp(z_sp, body.z, body.b_post))
    sc = (x0 + 0.62 * a, cy + 0.45 * bp, z_sp)
    srot = rotation_from_axes([0.35, -0.55, -0.75], [1, 0.3, 0])
    s = rng.uniform(0.8, 1.3)
    _organ(cv, ts.SPLEEN, [(sc, (55 * s, 32 * s, 22 * s), srot)], noise=0.07, where=below)
    # stomach: fundus under the left dome, body anterior, antrum across the midline
    ba = float(np.interp(z1, body.z, body.b_ant))
    cyl = float(np.interp(z1, body.z, body.cy))
    pts = np.array([
        (x0 + 0.35 * a, cy + 0.1 * bp, zl - 30),
        (x0 + 0.4 * a, cyl - 0.35 * ba, z1 + 55),
        (x0 + 0.25 * a, cyl - 0.6 * ba, z1 + 10),
        (x0 - 0.05 * a, cyl - 0.65 * ba, z1 - 5),
        (x0 - 0.25 * a, yv - 70, z1 + 5),
    ])
    r = np.array([42, 38, 32, 25, 16]) * rng.uniform(0.7, 1.15)
    fill = rng.random()
    sl, q = tube(cv.grid, pts, r)
    if sl is not None:
        m = (q <= 1) & cv.free(sl) & below[sl] & cv.peritoneal[sl]
        cv.tissue[sl][m] = ts.BOWEL_WALL
        lumen = m & (q <= 1 - 4.0 / r.max())
        Y = cv.grid.y[sl[1]][None, :, None]
        ylev = np.percentile(np.broadcast_to(Y, lumen.shape)[lumen], 100 * rng.uniform(0.03, 0.35)) if lumen.any() else 0
        content = ts.FECES if fill < 0.3 else (ts.ORAL_CONTRAST if cv.extra["oral"] else ts.BOWEL_FLUID)
        cv.tissue[sl][lumen] = content
        cv.tissue[sl][lumen & (Y < ylev)] = ts.BOWEL_GAS
    # duodenum C-loop and pancreas
    kr = lay.kidney("right")
    xr = kr.centre[0] + 0.8 * kr.half_width if kr is not None else x0 - 55
    duo = [pts[-1], (xr + 10, yv - 55, z1 - 5), (xr + 5, yv - 45, z1 - 45),
           (x0 - 10, yv - 42, z1 - 2.0 * lay.level_h), (x0 + 35, yv - 40, z1 - 1.6 * lay.level_h)]
    cv.tube(ts.BOWEL_FLUID, duo, rng.uniform(10, 15), where=below & cv.cavity & ~cv.kidney_zone &
            (cv.tissue == ts.FAT), wall=2.5, wall_value=ts.BOWEL_WALL)
    panc = [(xr + 25, yv - 50, z1 - 20), (x0 - 5, yv - 62, z1 + 2), (x0 + 40, yv - 52, z1 + 12),
            (x0 + 0.55 * a, cy + 0.1 * bp, z_sp - 20)]
    sl, q = tube(cv.grid, panc, [17, 12, 11, 9])
    if sl is not None:
        lob = smooth_noise(rng, q.shape, 1.5) * 0.12
        m = (q + lob <= 1) & cv.free(sl) & below[sl]
        cv.tissue[sl][m] = ts.PANCREAS
    # splenic vein behind the pancreas
    spv = [(x0 - 5, yv - 52, z1 + 2), (x0 + 40, yv - 40, z1 + 10), (x0 + 0.5 * a, cy + 0.2 * bp, z_sp - 10)]
    cv.tube(ts.VEIN, spv, 4.5, where=below & cv.cavity & ~cv.kidney_zone & (cv.tissue != ts.MUSCLE))
    # adrenals: thin limbs above and medial to each kidney
    for k in lay.kidneys:
        p = k.centre + np.array([k.medial * 0.4 * k.half_width, -10, 0])
        p[2] = k.top + 8
        cv.tube(ts.SOFT_TISSUE, [p + [0, -14, 18], p, p + [k.medial * -12, 8, -6]], 3.0,
                where=below & cv.cavity & ~cv.kidney_zone & (cv.tissue == ts.FAT))


def paint_organs(cv: Canvas) -> np.ndarray:
    lay, rng = cv.lay, cv.rng
    kr = lay.kidney("right")
    base = kr.top if kr is not None else lay.z_l1 + 0.8 * lay.level_h
    zr = max(base + rng.uniform(55, 95), lay.z_l1 + 2.3 * lay.level_h)
    cv.extra.update(z_dome_r=zr, z_dome_l=zr - rng.uniform(8, 25), dome_depth=rng.uniform(85, 120))
    below = paint_chest(cv)
    paint_liver(cv, below)
    paint_spleen_stomach_pancreas(cv, below)
    return below
