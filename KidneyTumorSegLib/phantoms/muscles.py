"""Body layers and muscles: skin, subcutaneous fat, the three-layer abdominal wall with rectus and
linea alba, erector spinae, quadratus lumborum, psoas (growing caudally), iliacus, glutei, crura."""

from __future__ import annotations

import numpy as np

from . import tissues as ts
from .body import THETAS
from .canvas import Canvas
from .skeleton import body_radii, spine_y


def paint_layers(cv: Canvas) -> None:
    """Skin, fat, wall muscles, cavity; per-angle layer thicknesses are looked up from tables."""
    body, depth, idx, t = cv.body, cv.depth, cv.theta, cv.tissue
    s = np.sin(THETAS)[None, :]
    c = np.cos(THETAS)[None, :]
    fat_t = body.fat[:, None] * (1 + (body.fat_ant - 1) * np.clip(-s, 0, 1)) * (1 - 0.35 * np.clip(s, 0, 1))
    skin = 2.0
    # wall: thin at the back, thick rectus in front
    ph = cv.rng.uniform(0, 2 * np.pi, 3)
    wob = 1 + 0.18 * np.sin(3 * THETAS + ph[0]) + 0.12 * np.sin(5 * THETAS + ph[1])
    wall = (body.wall * (1 - 0.35 * np.clip(s, 0, 1)) + 4.0 * np.clip(-s, 0, 1) ** 4) * wob[None, :]
    inside = depth > 0
    t[inside] = ts.FAT
    t[inside & (depth < skin)] = ts.SKIN
    dw = depth - skin
    dw -= body.theta_table(fat_t, idx)  # depth inside the wall
    w3 = body.theta_table(wall, idx)
    muscle = (dw > 0) & (dw < w3)
    # fat planes between the three lateral layers, and the linea alba
    lateral = body.theta_table(np.abs(c) > 0.55, idx) > 0
    rel = dw / w3
    plane = lateral & ((np.abs(rel - 0.38) < 0.9 / body.wall) | (np.abs(rel - 0.7) < 0.8 / body.wall))
    X = (cv.grid.x - body.x0)[None, None, :]
    linea = (np.abs(X) < cv.rng.uniform(4, 9)) & (body.theta_table(s < -0.8, idx) > 0)
    t[muscle & ~plane & ~linea] = ts.MUSCLE
    cv.inside[...] = inside
    cv.cavity[...] = rel >= 1.0


def paint_back_muscles(cv: Canvas) -> None:
    lay, rng, g = cv.lay, cv.rng, cv.grid
    h = lay.level_h
    zs = np.arange(g.z[0] - 20, g.z[-1] + 20, 7.0)
    for side in (-1, 1):
        # erector spinae: flattened ovals from the lamina to the subcutaneous fat, beside the spinous process
        es = cv.extra.setdefault("erector", rng.uniform(0.85, 1.2))
        fat_ok = cv.inside & (cv.tissue == ts.FAT) & (cv.depth > 0.75 * float(np.median(cv.body.fat)) + 2)
        for z in zs:
            n = (lay.z_l1 - z) / h
            big = (21 + 7 * np.clip(n + 1, 0, 4) / 4) * es
            y = spine_y(cv, n) + body_radii(n)[1] + 14 + 0.75 * big
            cv.ellipsoid(ts.MUSCLE, (lay.x0 + side * (big + 4), y, z), (1.05 * big, 0.8 * big, 11.0), where=fat_ok)
        # quadratus lumborum: T12 to the iliac crest, lateral to the psoas, behind the kidney
        ql = []
        for n in np.linspace(-1, 3.6, 6):
            z = lay.z_l1 - n * h
            ql.append((lay.x0 + side * (48 + 6 * n), spine_y(cv, n) + 22, z))
        cv.tube(ts.MUSCLE, ql, np.array([8, 13, 17, 19, 19, 14]) * rng.uniform(0.8, 1.2), where=cv.inside)
        # psoas: small at T12, ~2.5 cm radius at L4-L5, then along the pelvic brim
        ps, pr = [], []
        for n in np.linspace(-1, 4.5, 9):
            z = lay.z_l1 - n * h
            rx, ry = body_radii(n)
            r = 5 + 4.2 * (n + 1) ** 0.95 * cv.extra.setdefault("psoas", rng.uniform(0.75, 1.15))
            ps.append((lay.x0 + side * (rx + 0.8 * r), spine_y(cv, n) - 2 - 0.15 * r, z))
            pr.append(r)
        z_fh = lay.z_l1 - 5 * h - 85
        y_fh = spine_y(cv, 4) - 35
        ps += [(lay.x0 + side * 62, y_fh - 10, z_fh + 50), (lay.x0 + side * 78, y_fh - 32, z_fh)]
        pr += [pr[-1] * 0.85, pr[-1] * 0.7]
        cv.tube(ts.MUSCLE, ps, pr, where=cv.inside)
        # crura of the diaphragm beside the aorta
        cr = [(lay.x0 + side * 12 + 12, spine_y(cv, n) - body_radii(n)[1] - 4, lay.z_l1 - n * h)
              for n in (-3, -1.5, 0, 1.2)]
        cv.tube(ts.MUSCLE, cr, [4.5, 5, 5, 3.5], where=cv.inside)
        # glutei and iliacus (pelvic levels only)
        z_crest = lay.z_l1 - 3.3 * h
        if z_crest > g.z[0]:
            gl = [(lay.x0 + side * 95, spine_y(cv, 4) + 45, z_crest - 10),
                  (lay.x0 + side * 110, spine_y(cv, 4) + 55, z_fh),
                  (lay.x0 + side * 105, spine_y(cv, 4) + 45, z_fh - 60)]
            cv.tube(ts.MUSCLE, gl, [30, 45, 40], where=cv.inside & (cv.tissue == ts.FAT))
            il = [(lay.x0 + side * 75, spine_y(cv, 4) - 5, z_crest - 5),
                  (lay.x0 + side * 75, spine_y(cv, 4) - 25, z_fh + 40)]
            cv.tube(ts.MUSCLE, il, [14, 18], where=cv.inside & (cv.tissue == ts.FAT))
