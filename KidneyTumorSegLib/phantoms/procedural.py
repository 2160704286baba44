"""Procedural kidney and tumour label maps of realistic size, position and orientation.

Kidneys: bean-shaped (a bent ellipsoid with a hilar notch), 10-12 cm long, 5-6 cm wide, 3-4 cm
thick, centres 6-8 cm either side of the midline (KiTS19 masks: 13-17 cm between kidney centres),
posterior, the right one lower, long axis tilted so that the upper pole is medial and posterior;
one kidney absent in some cases.  Tumours: 1-10 cm (log-normal, median 4 cm), lobulated, from fully
endophytic to exophytic.  Shapes are evaluated in physical space on the voxels of their own bounding
boxes, so any grid direction and spacing works.
"""

from __future__ import annotations

import numpy as np

from ..volume import Volume

KITS19_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


def _grid_geometry(shape_zyx, spacing_xyz, direction):
    """Array shape and index spacing for a grid whose physical extent is shape_zyx x spacing_xyz."""
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    n_phys = {0: shape_zyx[2], 1: shape_zyx[1], 2: shape_zyx[0]}
    size, spacing, used = [], [], set()
    for c in range(3):
        order = np.argsort(-np.abs(d[:, c]))
        p = next(int(q) for q in order if int(q) not in used)
        used.add(p)
        size.append(int(n_phys[p]))
        spacing.append(float(spacing_xyz[p]))
    shape = (size[2], size[1], size[0])
    # centre the field of view on the physical origin
    half = d @ (np.diag(spacing) @ (np.array(size, float) - 1)) / 2.0
    return shape, tuple(spacing), tuple(-half), d


def _box(vol: Volume, lo, hi):
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = vol.physical_to_index(corners)
    a = np.floor(ijk.min(0)).astype(int)
    b = np.ceil(ijk.max(0)).astype(int) + 1
    n = vol.size_xyz
    a = np.clip(a, 0, n)
    b = np.clip(b, 0, n)
    if np.any(b <= a):
        return None
    return (slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0]))


def _local(vol: Volume, box, centre, frame):
    """Coordinates of the box's voxels in a local frame (columns of ``frame``) around ``centre``."""
    m = vol.direction @ np.diag(vol.spacing)
    k = np.arange(box[0].start, box[0].stop)[:, None, None]
    j = np.arange(box[1].start, box[1].stop)[None, :, None]
    i = np.arange(box[2].start, box[2].stop)[None, None, :]
    rel = [vol.origin[p] - centre[p] + m[p, 0] * i + m[p, 1] * j + m[p, 2] * k for p in range(3)]
    return [sum(frame[p, a] * rel[p] for p in range(3)) for a in range(3)]


def _kidney_frame(rng, side: int) -> np.ndarray:
    """Columns: long axis (to the upper pole), width axis (towards the hilum), thickness axis."""
    medial = -side  # left kidney (side +1): the midline is towards -x
    a = np.deg2rad(rng.uniform(8, 20))
    b = np.deg2rad(rng.uniform(12, 30))
    u = np.array([medial * np.sin(a), np.sin(b), np.cos(a) * np.cos(b)])
    u /= np.linalg.norm(u)
    g = np.deg2rad(rng.uniform(20, 45))
    v = np.array([medial * np.cos(g), -np.sin(g), 0.0])
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    return np.stack([u, v, np.cross(u, v)], axis=1)


def procedural_labels(seed: int, shape_zyx=(100, 512, 512), spacing_xyz=(0.8, 0.8, 3.0), direction=None,
                      n_kidneys: int | None = None, tumour: bool = True) -> Volume:
    """A KiTS-style label map (0 background, 1 kidney, 2 tumour) drawn from ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 19]))
    shape, spacing, origin, d = _grid_geometry(shape_zyx, spacing_xyz, direction)
    vol = Volume(np.zeros(shape, np.uint8), spacing, origin, d)
    if n_kidneys is None:
        n_kidneys = 2 if rng.random() < 0.88 else 1
    sides = [-1, 1] if n_kidneys >= 2 else ([int(rng.choice([-1, 1]))] if n_kidneys == 1 else [])
    x_mid = rng.uniform(-15, 15)
    y_k = rng.uniform(15, 50)
    z_span = shape_zyx[0] * spacing_xyz[2]
    z_c = rng.uniform(-0.12, 0.12) * z_span
    kid = np.zeros(shape, bool)
    kidneys = []
    for side in sides:
        half = (rng.uniform(52, 62), rng.uniform(26, 31), rng.uniform(17, 22))
        c = np.array([x_mid + side * rng.uniform(58, 80), y_k + rng.uniform(-8, 8),
                      z_c + (rng.uniform(-25, -5) if side < 0 else rng.uniform(0, 10))])
        f = _kidney_frame(rng, side)
        box = _box(vol, c - max(half) - 5, c + max(half) + 5)
        if box is None:
            continue
        u, v, w = _local(vol, box, c, f)
        bend = rng.uniform(0.0025, 0.0045)
        v2 = v - bend * u**2  # ends curve towards the hilum: concave medial border
        body = (u / half[0]) ** 2 + (v2 / half[1]) ** 2 + (w / half[2]) ** 2 <= 1.0
        notch = ((u / (0.22 * half[0])) ** 2 + ((v - 0.95 * half[1]) / (0.45 * half[1])) ** 2
                 + ((w + 0.1 * half[2]) / (0.55 * half[2])) ** 2) <= 1.0
        kid[box] |= body & ~notch
        kidneys.append((c, f, half))
    tum = np.zeros(shape, bool)
    if tumour and kidneys:
        n_t = int(rng.choice([1, 2, 3], p=[0.85, 0.12, 0.03]))
        for _ in range(n_t):
            c, f, half = kidneys[int(rng.integers(len(kidneys)))]
            dia = float(np.clip(rng.lognormal(np.log(40.0), 0.5), 10.0, 100.0))
            r = dia / 2.0
            dirn = rng.normal(size=3)
            dirn[1] *= 0.6  # fewer tumours pointing into the hilum
            dirn /= np.linalg.norm(dirn)
            surf = dirn / np.sqrt(np.sum((dirn / np.array(half)) ** 2))  # on the ellipsoid, local frame
            normal = surf / np.array(half) ** 2
            normal /= np.linalg.norm(normal)
            exo = rng.uniform(-0.7, 0.7)
            centre = c + f @ (surf + exo * r * normal)
            radii = r * rng.uniform(0.85, 1.15, 3)
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            box = _box(vol, centre - radii.max() * 1.2, centre + radii.max() * 1.2)
            if box is None:
                continue
            a, b, e = _local(vol, box, centre, q)
            rr = np.sqrt((a / radii[0]) ** 2 + (b / radii[1]) ** 2 + (e / radii[2]) ** 2)
            norm = np.sqrt(a * a + b * b + e * e) + 1e-6
            lob = 0.0
            for _k in range(4):
                kv = rng.normal(size=3)
                kv /= np.linalg.norm(kv)
                lob = lob + rng.uniform(0.02, 0.06) * np.cos(3.0 * (kv[0] * a + kv[1] * b + kv[2] * e) / norm
                                                             + rng.uniform(0, 2 * np.pi))
            tum[box] |= rr <= 1.0 + lob
    arr = np.zeros(shape, np.uint8)
    arr[kid] = 1
    arr[tum] = 2
    return vol.with_array(arr)
