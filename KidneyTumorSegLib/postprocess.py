"""Post-processing: from the segmenter's two probability maps to clean kidney/tumour labels.

- a kidney is a connected component of the kidney-with-tumour region that holds real kidney tissue
  of at least ``min_kidney_ml``; everything else (a tumour blob far from any kidney, speckle) goes;
- per side, the region the xy-localiser's kidney mask covers most wins (two networks agreeing), and
  a region the localiser never marked goes, as does one both networks doubt (``weak_*``);
- tumour is kept only inside a kept kidney region (attached to it by construction);
- sides come from each kidney's position relative to the body's midline (LPS: +x is the
  patient's left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .terminology import KITS_LABEL
from .volume import Volume

KIDNEY, TUMOUR = KITS_LABEL["kidney"], KITS_LABEL["tumour"]


@dataclass
class PostprocessConfig:
    kidney_threshold: float = 0.5
    tumour_threshold: float = 0.5
    min_kidney_ml: float = 5.0
    min_tumour_ml: float = 0.05
    max_kidneys: int = 2
    min_confidence: float = 0.0  # a region's mean region probability must reach this (0: no check)
    weak_confidence: float = 0.0  # a region below this mean region probability ...
    weak_support: float = 0.0  # ... and below this share inside the localiser's mask is not kept
    one_per_side: bool = False  # with a midline, one region per side even when only two are found

    @classmethod
    def from_model(cls, config) -> PostprocessConfig:
        """The settings a weights bundle chose (``config``: its ``ModelConfig``): the segmenter's
        thresholds and smallest tumour fragment, and the xy-localiser's smallest kidney."""
        return cls(
            kidney_threshold=config.segmenter.kidney_threshold,
            tumour_threshold=config.segmenter.tumour_threshold,
            min_kidney_ml=config.xy_localiser.min_component_ml,
            min_tumour_ml=config.segmenter.min_tumour_ml,
            min_confidence=config.segmenter.min_region_confidence,
            weak_confidence=config.segmenter.weak_region_confidence,
            weak_support=config.segmenter.weak_region_support,
            one_per_side=config.segmenter.one_region_per_side,
        )


def region_mask(p_region: np.ndarray, p_tumour: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """The kidney-with-tumour region before any component is judged: the region's probability at
    the kidney threshold, or the tumour's at the tumour threshold."""
    return (p_region >= cfg.kidney_threshold) | (p_tumour >= cfg.tumour_threshold)


def labels_from_probabilities(
    p_region: np.ndarray, p_tumour: np.ndarray, voxel_ml: float, cfg: PostprocessConfig | None = None,
    midline_x_index: float | None = None, support: np.ndarray | None = None, exclude: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 labels (0/1/2) from the region and tumour probabilities on one grid.

    With ``midline_x_index`` (the body's midline as an x index of this grid) the best kidney
    region on each side is kept, so a false region on one side cannot evict the other side's
    kidney; without it, the ``max_kidneys`` best regions. A region is ranked by its volume; with
    ``support`` (the xy-localiser's kidney mask on this grid) by the part of it the localiser also
    called kidney, and a region the localiser did not mark at all is dropped. The segmenter's windows
    reach well beyond the kidney boxes, so without this a liver or spleen blob that only the
    segmenter sees, and that is larger than the kidney beside it, takes that side's place.
    ``exclude`` masks regions judged implausible (whole regions, as an earlier call kept them);
    they are never kept, so the next best region takes their side. With ``cfg.min_confidence`` a
    region whose mean region probability falls below it is not kept either, and with
    ``cfg.weak_confidence`` and ``cfg.weak_support`` one below both (the segmenter unsure and the
    localiser's mask holding little of it). ``cfg.one_per_side`` applies the per-side choice to two
    regions as well: two regions on one side are then never both kept."""
    cfg = cfg or PostprocessConfig()
    tumour = p_tumour >= cfg.tumour_threshold
    region = region_mask(p_region, p_tumour, cfg)
    if exclude is not None:
        region &= ~exclude
        tumour &= region
    comps, n = ndimage.label(region)
    if n == 0:
        return np.zeros(region.shape, np.uint8)
    index = np.arange(1, n + 1)
    kidney_ml = ndimage.sum(region & ~tumour, comps, index) * voxel_ml
    rank_ml = ndimage.sum(region if support is None else region & support, comps, index) * voxel_ml
    keep = [i for i in index if kidney_ml[i - 1] >= cfg.min_kidney_ml and rank_ml[i - 1] > 0]
    if cfg.min_confidence > 0 and keep:
        conviction = ndimage.mean(p_region, comps, keep)
        keep = [i for i, c in zip(keep, conviction) if c >= cfg.min_confidence]
    if cfg.weak_confidence > 0 and cfg.weak_support > 0 and keep:
        keep = [i for i in keep if not _doubted(i, p_region, comps, rank_ml, voxel_ml, cfg)]
    keep = sorted(keep, key=lambda i: -rank_ml[i - 1])
    if midline_x_index is not None and cfg.max_kidneys == 2 and len(keep) > (1 if cfg.one_per_side else 2):
        centre_x = ndimage.center_of_mass(region, comps, keep)
        right = [i for i, c in zip(keep, centre_x) if c[2] < midline_x_index][:1]
        left = [i for i, c in zip(keep, centre_x) if c[2] >= midline_x_index][:1]
        keep = right + left
    keep = keep[: cfg.max_kidneys]
    kept = np.isin(comps, keep)
    labels = np.zeros(region.shape, np.uint8)
    labels[kept] = KIDNEY
    tumour &= kept
    if tumour.any() and cfg.min_tumour_ml > 0:
        tcomps, tn = ndimage.label(tumour)
        tsize = ndimage.sum(tumour, tcomps, np.arange(1, tn + 1)) * voxel_ml
        tumour = np.isin(tcomps, [i + 1 for i, s in enumerate(tsize) if s >= cfg.min_tumour_ml])
    labels[tumour] = TUMOUR
    return labels


def _doubted(i: int, p_region: np.ndarray, comps: np.ndarray, rank_ml: np.ndarray, voxel_ml: float,
             cfg: PostprocessConfig) -> bool:
    """Whether both networks doubt region ``i``: the segmenter's mean region probability over it
    under ``cfg.weak_confidence``, and the share of it inside the localiser's mask (``rank_ml`` with
    a support mask) under ``cfg.weak_support``."""
    sl = ndimage.find_objects(comps, max_label=i)[i - 1]
    mask = comps[sl] == i
    share = rank_ml[i - 1] / (float(np.count_nonzero(mask)) * voxel_ml)
    return float(p_region[sl][mask].mean()) < cfg.weak_confidence and share < cfg.weak_support


def body_midline_x(ct: Volume, threshold_hu: float = -500.0) -> float | None:
    """LPS x of the body's midline: the centroid of body voxels (works on any grid)."""
    body = ct.array > threshold_hu
    if not body.any():
        return None
    zyx = np.argwhere(body[:: max(1, body.shape[0] // 16)])  # a few slices suffice
    zyx[:, 0] *= max(1, body.shape[0] // 16)
    centre = zyx.mean(axis=0)[::-1]
    return float(ct.index_to_physical(centre)[0])


def _component_labels(region: np.ndarray):
    """Connected components in the smallest integer type that holds them (uint8 for a few kidneys)."""
    for dtype in (np.uint8, np.uint16, np.int32):
        comps = np.empty(region.shape, dtype)
        try:
            return comps, int(ndimage.label(region, output=comps))
        except RuntimeError:  # more components than the type holds
            continue
    raise AssertionError("unreachable: int32 holds every component count of an int32-indexed array")


def split_sides(labels: Volume, midline_x: float | None = None) -> dict[str, np.ndarray]:
    """Masks per structure and side: ``kidney_right``, ``tumour_left``, ... (non-empty ones only).

    Each connected kidney region (kidney + its tumour) is assigned to the side of the midline its
    centroid lies on; without a midline, the centre of the volume stands in for it. Components are
    labelled in the smallest integer type and each centroid comes from its own bounding box, so the
    working memory stays a few bytes per voxel even on a 512 x 512 x 611 label map.
    """
    arr = labels.array
    region = arr > 0
    out: dict[str, np.ndarray] = {}
    if not region.any():
        return out
    if midline_x is None:
        lo, hi = labels.physical_bounds()
        midline_x = float((lo[0] + hi[0]) / 2.0)
    comps, _ = _component_labels(region)
    del region
    for i, sl in enumerate(ndimage.find_objects(comps), start=1):
        if sl is None:
            continue
        comp = comps[sl] == i
        count = float(np.count_nonzero(comp))
        centre_zyx = []
        for axis in range(3):
            profile = comp.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
            centre_zyx.append(float(np.dot(profile, np.arange(sl[axis].start, sl[axis].stop))) / count)
        x = float(labels.index_to_physical(np.asarray(centre_zyx)[::-1])[0])
        side = "left" if x > midline_x else "right"
        sub = arr[sl]
        for name, value in (("kidney", KIDNEY), ("tumour", TUMOUR)):
            part = comp & (sub == value)
            if part.any():
                key = f"{name}_{side}"
                if key not in out:
                    out[key] = np.zeros(arr.shape, bool)
                out[key][sl] |= part
    return out
