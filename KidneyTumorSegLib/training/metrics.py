"""Dice, the per-epoch metrics table (CSV) and a picture of the training curves (PNG, pillow).

Dice of two empty masks is 1 (nothing to find, nothing found); of an empty truth and a non-empty
prediction, 0.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

COLUMNS = (
    "network",
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_dice_kidney",
    "val_dice_tumour",
    "val_accuracy",
    "seconds",
)


def dice(pred, truth) -> float:
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    denom = int(pred.sum()) + int(truth.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / denom


def dice_from_counts(inter: float, pred_sum: float, truth_sum: float) -> float:
    denom = pred_sum + truth_sum
    return 1.0 if denom == 0 else 2.0 * inter / denom


def segmentation_dice(labels, truth) -> dict:
    """Kidney Dice (labels > 0 against truth > 0) and tumour Dice (labels == 2 against truth == 2)."""
    labels = np.asarray(labels)
    truth = np.asarray(truth)
    return {"kidney": dice(labels > 0, truth > 0), "tumour": dice(labels == 2, truth == 2)}


def _components_off_truth(pred: np.ndarray, truth: np.ndarray, voxel_ml: float) -> dict:
    """The connected components of ``pred`` that touch no ``truth`` voxel, counted and measured (mL)."""
    from scipy import ndimage

    comps, n = ndimage.label(pred)
    if n == 0:
        return {"components": 0, "ml": 0.0}
    touching = np.unique(comps[pred & truth])
    false = np.setdiff1d(np.arange(1, n + 1), touching)
    voxels = int(np.isin(comps, false).sum()) if false.size else 0
    return {"components": int(false.size), "ml": voxels * float(voxel_ml)}


def false_tumour(labels, truth, voxel_ml: float) -> dict:
    """Predicted tumour that is not there: the connected components of ``labels == 2`` touching no
    true tumour voxel, counted and measured (mL). Dice averaged over tumour cases hides these,
    yet a false tumour on a healthy kidney is the error a surgeon minds most."""
    return _components_off_truth(np.asarray(labels) == 2, np.asarray(truth) == 2, voxel_ml)


def false_kidney(labels, truth, voxel_ml: float) -> dict:
    """Predicted kidney (or tumour) where there is no kidney: the connected components of
    ``labels > 0`` touching no true kidney voxel, counted and measured (mL). A spleen or liver
    labelled in an empty renal fossa (a removed, missing or displaced kidney) shows here; Dice over
    the case mixes it with the true kidney's outline."""
    return _components_off_truth(np.asarray(labels) > 0, np.asarray(truth) > 0, voxel_ml)


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """The whole history, rewritten each epoch (a resumed run rewrites it from its checkpoints)."""
    from ..io import atomic_output

    path = Path(path)
    with atomic_output(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    return path


def read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _fmt(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


# --- curves -------------------------------------------------------------------------------------
_SERIES = (
    ("train_loss", (31, 119, 180)),
    ("val_loss", (255, 127, 14)),
    ("val_dice_kidney", (44, 160, 44)),
    ("val_dice_tumour", (214, 39, 40)),
    ("val_accuracy", (148, 103, 189)),
)


def plot_curves(path: str | os.PathLike, rows: list[dict], width: int = 420, height: int = 260) -> Path:
    """One panel per network: losses and validation scores against epoch, on a shared 0..max axis."""
    from PIL import Image, ImageDraw

    from ..io import atomic_output

    networks = list(dict.fromkeys(r["network"] for r in rows)) or ["(no epochs yet)"]
    img = Image.new("RGB", (width * len(networks), height), "white")
    draw = ImageDraw.Draw(img)
    for p, net in enumerate(networks):
        x0 = p * width
        left, right, top, bottom = x0 + 40, x0 + width - 10, 22, height - 58
        draw.text((x0 + 40, 4), net, fill="black")
        draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
        mine = [r for r in rows if r["network"] == net]
        epochs = [_num(r.get("epoch")) for r in mine]
        values = [_num(r.get(k)) for r in mine for k, _ in _SERIES]
        finite = [v for v in values if v is not None]
        vmax = max([1.0] + finite)
        emax = max([1.0] + [e for e in epochs if e is not None])
        draw.text((x0 + 2, top - 6), f"{vmax:.2g}", fill="black")
        draw.text((x0 + 2, bottom - 6), "0", fill="black")
        draw.text((right - 40, bottom + 2), f"ep {int(emax)}", fill="black")

        def xy(e, v, left=left, right=right, top=top, bottom=bottom, emax=emax, vmax=vmax):
            return (left + (right - left) * e / emax, bottom - (bottom - top) * v / vmax)

        legend_y = bottom + 16
        for s, (key, colour) in enumerate(_SERIES):
            pts = [xy(e, _num(r.get(key))) for e, r in zip(epochs, mine) if e is not None and _num(r.get(key)) is not None]
            if not pts:
                continue
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for px, py in pts:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
            lx = x0 + 40 + (s % 3) * 125
            ly = legend_y + (s // 3) * 14
            draw.line([lx, ly + 6, lx + 12, ly + 6], fill=colour, width=2)
            draw.text((lx + 15, ly), key, fill="black")
    path = Path(path)
    with atomic_output(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")
    return path


def _num(value):
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def kidneys_found(pred: np.ndarray, truth: np.ndarray, min_overlap: float = 0.3, min_share: float = 0.05) -> dict:
    """Each true kidney component (largest two) and whether the prediction covers >= ``min_overlap``
    of it, ordered by x (LPS: the patient's right kidney first). A component under ``min_share`` of
    the largest is a fragment (a few voxels cut off where a kidney meets bone), not a second kidney:
    with one kidney, it would otherwise count as a kidney missed."""
    comps, n = ndimage.label(truth)
    if n == 0:
        return {"true_kidneys": 0, "found": 0}
    sizes = ndimage.sum(truth, comps, np.arange(1, n + 1))
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= min_share * sizes.max()]
    cover = [float((pred & (comps == c)).sum()) / float((comps == c).sum()) for c in keep]
    return {"true_kidneys": int(len(keep)), "found": int(sum(c >= min_overlap for c in cover)),
            "coverage": [round(c, 3) for c in cover]}


TUMOUR_SIZE_BINS_ML = (10.0, 40.0)  # small (<= 10 mL: about 27 mm across), medium, large (> 40 mL)


def tumours_found(pred: np.ndarray, truth: np.ndarray, voxel_ml: float, min_overlap: float = 0.3,
                  min_ml: float = 0.5) -> list[dict]:
    """Each true tumour component of at least ``min_ml`` (largest first): its volume and whether the
    predicted tumour covers >= ``min_overlap`` of it. Per lesion, so that a missed small tumour
    beside a well-segmented large one is seen, which a Dice over the case hides."""
    comps, n = ndimage.label(truth)
    if n == 0:
        return []
    ids = np.arange(1, n + 1)
    sizes = ndimage.sum(truth, comps, ids)  # voxels per lesion, in one pass over the grid
    covered = ndimage.sum(pred, comps, ids)
    lesions = []
    for size, hit in zip(sizes, covered):
        ml = float(size) * voxel_ml
        if ml >= min_ml:
            cover = float(hit) / float(size)
            lesions.append({"ml": round(ml, 2), "found": bool(cover >= min_overlap), "coverage": round(cover, 3)})
    return sorted(lesions, key=lambda d: -d["ml"])


def tumours_found_by_size(lesions: list[dict]) -> dict:
    """'k of n' found per size bin (TUMOUR_SIZE_BINS_ML) over a list of :func:`tumours_found` entries."""
    lo, hi = TUMOUR_SIZE_BINS_ML
    bins = {f"<= {lo:g} mL": lambda v: v <= lo, f"{lo:g}-{hi:g} mL": lambda v: lo < v <= hi,
            f"> {hi:g} mL": lambda v: v > hi}
    out = {}
    for name, inside in bins.items():
        chosen = [d for d in lesions if inside(d["ml"])]
        out[name] = f"{sum(d['found'] for d in chosen)} of {len(chosen)}"
    return out
