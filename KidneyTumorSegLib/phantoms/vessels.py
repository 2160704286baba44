"""Great vessels and their branches: aorta (left-anterior of the spine) with calcified plaques,
IVC (right-anterior), iliac arteries and veins, renal arteries and veins (the left vein crossing in
front of the aorta), SMA and SMV, and the ureters running down the psoas to the bladder."""

from __future__ import annotations

import numpy as np

from . import tissues as ts
from .canvas import Canvas
from .skeleton import body_radii, spine_y


def _spine_front(cv: Canvas, z: float) -> tuple[float, float]:
    n = (cv.lay.z_l1 - z) / cv.lay.level_h
    return spine_y(cv, n) - body_radii(n)[1], n


def paint_vessels(cv: Canvas, below: np.ndarray) -> None:
    lay, rng, g = cv.lay, cv.rng, cv.grid
    x0, h, z1 = lay.x0, lay.level_h, lay.z_l1
    z_bif = z1 - rng.uniform(3.0, 3.6) * h
    z_top = g.z[-1] + 40
    r_ao = rng.uniform(9.5, 13.0)
    dx_ao = rng.uniform(6, 20)
    zs = np.arange(z_bif, max(z_top, z_bif + 1), 20.0)
    ao = []
    for z in zs:
        yf, n = _spine_front(cv, z)
        ao.append((x0 + dx_ao + (5 if n < -1 else 0), yf - r_ao - 1.5, z))
    ao = np.array(ao) if len(ao) > 1 else np.array([(x0 + dx_ao, lay.y_vb - 30, z_bif), (x0 + dx_ao, lay.y_vb - 30, z_bif + 1)])
    inside = cv.inside & (cv.tissue != ts.CORTICAL) & (cv.tissue != ts.CANCELLOUS)
    cv.tube(ts.AORTA, ao, np.linspace(r_ao * 0.9, r_ao * 1.1, len(ao)), where=inside)
    # calcified plaques on the aortic wall (older patients)
    if rng.random() < 0.5:
        for _ in range(rng.integers(2, 12)):
            i = rng.integers(0, len(ao))
            ang = rng.uniform(0, 2 * np.pi)
            p = ao[i] + np.array([np.cos(ang) * r_ao, np.sin(ang) * r_ao, rng.uniform(-10, 10)])
            cv.ellipsoid(ts.CORTICAL, p, (1.8, 1.8, rng.uniform(2, 6)), where=inside)
    # IVC: right-anterior, flattened, up into the liver and the right atrium
    r_ivc = rng.uniform(9, 13)
    z_conf = z_bif - rng.uniform(5, 20)
    iv = []
    for z in np.arange(z_conf, max(z_top, z_conf + 1), 20.0):
        yf, n = _spine_front(cv, z)
        iv.append((x0 - rng.uniform(20, 26) - (8 if n < -1.5 else 0), yf - r_ivc + 2 - (10 if n < -1.5 else 0), z))
    if len(iv) > 1:
        cv.tube(ts.VEIN, iv, r_ivc, where=inside)
    # iliac vessels to the groins
    z_fh = z1 - 5 * h - 85
    y4 = spine_y(cv, 4)
    for side in (-1, 1):
        art = [ao[0], (x0 + side * 35, y4 - 25, z_bif - 45), (x0 + side * 60, y4 - 40, z_fh + 35),
               (x0 + side * 80, y4 - 70, z_fh - 10)]
        cv.tube(ts.AORTA, art, [r_ao * 0.7, 6.5, 5.5, 5.0], where=inside)
        vn = [iv[0] if iv else (x0 - 20, y4 - 20, z_conf), (x0 + side * 30, y4 - 12, z_bif - 50),
              (x0 + side * 55, y4 - 30, z_fh + 30), (x0 + side * 75, y4 - 62, z_fh - 10)]
        cv.tube(ts.VEIN, vn, [8, 7.5, 7, 6.5], where=inside)
    # visceral arteries and the SMV
    yf1, _ = _spine_front(cv, z1)
    sma = [(x0 + dx_ao, yf1 - 2 * r_ao, z1 + 5), (x0 + 4, yf1 - 2 * r_ao - 25, z1 - 15),
           (x0 + 2, yf1 - 2 * r_ao - 45, z1 - 2.5 * h)]
    cv.tube(ts.AORTA, sma, [4.5, 4, 3], where=below & inside & (cv.tissue == ts.FAT))
    smv = [(x0 - 5, yf1 - 2 * r_ao - 12, z1 + 5), (x0 - 10, yf1 - 2 * r_ao - 32, z1 - 15),
           (x0 - 12, yf1 - 2 * r_ao - 50, z1 - 2.5 * h)]
    cv.tube(ts.VEIN, smv, [6.5, 5.5, 4], where=below & inside & (cv.tissue == ts.FAT))
    celiac = [(x0 + dx_ao, yf1 - 2 * r_ao, z1 + 0.8 * h), (x0 + 2, yf1 - 2 * r_ao - 18, z1 + 0.9 * h)]
    cv.tube(ts.AORTA, celiac, 3.8, where=below & inside & (cv.tissue == ts.FAT))
    # renal vessels and ureters
    free_ret = inside & ((cv.tissue == ts.FAT) | cv.kidney_zone)
    for k in lay.kidneys:
        hil = k.hilum
        ao_pt = np.array([x0 + dx_ao, yf1 - r_ao, hil[2] + 10])
        ivc_pt = np.array([iv[0][0] if iv else x0 - 22, yf1 - r_ivc, hil[2] + 5])
        mid_a = 0.5 * (ao_pt + hil) + (0, 6, 0)
        cv.tube(ts.AORTA, [ao_pt, mid_a, hil], [3.5, 3.2, 3.0], where=free_ret)
        if k.side == "left":  # in front of the aorta, below the SMA
            vein = [hil, (x0 + dx_ao + 15, yf1 - 2 * r_ao - 5, hil[2] + 5), (x0 + dx_ao - 5, yf1 - 2 * r_ao - 8, hil[2] + 8), ivc_pt]
        else:
            vein = [hil, 0.5 * (hil + ivc_pt) - (0, 5, 0), ivc_pt]
        cv.tube(ts.VEIN, vein, [6, 5.5, 5.5, 6][: len(vein)], where=free_ret)
        # renal pelvis and ureter (urine; bright in the excretory phase)
        cv.ellipsoid(ts.COLLECTING, hil + (0, 2, -3), (9, 6, 10), where=free_ret)
        yps = spine_y(cv, 3)
        ur = [hil, hil + (k.medial * 15, -2, -30), (x0 - k.medial * 42, yps - 18, z1 - 2.5 * h),
              (x0 - k.medial * 48, yps - 30, z_fh + 60), (x0 - k.medial * 30, y4 - 75, z_fh + 25)]
        cv.tube(ts.COLLECTING, ur, 2.8, where=inside & (cv.tissue != ts.AORTA) & (cv.tissue != ts.VEIN))
    cv.extra.update(aorta=ao, z_bif=z_bif)
