"""Kidneys and tumours rendered on the caller's own grid, voxel for voxel where the labels say.

Inside label 1: enhancing cortex (outer shell), medullary pyramids (dark in the corticomedullary
phase, iso in the nephrographic phase), a small renal sinus towards the hilum with fat and the
collecting system (bright urine in the excretory phase).  Inside label 2: one of four tumour types
(hyper-enhancing heterogeneous with an enhancing rim and necrosis, hypo-enhancing homogeneous,
iso-enhancing, cystic with septa).  Distances come from an exact EDT with the grid's spacing, so
thicknesses are in mm whatever the voxel size or direction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..volume import Volume, mask_box
from . import tissues as ts
from .layout import Layout
from .shapes import smooth_noise


def label_box(labels: Volume, margin_vox) -> tuple[slice, ...] | None:
    return mask_box(labels.array, margin_vox)


def physical_axes(labels: Volume, box) -> list[np.ndarray]:
    """Broadcastable physical x, y, z of a box of the label array (index order k, j, i)."""
    m = labels.direction @ np.diag(labels.spacing)
    k = np.arange(box[0].start, box[0].stop)[:, None, None]
    j = np.arange(box[1].start, box[1].stop)[None, :, None]
    i = np.arange(box[2].start, box[2].stop)[None, None, :]
    return [labels.origin[p] + m[p, 0] * i + m[p, 1] * j + m[p, 2] * k for p in range(3)]


def render_kidneys(labels: Volume, box, lay: Layout, means: np.ndarray, sds: np.ndarray, tumour_type: str,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HU (float32) and tissue ids (uint8) for every voxel of ``box``; 0 / nan outside the labels."""
    lab = labels.array[box]
    organ = lab > 0
    sp = labels.spacing[::-1]  # array order
    vox = np.array(sp)
    hu = np.zeros(lab.shape, np.float32)
    tid = np.zeros(lab.shape, np.uint8)
    if not organ.any():
        return hu, tid
    d_in = ndi.distance_transform_edt(organ, sampling=sp).astype(np.float32)
    fine = smooth_noise(rng, lab.shape, 0.8 / vox * 0.8)
    pyr = smooth_noise(rng, lab.shape, 4.5 / vox)
    # which way is medial (towards the hilum) for each voxel: nearest kidney's centre
    px, py, pz = physical_axes(labels, box)
    kidney = lab == 1
    t_cortex = rng.uniform(4.5, 8.0)
    tid[kidney] = ts.CORTEX
    medulla = kidney & (d_in > t_cortex) & (pyr > rng.uniform(-0.5, 0.1))
    tid[medulla] = ts.MEDULLA
    for k in lay.kidneys:
        rel_x = (px - k.centre[0]) * k.medial
        rel_y = k.centre[1] - py  # anterior positive
        s = (0.85 * rel_x + 0.5 * rel_y) / max(k.half_width, 15.0)
        near = np.abs(pz - k.centre[2]) < 0.3 * (k.top - k.bottom) + 5
        sinus = kidney & near & (s > rng.uniform(0.0, 0.25)) & (d_in > t_cortex + 1.0)
        if k.side == "left":
            sinus &= px > lay.x0
        else:
            sinus &= px < lay.x0
        tid[sinus] = ts.SINUS_FAT
        tid[sinus & (pyr > rng.uniform(-0.3, 0.3))] = ts.COLLECTING
    tum = lab == 2
    d_t = None
    if tum.any():
        d_t = ndi.distance_transform_edt(tum, sampling=sp).astype(np.float32)
        _tumour_tissues(tum, d_t, sp, tumour_type, rng, tid)
    mean = means[tid]
    sd = sds[tid]
    hu[...] = mean + sd * fine
    if tum.any():
        hetero = smooth_noise(rng, lab.shape, 3.0 / vox)
        amp = {"hyper": rng.uniform(15, 45), "hypo": rng.uniform(4, 12), "iso": rng.uniform(6, 18),
               "cystic": rng.uniform(3, 8)}[tumour_type]
        t_only = tid == ts.TUMOUR
        hu[t_only] += amp * hetero[t_only]
        rim = t_only & (d_t < rng.uniform(2.0, 5.0))
        hu[rim] += rng.uniform(0, 40) if tumour_type in ("hyper", "cystic") else rng.uniform(-10, 15)
    hu[~organ] = np.nan
    return hu, tid


def _tumour_tissues(tum, d_t, sp, tumour_type, rng, tid):
    comp, n = ndi.label(tum)
    blob = smooth_noise(rng, tum.shape, 5.0 / np.array(sp))
    tid[tum] = ts.TUMOUR
    for c in range(1, n + 1):
        m = comp == c
        depth = float(d_t[m].max())
        if tumour_type == "cystic":
            necro = m & (d_t > rng.uniform(2, 4)) & (np.abs(blob) > rng.uniform(0.05, 0.15))
        elif tumour_type == "hyper" and depth > 8 and rng.random() < 0.75:
            necro = m & (d_t > rng.uniform(0.3, 0.55) * depth) & (blob > rng.uniform(-0.6, 0.4))
        elif depth > 12 and rng.random() < 0.3:
            necro = m & (d_t > 0.6 * depth) & (blob > 0.3)
        else:
            continue
        tid[necro] = ts.NECROSIS
