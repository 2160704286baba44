"""Contact sheet of phantoms: axial slice through the kidneys, coronal slice, and the axial slice with
the labels tinted, in a soft-tissue window (W400 / L40), written as a PNG with pillow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..volume import Volume, signed_permutation


def canonical(vol: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Array re-indexed as (z up, y posterior, x left), i.e. increasing LPS coordinates, and its
    spacing (x, y, z).  Oblique grids use the nearest axis-aligned reading."""
    perm = signed_permutation(vol.direction)
    if perm is None:
        d = vol.direction
        perm = [(int(np.argmax(np.abs(d[:, c]))), float(np.sign(d[np.argmax(np.abs(d[:, c])), c]))) for c in range(3)]
    arr = vol.array
    # array axis of index axis c is 2 - c; we want physical z, y, x as array axes 0, 1, 2
    order = [None, None, None]
    spacing = [0.0, 0.0, 0.0]
    for c, (p, _sgn) in enumerate(perm):
        order[2 - p] = 2 - c
        spacing[p] = vol.spacing[c]
    out = arr.transpose(order)
    for p, sgn in perm:
        if sgn < 0:
            out = np.flip(out, axis=2 - p)
    return out, tuple(spacing)


def window(a: np.ndarray, width: float = 400.0, level: float = 40.0) -> np.ndarray:
    lo = level - width / 2.0
    return (np.clip((a.astype(np.float32) - lo) / width, 0, 1) * 255).astype(np.uint8)


def panels(ct: Volume, labels: Volume, height: int = 256) -> list:
    """Three PIL images (axial, coronal, axial with labels) through the labels' centre of mass."""
    from PIL import Image

    c, sp = canonical(ct)
    lab, _ = canonical(labels)
    if lab.any():
        z, y, _x = (int(v) for v in np.round(np.argwhere(lab[:: 1] > 0).mean(axis=0)))
    else:
        z, y = c.shape[0] // 2, c.shape[1] // 2
    ax = window(c[z])
    co = window(c[::-1, y, :])  # superior at the top
    ov = np.stack([ax] * 3, axis=-1).astype(np.float32)
    m1, m2 = lab[z] == 1, lab[z] == 2
    ov[m1] = 0.6 * ov[m1] + 0.4 * np.array([185, 102, 83])
    ov[m2] = 0.5 * ov[m2] + 0.5 * np.array([230, 220, 70])
    sx, sy, sz = sp

    def fit(img, w_mm, h_mm):
        im = Image.fromarray(img)
        return im.resize((max(1, int(round(height * w_mm / h_mm))), height), Image.BILINEAR)

    w = c.shape[2] * sx
    return [fit(ax, w, c.shape[1] * sy).convert("RGB"), fit(co, w, c.shape[0] * sz).convert("RGB"),
            fit(ov.astype(np.uint8), w, c.shape[1] * sy)]


def contact_sheet(pairs, path: str | os.PathLike, height: int = 256, captions=None) -> Path:
    """Write a PNG with one row per (ct, labels) pair."""
    from PIL import Image, ImageDraw

    rows = [panels(ct, lab, height) for ct, lab in pairs]
    widths = [sum(p.size[0] for p in r) + 4 * (len(r) - 1) for r in rows]
    sheet = Image.new("RGB", (max(widths) if widths else 1, len(rows) * (height + 4)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(rows):
        x = 0
        for p in r:
            sheet.paste(p, (x, i * (height + 4)))
            x += p.size[0] + 4
        if captions:
            draw.text((4, i * (height + 4) + 4), str(captions[i]), fill=(255, 255, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
