"""Evaluation on real CT scans: the full pipeline, as a user runs it, against real label maps.

Per scan: kidney Dice (prediction > 0 against truth kidney, tumour included), tumour Dice where the
truth has a tumour, the 95th-percentile Hausdorff distance and the normalised surface Dice at 2 mm
(MONAI's metrics), whether each true kidney was found, and the kidney volume predicted where there
is none: in a scan known to be kidney-free, in its kidney-free slices (``kidney_free``), and in the
slices of a labelled scan more than ``FREE_MARGIN_MM`` beyond its kidneys. A PNG overlay per scan
(truth green, prediction red, on a coronal and an axial slice) is for a person to look at.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..labelled_scans import LabelledScan
from .evaluate import _stats
from .metrics import dice, false_tumour, kidneys_found
from .real_sources import scan_of

FREE_MARGIN_MM = 10.0
NSD_TOLERANCE_MM = 2.0


def surface_metrics(pred: np.ndarray, truth: np.ndarray, spacing_zyx) -> dict:
    """HD95 (mm) and normalised surface Dice at ``NSD_TOLERANCE_MM`` via MONAI, on the two masks'
    joint bounding box (the distances do not change; the work does). None where a mask is empty."""
    if not pred.any() or not truth.any():
        return {"hd95_mm": None, "nsd_2mm": 0.0 if pred.any() != truth.any() else 1.0}
    try:
        import torch
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    except ImportError:  # the metrics are optional; Dice does not need them
        return {"hd95_mm": None, "nsd_2mm": None, "note": "install monai for surface metrics"}
    both = pred | truth
    nz = [np.nonzero(both.any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)]
    sl = tuple(slice(max(0, int(v[0]) - 3), int(v[-1]) + 4) for v in nz)
    p = torch.from_numpy(np.ascontiguousarray(pred[sl]))[None, None].float()
    t = torch.from_numpy(np.ascontiguousarray(truth[sl]))[None, None].float()
    sp = [float(s) for s in spacing_zyx]
    with warnings.catch_warnings():  # MONAI warns about its own internal arguments
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=sp)
        nsd = compute_surface_dice(p, t, class_thresholds=[NSD_TOLERANCE_MM], include_background=True, spacing=sp)
    return {"hd95_mm": round(float(hd.item()), 2), "nsd_2mm": round(float(nsd.item()), 4)}


def derived_from_any(name: str, scans) -> bool:
    """Whether scan ``name`` is one of ``scans`` or a variant written from one (``scripts/scanner_variants.py``
    names them ``SCAN_VARIANT``): a network that trained on a scan has seen its variants too."""
    return any(name == s or name.startswith(s + "_") for s in scans)


def free_slices(truth: np.ndarray | None, n_slices: int, spacing_z: float, given: tuple | None, whole: bool):
    """Slice indices where no kidney is known to be (see the module docstring), or empty."""
    if whole:
        return np.arange(n_slices)
    out = set()
    if given is not None:
        out.update(range(max(0, given[0]), min(n_slices, given[1])))
    if truth is not None and truth.any():
        ks = np.nonzero(truth.any(axis=(1, 2)))[0]
        m = int(np.ceil(FREE_MARGIN_MM / spacing_z))
        out.update(range(0, max(0, int(ks[0]) - m)))
        out.update(range(min(n_slices, int(ks[-1]) + 1 + m), n_slices))
    return np.array(sorted(out), dtype=int)


def overlay_png(ct: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, spacing_xyz, path: Path) -> None:
    """Coronal and axial slices through the kidneys (or the scan's centre): truth green, prediction red."""
    from PIL import Image

    ref = truth if truth is not None and truth.any() else pred
    centre = (np.argwhere(ref).mean(0).astype(int) if ref.any() else np.array(ct.shape) // 2)
    win = np.clip((ct.astype(np.float32) + 160.0) / 400.0, 0, 1)

    def paint(img2d, p2d, t2d):
        rgb = np.repeat((img2d * 255).astype(np.uint8)[..., None], 3, axis=2)
        for mask, colour in ((t2d, (0, 230, 0)), (p2d, (255, 40, 40))):
            if mask is None:
                continue
            edge = mask & ~ndimage.binary_erosion(mask)
            rgb[edge] = colour
        return rgb

    k, j = int(centre[0]), int(centre[1])
    ax = paint(win[k], pred[k], None if truth is None else truth[k])
    co = paint(win[:, j][::-1], pred[:, j][::-1], None if truth is None else truth[:, j][::-1])
    sx, sy, sz = spacing_xyz
    ax_img = Image.fromarray(ax).resize((max(1, int(ax.shape[1] * sx)), max(1, int(ax.shape[0] * sy))))
    co_img = Image.fromarray(co).resize((max(1, int(co.shape[1] * sx)), max(1, int(co.shape[0] * sz))))
    canvas = Image.new("RGB", (ax_img.width + co_img.width + 8, max(ax_img.height, co_img.height)))
    canvas.paste(ax_img, (0, 0))
    canvas.paste(co_img, (ax_img.width + 8, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def evaluate_scans(weights, scans: list[LabelledScan], kidney_free: dict | None = None, device: str = "auto",
                   overlay_dir=None, progress: Callable[[float, str], None] | None = None, **pipeline_kwargs) -> dict:
    """Run the pipeline on every scan and report the metrics above per scan, and their summary.

    ``kidney_free``: scan name -> None (the whole scan is kidney-free) or (k0, k1) slices.
    """
    from ..pipeline import Pipeline
    from ..weights import Bundle, load_bundle

    progress = progress or (lambda f, m: None)
    kidney_free = dict(kidney_free or {})
    bundle = weights if isinstance(weights, Bundle) else load_bundle(weights)
    pipe = Pipeline.from_weights(bundle, device=device, allow_non_ct=True, **pipeline_kwargs)
    prov = bundle.header.get("provenance", {}) or {}
    split = prov.get("split", {}) or {}
    seen_real = {scan_of(c) for c in split.get("train", []) + split.get("val", [])}
    rows = []
    for i, scan in enumerate(scans):
        progress(i / max(1, len(scans)), f"evaluating {scan.name}")
        t0 = time.perf_counter()
        ct, raw = scan.load_raw()  # the label map is read once: kidneys and tumour, and the organs named below
        result = pipe.run(ct, source=scan.name)
        pred_labels = np.asarray(result.labels.array)
        pred = pred_labels > 0
        truth = None if raw is None else scan.mapping.apply(np.asarray(raw.array))
        true_kidney = None if truth is None else truth > 0
        voxel_ml = ct.voxel_volume_ml
        whole_free = scan.name in kidney_free and kidney_free[scan.name] is None
        free = free_slices(true_kidney, pred.shape[0], ct.spacing[2], kidney_free.get(scan.name), whole_free)
        row = {"case": scan.name, "grid_mm": [round(s, 3) for s in ct.spacing],
               "predicted_kidney_ml": round(float(pred.sum()) * voxel_ml, 1),
               "kidney_free_slices": int(free.size),
               "false_kidney_ml_in_free_slices": round(float(pred[free].sum()) * voxel_ml, 2) if free.size else None,
               "contrast": result.report.get("contrast"),
               "discarded_regions": result.report.get("discarded_regions", []),
               "regions_at_edge": result.report.get("regions_at_edge", []),
               "seen_in_training": derived_from_any(scan.name, seen_real)}
        organs = scan.organ_ids() if raw is not None else {}
        if organs:  # a localiser or segmenter that takes the liver or spleen for kidney shows here
            ids = np.asarray(raw.array)
            row["predicted_in_organs_ml"] = {o: round(float((pred & (ids == i)).sum()) * voxel_ml, 1)
                                             for o, i in organs.items()}
        if truth is not None and true_kidney.any():
            row["kidney_dice"] = round(dice(pred, true_kidney), 4)
            row.update(kidneys_found(pred, true_kidney))
            row.update(surface_metrics(pred, true_kidney, ct.spacing[::-1]))
            if (truth == 2).any():
                row["tumour_dice"] = round(dice(pred_labels == 2, truth == 2), 4)
            ft = false_tumour(pred_labels, truth, voxel_ml)
            row["false_tumour_ml"] = round(ft["ml"], 2)
        else:
            row["predicted_tumour_ml"] = round(float((pred_labels == 2).sum()) * voxel_ml, 2)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        if overlay_dir is not None:
            png = Path(overlay_dir) / f"{scan.name}.png"
            overlay_png(np.asarray(ct.array), pred, true_kidney, ct.spacing, png)
            row["overlay"] = str(png)
        rows.append(row)
    progress(1.0, "evaluation done")
    labelled = [r for r in rows if "kidney_dice" in r]
    return {
        **bundle.identity(),
        "device": str(pipe.device),
        "cases": rows,
        "kidney_dice": _stats([r["kidney_dice"] for r in labelled]),
        "kidneys_found": f"{sum(r['found'] for r in labelled)} of {sum(r['true_kidneys'] for r in labelled)}",
        "false_kidney_ml_in_free_slices": round(sum(r["false_kidney_ml_in_free_slices"] or 0.0 for r in rows), 2),
        "any_seen_in_training": any(r["seen_in_training"] for r in rows),
    }
