"""Anatomical plausibility of a segmented kidney: what must surround it.

A kidney lies in the retroperitoneum inside its perirenal fat; ribs, spine and pelvis lie near it
but never wrap around it. Networks trained on abdomens can still take something they never saw for
a kidney: on a 5 mm head-and-neck scan, the bundled v1.0 networks labelled the cerebellum, which the
skull encases. So a kidney component is kept only if the thin rim around it, in the axial slices it
spans, is mostly not bone.

The numbers: on the real CTs in ``../shared/data/real_ct`` (contrast and non-contrast, and their
3-5 mm and 2.5 mm-pixel variants) the 5 mm in-plane rim of every true kidney is at most 1 % bone
(above 300 HU); the cerebellum's was 27 %. The limit, 15 %, leaves fifteen times the kidneys' worst case
for ribs under a small kidney, a calcified vessel or contrast-filled bowel against it. The 300 HU
bone limit stays below what the skull keeps on a 5 mm scan (at 500 HU the cerebellum's rim fell to
14 %); the price is that a strongly enhanced arterial-phase cortex left outside an under-segmented
kidney would count as bone, which these scans could not test.

The same rim holds the kidney's perirenal fat: 32-87 % of it lies between -190 and -30 HU around
every kidney kept on the real CTs here and their smaller- and larger-body variants (ircadb1_1 32-45 %,
ircadb1_17 65-66 %, s0009 76-87 %). On a larger-body variant of the head-and-neck scan s0002 the
networks labelled the cerebellum, whose rim is 9 % bone (under the bone limit) and 0.8 % fat. A
component whose rim is under 5 % fat (a sixth of the leanest kidney seen, for thin patients,
children, fat stranding and rims that a tight field of view cuts into air) is not a kidney in its
fat but brain, or an organ packed among others (``docs/evaluation/fat_rim/``). The check is a
setting (``segmenter.min_rim_fat``), off in the bundled v1.6: its rule adopted it (every tuning-pool
set and real scan unchanged), but on the held-out phantoms with a kidney displaced into the pelvis,
where bowel and muscle rather than fat lie around it, it lost two kidneys of 30.

A further check needs no HU: a kidney the localisers boxed lies inside the segmenter's canvas
(the box, its margin and the windows around it), so a kept region that runs into a side face of
the canvas behind which the scan goes on is wider than anything the xy-localiser marked: a liver or
spleen lying where a kidney is missing or displaced (v1.3 labelled 628 mL of spleen, 71 % of it as
tumour, on a painted validation case whose left kidney lies 108 mm low). Measured with v1.3 on the
5 real scans, their 16 scanner variants and 27 painted phantoms (held-out and validation, in place
and displaced), that spleen was the only region at a side face; large tumours reach one too (5
of 12 painted tumours of 600 mL or more), so the warning names both. The top and bottom faces do not
count: the z-localiser's slices can end inside a kidney's pole (15 true kidneys of those phantoms
touched them, at kidney Dice 0.72-0.97, 10 of them in phantoms with a displaced kidney; growing the canvas there is
the better cure), and a kidney cut by the scan's own edge touches a face behind which there is no
image. Such a region is reported and warned about, not removed: a kidney whose tumour outgrew
its box would look the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .volume import mask_box


@dataclass(frozen=True)
class PlausibilityConfig:
    rim_mm: float = 5.0  # width of the rim around a kidney, in its axial slices
    bone_hu: float = 300.0  # above this, a rim voxel counts as bone (cortical and most cancellous)
    max_bone_fraction: float = 0.15  # a component whose rim is more bone than this is not a kidney
    fat_hu: tuple[float, float] = (-190.0, -30.0)  # a rim voxel in this range counts as fat
    min_fat_fraction: float = 0.0  # a component whose rim is less fat than this is not a kidney (0 = no check)


def rim_composition(component: np.ndarray, hu: np.ndarray, spacing_xyz, config: PlausibilityConfig) -> dict:
    """Shares of bone and of fat in the in-plane rim (``config.rim_mm`` around ``component``, in its
    own slices); ``{"bone": 0.0, "fat": None}`` for an empty component or rim."""
    sx, sy = float(spacing_xyz[0]), float(spacing_xyz[1])
    box = mask_box(component, (0, int(np.ceil(config.rim_mm / sy)) + 1, int(np.ceil(config.rim_mm / sx)) + 1))
    if box is None:
        return {"bone": 0.0, "fat": None}
    # the rim lies outside the organ: holes (renal sinus, a contrast-filled collecting system) are inside
    comp = np.stack([ndi.binary_fill_holes(plane) for plane in component[box]])
    # a huge z sampling keeps the distance in-plane: the rim is taken slice by slice
    dist = ndi.distance_transform_edt(~comp, sampling=(1e6, sy, sx))
    rim_hu = hu[box][(dist > 0) & (dist <= config.rim_mm)]
    if rim_hu.size == 0:
        return {"bone": 0.0, "fat": None}
    lo, hi = config.fat_hu
    return {"bone": float((rim_hu > config.bone_hu).mean()), "fat": float(((rim_hu >= lo) & (rim_hu <= hi)).mean())}


def implausible_regions(labels: np.ndarray, hu: np.ndarray, spacing_xyz, voxel_ml: float,
                        config: PlausibilityConfig | None = None) -> tuple[np.ndarray, list[dict]]:
    """The kidney components of ``labels`` (0/1 kidney/2 tumour) that cannot be kidneys, as one
    mask, and an entry per component: its volume in mL, its rim's bone and fat shares and why it
    failed (``"bone"``: encased in bone; ``"no_fat"``: no perirenal fat around it).

    Components are the connected kidney-with-tumour regions (``labels > 0``).
    """
    cfg = config or PlausibilityConfig()
    comp, n = ndi.label(labels > 0)
    failed = np.zeros(labels.shape, bool)
    found = []
    for i in range(1, n + 1):
        mask = comp == i
        rim = rim_composition(mask, hu, spacing_xyz, cfg)
        if rim["bone"] > cfg.max_bone_fraction:
            reason = "bone"
        elif cfg.min_fat_fraction > 0 and rim["fat"] is not None and rim["fat"] < cfg.min_fat_fraction:
            reason = "no_fat"
        else:
            continue
        failed |= mask
        found.append({"ml": round(float(mask.sum()) * voxel_ml, 1), "bone_rim_fraction": round(rim["bone"], 3),
                      "fat_rim_fraction": round(rim["fat"], 3) if rim["fat"] is not None else None,
                      "reason": reason})
    return failed, found


def regions_reaching_faces(labels: np.ndarray, open_faces: dict[str, bool], voxel_ml: float) -> list[dict]:
    """The kidney components of ``labels`` (0/1/2 on the segmenter's canvas) that touch a face of
    the canvas behind which the scan goes on (``open_faces[face]`` True): their volume in mL, the
    faces they touch, the share of them labelled tumour and their mean x index, largest first."""
    comp, n = ndi.label(labels > 0)
    sides = {"z0": (0, 0), "z1": (0, -1), "y0": (1, 0), "y1": (1, -1), "x0": (2, 0), "x1": (2, -1)}
    open_ids = {}
    for face, (axis, end) in sides.items():
        if open_faces.get(face):
            ids = np.unique(np.take(comp, end, axis=axis))
            for i in ids[ids > 0]:
                open_ids.setdefault(int(i), []).append(face)
    found = []
    for i, faces in open_ids.items():
        mask = comp == i
        found.append({"ml": round(float(mask.sum()) * voxel_ml, 1), "faces": faces,
                      "tumour_share": round(float((labels[mask] == 2).mean()), 2),
                      "x_index": round(float(np.nonzero(mask)[2].mean()), 1)})
    return sorted(found, key=lambda r: -r["ml"])
