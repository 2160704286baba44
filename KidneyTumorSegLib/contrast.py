"""Contrast phase from the image: is this scan enhanced, and in which phase, judged by its kidneys.

Once the kidneys are found their own HU tell the phase (values of the radiology literature):
unenhanced parenchyma lies near 30-45 HU, any enhanced parenchyma well above 100 HU; in the
corticomedullary (arterial) phase the cortex is far brighter than the medulla; in the nephrographic
(portal-venous) phase the parenchyma is even; in the excretory phase dense contrast fills the
collecting system. A tumour is recognised by how it enhances against the kidney, so on an
unenhanced scan the kidneys can still be found but the tumour result cannot be trusted.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .volume import Volume, mask_box

UNENHANCED, WEAK = "unenhanced", "weakly enhanced or delayed"
ARTERIAL, VENOUS, EXCRETORY = "corticomedullary (arterial)", "nephrographic (portal-venous)", "excretory"
UNENHANCED_BELOW_HU = 75.0  # median parenchyma
ENHANCED_ABOVE_HU = 100.0
CORTICOMEDULLARY_DIFF_HU = 45.0  # cortex minus deep parenchyma
EXCRETED_ABOVE_HU = 400.0  # the brightest 1 % of the kidney and its sinus: contrast in the urine
SINUS_CLOSING_MM = 8.0  # a closing this wide fills the renal sinus and hilum, not the fat and bone around a convex outline
UNRELIABLE_TUMOUR = ("This scan looks unenhanced (kidneys about {hu:.0f} HU): the kidneys are found, but tumour "
                     "results are unreliable without intravenous contrast.")


def contrast_phase(volume: Volume, labels: np.ndarray, min_ml: float = 10.0) -> dict | None:
    """The phase judged from the kidney voxels (``labels == 1``, tumour excluded) of ``volume``'s HU,
    or None when too little kidney was found to judge. Works on the labels' bounding box only."""
    labels = np.asarray(labels)
    # the labels' own box first: a whole-scan comparison allocates as much as the scan (1.3 s of a
    # 512 x 512 x 611 run went to that alone)
    sl = mask_box(labels, [int(np.ceil(6.0 / s)) for s in volume.spacing[::-1]])
    if sl is None or np.count_nonzero(labels[sl] == 1) * volume.voxel_volume_ml < min_ml:
        return None
    # axes of 0.5 mm or finer keep every k-th voxel (k = floor(1 mm / spacing)): the HU medians do not
    # need more, and the distance transform on a 0.5 mm-slice box cost seconds
    step = [max(1, int(1.0 // s)) for s in volume.spacing[::-1]]
    sl = tuple(slice(a.start, a.stop, k) for a, k in zip(sl, step))
    spacing = [s * k for s, k in zip(volume.spacing[::-1], step)]
    hu = np.asarray(volume.array[sl], dtype=np.float32)
    kidney = labels[sl] == 1
    depth = ndimage.distance_transform_edt(kidney, sampling=spacing)
    parenchyma = hu[depth >= 2.0] if (depth >= 2.0).any() else hu[kidney]
    median = float(np.median(parenchyma))
    cortex = hu[(depth >= 1.5) & (depth <= 4.0)]
    deep = hu[depth >= 7.0]
    cortex_hu = float(np.median(cortex)) if cortex.size else 0.0
    diff = cortex_hu - float(np.median(deep)) if cortex.size and deep.size else 0.0
    bright = float(np.percentile(hu[_kidney_and_sinus(kidney, spacing)], 99))
    if diff > CORTICOMEDULLARY_DIFF_HU and cortex_hu >= ENHANCED_ABOVE_HU:
        # only contrast makes an enhanced cortex stand out from the medulla (unenhanced parenchyma is
        # even: -16 to -12 HU on the real non-contrast scan here), so an early arterial scan whose
        # thick medulla pulls the median below the unenhanced limit is still enhanced; the cortex must
        # itself be enhanced, or sinus fat inside a plain kidney's label would pass for contrast
        phase = EXCRETORY if bright > EXCRETED_ABOVE_HU else ARTERIAL
    elif median < UNENHANCED_BELOW_HU:
        phase = UNENHANCED
    elif median < ENHANCED_ABOVE_HU:
        phase = WEAK
    elif bright > EXCRETED_ABOVE_HU:
        phase = EXCRETORY
    else:
        phase = VENOUS
    return {
        "phase": phase,
        "enhanced": phase != UNENHANCED,
        "kidney_median_hu": round(median, 1),
        "cortex_minus_inner_hu": round(diff, 1),
        "brightest_1pct_hu": round(bright, 1),
        "judged_from": "the segmented kidneys' HU",
    }


def _kidney_and_sinus(kidney: np.ndarray, spacing) -> np.ndarray:
    """The kidney with the hollows of its outline filled (a morphological closing of
    SINUS_CLOSING_MM, by distance transforms): the renal sinus and hilum, where excreted contrast
    collects even when a label leaves them out. A dilation would also take in a rib, the spine or an
    iliac bone beside the kidney (a low kidney lies against the pelvis), whose HU passes for urine.
    The closing is taken on a grid of about 2 mm, padded so that it also erodes at the box's faces,
    and only the hollows it fills come back, each fine voxel taking its nearest coarse one: an 8 mm
    closing needs no finer grid, and two distance transforms at the scan's own spacing cost seconds."""
    step = [max(1, int(2.0 // s)) for s in spacing]
    coarse = kidney[tuple(slice(None, None, k) for k in step)]
    sampling = [s * k for s, k in zip(spacing, step)]
    pad = [int(np.ceil(SINUS_CLOSING_MM / s)) + 1 for s in sampling]
    padded = np.pad(coarse, [(p, p) for p in pad])
    grown = ndimage.distance_transform_edt(~padded, sampling=sampling) <= SINUS_CLOSING_MM
    closed = ndimage.distance_transform_edt(grown, sampling=sampling) > SINUS_CLOSING_MM
    hollows = (closed & ~padded)[tuple(slice(p, p + m) for p, m in zip(pad, coarse.shape))]
    nearest = np.ix_(*[np.minimum(np.round(np.arange(n) / k).astype(int), m - 1)
                       for n, k, m in zip(kidney.shape, step, coarse.shape)])
    return hollows[nearest] | kidney


def warning_for(contrast: dict | None) -> str | None:
    """The sentence a user must see when tumour results cannot be trusted, or None."""
    if contrast is not None and contrast["phase"] == UNENHANCED:
        return UNRELIABLE_TUMOUR.format(hu=contrast["kidney_median_hu"])
    return None
