"""Bones: vertebrae (cortical shell, cancellous body, canal, posterior elements), ribs with costal
cartilage, sternum, sacrum, iliac wings, acetabula, femoral heads and necks, pubic rami.

Only the parts whose bounding boxes meet the grid cost anything, so a kidneys-only field of view
pays for three vertebrae and a few ribs.
"""

from __future__ import annotations

import numpy as np

from . import tissues as ts
from .canvas import Canvas

LEVELS = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]


def level_index(name: str) -> int:
    """Levels counted from L1 = 0 downwards (T12 = -1, L5 = 4, S1 = 5)."""
    return LEVELS.index(name) - LEVELS.index("L1") if name in LEVELS else 5


def spine_y(cv: Canvas, n: float) -> float:
    """AP centre of the vertebral body at level index ``n`` (lordosis and kyphosis)."""
    lay = cv.lay
    lord = cv.extra.setdefault("lordosis", cv.rng.uniform(4, 14))
    kyph = cv.extra.setdefault("kyphosis", cv.rng.uniform(0.8, 2.2))
    y = lay.y_vb - lord * np.exp(-(((n - 3.0) / 2.2) ** 2))
    if n < 0:
        y += kyph * (-n) ** 1.3
    return float(y)


def spine_y_at_z(cv: Canvas, z):
    n = (cv.lay.z_l1 - np.asarray(z, float)) / cv.lay.level_h
    return np.vectorize(lambda v: spine_y(cv, v))(n)


def body_radii(n: float) -> tuple[float, float]:
    if n >= 0:
        return 20.0 + 1.3 * n, 15.0 + 0.6 * n
    return max(12.0, 20.0 + 0.7 * n), max(11.0, 15.0 + 0.35 * n)


def vertebra(cv: Canvas, n: int) -> None:
    lay, rng = cv.lay, cv.rng
    zc = lay.z_l1 - n * lay.level_h
    h = lay.level_h
    if zc + h < cv.grid.z[0] or zc - h > cv.grid.z[-1]:
        return
    s = cv.extra.setdefault("vb_scale", rng.uniform(0.9, 1.12))
    rx, ry = (v * s for v in body_radii(n))
    yc = spine_y(cv, n)
    hb = 0.39 * h
    x0 = lay.x0
    # disc below the body
    cv.ellipsoid(ts.DISC, (x0, yc, zc - 0.5 * h), (rx * 0.98, ry * 0.98, 0.14 * h + 1.0))
    # body: cylinder-ish (superellipsoid approximated by a tall ellipsoid clipped to the endplates)
    sl = cv.grid.box((x0 - rx, yc - ry, zc - hb), (x0 + rx, yc + ry, zc + hb))
    if sl is not None:
        Z, Y, X = cv.grid.coords(sl)
        r = np.sqrt(((X - x0) / rx) ** 2 + ((Y - yc) / ry) ** 2) * np.ones_like(Z)
        # posterior concavity of the body
        r = r + 0.12 * np.exp(-((X - x0) / (0.4 * rx)) ** 2) * (Y > yc + 0.5 * ry)
        zr = np.abs(Z - zc) / hb * np.ones_like(r)
        m = (r <= 1.0) & (zr <= 1.0)
        cv.tissue[sl][m] = ts.CORTICAL
        inner = m & (r <= 1 - 1.8 / min(rx, ry)) & (zr <= 1 - min(1.2, 0.5 * cv.grid.spacing[2]) / hb)
        cv.tissue[sl][inner] = ts.CANCELLOUS
    # canal and its contents
    cyc = yc + ry + rng.uniform(7, 10)
    crx, cry = 10.0 + 0.8 * max(n, 0), 8.0
    canal_where = None
    # pedicles, laminae, spinous and transverse processes
    zp = zc + 0.15 * h
    for side in (-1, 1):
        ped0 = (x0 + side * (crx + 3), yc + ry - 2, zp)
        ped1 = (x0 + side * (crx + 3), cyc + 2, zp)
        cv.bone_tube([ped0, ped1], 4.5)
        lam = [ped1, (x0 + side * (crx * 0.6 + 2), cyc + cry + 4, zp - 2), (x0, cyc + cry + 6, zp - 4)]
        cv.bone_tube(lam, 3.6)
        if n >= 0:  # lumbar transverse processes, longest at L3
            length = 28 + 10 * np.exp(-(((n - 2.5) / 1.5) ** 2)) + rng.uniform(-3, 3)
            tp = [ped1, (x0 + side * (crx + 6 + length), cyc - 4, zp)]
            cv.bone_tube(tp, 4.0)
        else:  # thoracic: short, posterolateral, meeting the rib tubercle
            tp = [ped1, (x0 + side * (crx + 22), cyc + 12, zp + 2)]
            cv.bone_tube(tp, 4.5)
    sp_len = rng.uniform(35, 45) if n >= 0 else rng.uniform(35, 45)
    drop = 8 if n >= 0 else 0.8 * h
    sp = [(x0, cyc + cry + 6, zp - 4), (x0, cyc + cry + 6 + sp_len, zp - 4 - drop)]
    cv.tube(ts.CANCELLOUS, sp, [5.0, 4.0], wall=1.6, wall_value=ts.CORTICAL)
    # canal: epidural fat, thecal sac (CSF) and cord above L1
    cv.ellipsoid(ts.FAT, (x0, cyc, zc), (crx, cry, 0.55 * h), where=canal_where)
    cv.ellipsoid(ts.CSF, (x0, cyc, zc), (crx - 2.5, cry - 2.0, 0.55 * h))
    if n <= 0:
        cv.ellipsoid(ts.SOFT_TISSUE, (x0, cyc - 0.5, zc), (4.5, 4.0, 0.55 * h))


def rib(cv: Canvas, number: int, side: int) -> None:
    """Rib ``number`` (1-12) on ``side`` (+1 patient left, -1 right) from its vertebra around the body."""
    lay, rng, body = cv.lay, cv.rng, cv.body
    n = number - 13  # T12 -> -1
    zv = lay.z_l1 - n * lay.level_h + 0.25 * lay.level_h
    yc = spine_y(cv, n)
    end = {12: 35.0, 11: -2.0}.get(number, -55.0 - 2.0 * (10 - min(number, 10)))
    drop = {12: 25.0, 11: 50.0}.get(number, 75.0 + 3.0 * (10 - number) if number >= 7 else 70.0)
    drop *= cv.extra.setdefault("rib_slope", rng.uniform(0.8, 1.2))
    if zv + 20 < cv.grid.z[0] or zv - drop - 40 > cv.grid.z[-1]:
        return
    phis = np.deg2rad(np.linspace(62.0, end, 12))
    pts = [np.array([lay.x0 + side * 26.0, yc + 20.0, zv])]
    for i, phi in enumerate(phis):
        f = i / (len(phis) - 1)
        z = zv - drop * f**1.25
        fat = float(np.interp(z, body.z, body.fat))
        theta = phi if side > 0 else np.pi - phi
        pts.append(body.point(theta, z, fat + 0.45 * body.wall + 4.0))
    r = 4.2 if number < 12 else 3.6
    cv.bone_tube(pts, r, shell=1.6)
    if number <= 10:  # costal cartilage to the costal margin / sternum
        last = pts[-1]
        phi_end = np.deg2rad(-84.0)
        theta = phi_end if side > 0 else np.pi - phi_end
        z2 = last[2] + rng.uniform(15, 35)
        fat = float(np.interp(z2, body.z, body.fat))
        mid = body.point(0.5 * (np.arctan2(last[1] - np.interp(last[2], body.z, body.cy), last[0] - lay.x0) + theta),
                         0.5 * (last[2] + z2), fat + 0.5 * body.wall + 6)
        cv.tube(ts.CARTILAGE, [last, mid, body.point(theta, z2, fat + 0.5 * body.wall + 5)], 4.0)


def sternum(cv: Canvas) -> None:
    lay, body = cv.lay, cv.body
    z_xiph = lay.z_l1 + 3.2 * lay.level_h
    z_top = cv.grid.z[-1] + 10
    if z_top < z_xiph:
        return
    zs = np.linspace(z_xiph, z_top, 6)
    pts = [body.point(-np.pi / 2, z, float(np.interp(z, body.z, body.fat)) + 10) for z in zs]
    cv.bone_tube(pts, 7.0)


def pelvis(cv: Canvas) -> None:
    lay, rng = cv.lay, cv.rng
    x0, h = lay.x0, lay.level_h
    z_s1 = lay.z_l1 - 5 * h
    z_crest = lay.z_l1 - 3.3 * h
    z_fh = z_s1 - rng.uniform(70, 95)
    if z_crest + 20 < cv.grid.z[0]:
        return
    y5 = spine_y(cv, 4)
    # sacrum: tapering plates curving backwards
    for i, f in enumerate(np.linspace(0, 1, 9)):
        z = z_s1 + 0.3 * h - f * 110
        y = y5 + 5 + 55 * f**1.5
        w = 52 * (1 - 0.65 * f) + 20 * (1 - f)
        cv.bone_ellipsoid((x0, y, z), (w, 16 * (1 - 0.5 * f) + 4, 9.0 + i * 0), shell=1.6)
    y_fh = y5 - rng.uniform(25, 45)
    for side in (-1, 1):
        xs = x0 + side * rng.uniform(85, 100)
        # iliac wing: part of an ellipsoidal shell, between the crest and the acetabulum
        c = np.array([x0 + side * 30, y5 - 25, z_fh + 10])
        rad = np.array([rng.uniform(85, 105), rng.uniform(65, 80), z_crest - z_fh - 10])
        sl = cv.grid.box(c - rad - 12, c + rad + 12)
        if sl is not None:
            Z, Y, X = cv.grid.coords(sl)
            u = np.sqrt(((X - c[0]) / rad[0]) ** 2 + ((Y - c[1]) / rad[1]) ** 2 + ((Z - c[2]) / rad[2]) ** 2)
            t = rng.uniform(7, 11) / rad[0]
            ang = np.arctan2(Y - c[1], (X - c[0]) * side)  # 0 lateral, +pi/2 posterior
            shell = (np.abs(u - 1.0) < t) & (Z > z_fh + 15) & (ang > -0.9) & (ang < 1.9)
            shell &= Z < z_crest
            cv.tissue[sl][shell] = ts.CORTICAL
            inner = shell & (np.abs(u - 1.0) < t - 2.0 / rad[0])
            cv.tissue[sl][inner] = ts.CANCELLOUS
        # acetabulum, femoral head, neck and shaft
        fh = np.array([xs, y_fh, z_fh])
        rf = rng.uniform(21, 26)
        cv.bone_ellipsoid(fh + [side * -8, 0, 8], (rf + 9, rf + 9, rf + 6), shell=2.0)
        cv.ellipsoid(ts.CARTILAGE, fh, (rf + 2, rf + 2, rf + 2))
        cv.bone_ellipsoid(fh, (rf, rf, rf), shell=2.0)
        troch = fh + [side * 45, 10, -25]
        cv.bone_tube([fh, troch], 15.0, shell=2.2)
        cv.bone_tube([troch, troch + [side * -8, -5, -200]], 14.0, shell=4.0)
        # pubic ramus to the symphysis, ischium down and back
        sym = np.array([x0 + side * 6, y_fh - rng.uniform(55, 75), z_fh - 15])
        cv.bone_tube([fh + [side * -15, -15, -5], sym], 8.0)
        cv.bone_tube([fh + [side * -10, 15, -20], fh + [side * -30, 35, -65]], 11.0)
    cv.extra.update(z_fh=z_fh, y_fh=y_fh, z_crest=z_crest, z_s1=z_s1)


def paint_skeleton(cv: Canvas) -> None:
    for name in LEVELS:
        vertebra(cv, level_index(name))
    for number in range(1, 13):
        for side in (-1, 1):
            rib(cv, number, side)
    sternum(cv)
    pelvis(cv)
