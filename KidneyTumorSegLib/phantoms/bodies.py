"""Bodies to paint CTs in: whole-anatomy label maps, and organ-only maps completed with a skeleton.

A ``Body`` is a label map in TotalSegmentator v2 ids with the tissue of each id. TotalSegmentator
maps have organs, bones, muscles and vessels; BTCV and AMOS maps only organs. An organ-only map is
completed with the bones, muscles, lungs, heart, bowel and vessels of a TotalSegmentator donor,
scaled and moved per axis so that the organs both maps share (liver, spleen, kidneys, stomach,
aorta, ...) line up; the organ map's own organs then win wherever the two overlap. So 30 BTCV
organ layouts become 30 more bodies with a plausible spine, ribs and psoas around their kidneys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..volume import Volume
from . import tissues as ts

# TotalSegmentator v2 class names -> tissue (matched by prefix, first match wins).
_NAME_TISSUE = (
    ("kidney_cyst", "kidney"),
    ("kidney", "kidney"),
    ("spleen", ts.SPLEEN), ("gallbladder", ts.GALLBLADDER), ("liver", ts.LIVER), ("pancreas", ts.PANCREAS),
    ("stomach", "bowel"), ("small_bowel", "bowel"), ("duodenum", "bowel"), ("colon", "colon"),
    ("esophagus", ts.MUSCLE), ("trachea", ts.BOWEL_GAS), ("lung", ts.LUNG),
    ("adrenal", ts.SOFT_TISSUE), ("thyroid", ts.SPLEEN), ("prostate", ts.SOFT_TISSUE),
    ("urinary_bladder", ts.BLADDER), ("heart", "heart"), ("atrial_appendage", ts.HEART_BLOOD),
    ("pulmonary_vein", ts.HEART_BLOOD), ("aorta", ts.AORTA), ("brachiocephalic_trunk", ts.AORTA),
    ("subclavian_artery", ts.AORTA), ("common_carotid", ts.AORTA), ("iliac_artery", ts.AORTA),
    ("brachiocephalic_vein", ts.VEIN), ("superior_vena_cava", ts.VEIN), ("inferior_vena_cava", ts.VEIN),
    ("iliac_vena", ts.VEIN), ("portal_vein", ts.MESENTERIC_VESSEL), ("spinal_cord", ts.CSF),
    ("brain", ts.SOFT_TISSUE), ("costal_cartilages", ts.CARTILAGE),
    ("gluteus", ts.MUSCLE), ("autochthon", ts.MUSCLE), ("iliopsoas", ts.MUSCLE),
    ("vertebrae", "bone"), ("sacrum", "bone"), ("hip", "bone"), ("femur", "bone"), ("rib", "bone"),
    ("sternum", "bone"), ("skull", "bone"), ("humerus", "bone"), ("scapula", "bone"), ("clavicula", "bone"),
)
_CLASS_IDS = {"kidney": 250, "bowel": 251, "colon": 252, "heart": 253, "bone": 254}


@dataclass
class Body:
    """A whole-anatomy label map and the tissue (or class) of each of its ids."""

    labels: Volume  # uint8 ids
    lut: np.ndarray  # id -> tissue id, or one of _CLASS_IDS for tissues painted with structure
    kidney_ids: dict  # "right"/"left" -> id of that kidney in ``labels``
    name: str
    names: dict = None  # id -> class name (TotalSegmentator v2)


def tissue_lut(names: dict[int, str]) -> tuple[np.ndarray, dict]:
    """Tissue per label id from class names; unknown names are soft tissue. Kidneys by side."""
    lut = np.full(256, ts.SOFT_TISSUE, np.uint8)
    lut[0] = ts.AIR  # "unlabelled": decided later (fat inside the body, air outside)
    kidneys = {}
    for i, name in names.items():
        name = name.lower()
        for prefix, tissue in _NAME_TISSUE:
            if name.startswith(prefix):
                lut[int(i)] = _CLASS_IDS[tissue] if isinstance(tissue, str) else tissue
                break
        if name.startswith("kidney_") and "cyst" not in name:
            kidneys["right" if name.endswith("right") else "left"] = int(i)
    return lut, kidneys


def read_body(path: str | Path, names: dict[int, str] | None = None) -> Body:
    """A TotalSegmentator-style label map; class names from ``names``, the ``classes.json`` of all
    TotalSegmentator v2 classes one folder up, or a ``labels.json`` beside the file."""
    from ..io import read_volume

    path = Path(path)
    if names is None:
        for cand in (path.parent.parent / "classes.json", path.parent / "labels.json"):
            if cand.exists():
                names = {int(k): v for k, v in json.loads(cand.read_text()).items()}
                break
    if names is None:
        raise ValueError(f"No class names for {path}: give names or put a labels.json beside it.")
    vol = read_volume(path)
    lut, kidneys = tissue_lut(names)
    return Body(vol.with_array(np.asarray(vol.array).astype(np.uint8)), lut, kidneys, path.parent.name, names)


# Organ-only label maps: id -> TotalSegmentator v2 name.
ORGAN_SCHEMES = {
    "btcv": {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
             7: "aorta", 8: "pancreas"},
    "amos": {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "esophagus", 6: "liver",
             7: "stomach", 8: "aorta", 9: "inferior_vena_cava", 10: "pancreas", 11: "adrenal_gland_right",
             12: "adrenal_gland_left", 13: "duodenum", 14: "urinary_bladder", 15: "prostate"},
}
_ALIGN_ON = ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "aorta", "gallbladder", "pancreas")


def _centroids(vol: Volume, ids_by_name: dict[str, int]) -> dict[str, np.ndarray]:
    out = {}
    arr = vol.array
    for name, i in ids_by_name.items():
        zyx = np.argwhere(arr == i)
        if len(zyx) > 50:
            out[name] = vol.index_to_physical(zyx.mean(0)[::-1])
    return out


def _axis_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, float]:
    """dst = s * src + t by least squares, the scale kept within a plausible body-size change."""
    if len(src) < 2 or np.ptp(src) < 30.0:
        return 1.0, float(np.mean(dst - src))
    s, t = np.polyfit(src, dst, 1)
    s = float(np.clip(s, 0.75, 1.33))
    return s, float(np.mean(dst - s * src))


def complete_organ_map(organs: Volume, scheme: str, donor: Body, spacing_mm=(2.0, 2.0, 2.0), name: str = "") -> Body:
    """An organ-only map (``scheme``: ``btcv`` or ``amos``) completed with ``donor``'s other structures,
    on a canonical grid at ``spacing_mm`` covering the organ map. Ids are TotalSegmentator's."""
    from ..resampling import to_canonical

    table = ORGAN_SCHEMES[scheme]
    ts_ids = {v: k for k, v in donor.names.items()}
    canon = to_canonical(organs.with_array(np.asarray(organs.array).astype(np.uint8)), spacing_mm, "nearest", 0)
    src = np.asarray(canon.array).astype(np.uint8)
    lut = np.zeros(256, np.uint8)
    for i, n in table.items():
        lut[i] = ts_ids.get(n, 0)  # a class the donor's names lack stays unlabelled
    own = lut[src]
    own_vol = canon.with_array(own)
    names_in = {n: ts_ids[n] for n in _ALIGN_ON if n in ts_ids}
    a = _centroids(own_vol, names_in)
    b = _centroids(donor.labels, names_in)
    common = sorted(set(a) & set(b))
    fit = [_axis_fit(np.array([b[n][ax] for n in common]), np.array([a[n][ax] for n in common])) for ax in range(3)]
    # every output voxel -> the donor point it comes from
    nz, ny, nx = own.shape
    pts = [canon.origin[ax] + canon.spacing[ax] * np.arange(n) for ax, n in enumerate((nx, ny, nz))]
    q = [(pts[ax] - fit[ax][1]) / fit[ax][0] for ax in range(3)]
    m = np.linalg.inv(donor.labels.index_to_physical_matrix()[:3, :3])
    rel = [q[0][None, None, :] - donor.labels.origin[0], q[1][None, :, None] - donor.labels.origin[1],
           q[2][:, None, None] - donor.labels.origin[2]]
    ijk = [m[r, 0] * rel[0] + m[r, 1] * rel[1] + m[r, 2] * rel[2] for r in range(3)]
    ijk = [np.broadcast_to(v, own.shape) for v in ijk]
    donor_ids = ndi.map_coordinates(donor.labels.array, [ijk[2], ijk[1], ijk[0]], order=0, mode="constant", cval=0)
    drop = np.isin(donor_ids, [ts_ids[n] for n in set(table.values()) if n in ts_ids])
    donor_ids[drop] = 0  # the donor's own copies of the organs the organ map has
    donor_ids = np.where(ndi.binary_dilation(own > 0, iterations=1), 0, donor_ids)  # organs keep their room
    out = np.where(own > 0, own, donor_ids).astype(np.uint8)
    # the composite is in the donor's (TotalSegmentator) ids, so the donor's tissue table serves it
    return Body(canon.with_array(out), donor.lut, donor.kidney_ids, name or "organs+" + donor.name, donor.names)


def read_organ_body(path: str | Path, scheme: str, donor: Body, spacing_mm=(2.0, 2.0, 2.0)) -> Body:
    """A BTCV/AMOS map completed by ``complete_organ_map``; named after its file."""
    from ..io import read_volume

    path = Path(path)
    stem = path.name.split(".")[0]
    return complete_organ_map(read_volume(path), scheme, donor, spacing_mm, f"{scheme}_{stem}+{donor.name}")
