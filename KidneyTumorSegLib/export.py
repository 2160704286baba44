"""Corrected segmentations become training cases in the KiTS layout.

An annotator's corrected result is written as ``case_XXXXX/imaging.nii.gz`` (the CT as segmented)
and ``segmentation.nii.gz`` (0 background, 1 kidney, 2 tumour on exactly the CT's grid), the
layout ``train --data`` reads. Segments map to labels by their standard terminology, not by name,
so a renamed segment still maps and a segment of anything else is refused in one sentence rather
than guessed. Cases are numbered after the highest one already in the folder, never overwrite one,
appear whole or not at all, and record where they came from in ``provenance.json``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError
from .kits import case_folder_name as kits_folder_name
from .kits import write_case_files
from .terminology import (
    KIDNEY,
    KITS_LABEL,
    NEOPLASM,
    STRUCTURE_TAG,
    STRUCTURES,
    TERMINOLOGY_TAG,
    parse_terminology_tag,
)
from .volume import Volume

PROVENANCE_FILE = "provenance.json"
MASS_TYPE = ("SCT", "4147007")  # "Mass": the other type Slicer's lists offer for a tumour
_CASE_DIR = re.compile(r"^case_(\d+)$")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportError(InputError):
    """A segmentation cannot become a training case (unmappable segment, case exists, grids apart)."""


# --- segments -> KiTS labels ---------------------------------------------------------------------
def _code(code) -> tuple[str, str] | None:
    return None if code is None else (code.scheme.upper(), code.value)


def label_from_terminology(tag: str | None) -> int | None:
    """KiTS label (1 kidney, 2 tumour) a terminology entry stands for; None when it is neither.

    Only the codes count (scheme and value), not their meanings or the context's name, so a kidney
    picked from any of Slicer's terminology lists maps the same. A neoplasm or mass counts as kidney
    tumour when its anatomic region is the kidney or is not given.
    """
    if not tag:
        return None
    try:
        entry = parse_terminology_tag(tag)
    except ValueError:
        return None
    kind = _code(entry["type"])
    if kind == _code(KIDNEY):
        return KITS_LABEL["kidney"]
    if kind in (_code(NEOPLASM), MASS_TYPE):
        region = _code(entry["region"])
        if region is None or region == _code(KIDNEY):
            return KITS_LABEL["tumour"]
    return None


def _describe_terminology(tag: str | None) -> str:
    try:
        entry = parse_terminology_tag(tag or "")
    except ValueError:
        return "none"
    parts = [entry["type"].meaning if entry["type"] else "", entry["region"].meaning if entry["region"] else ""]
    text = " of ".join(p for p in parts if p)
    return f"'{text}'" if text else "none"


def segment_label(name: str, tags: dict[str, str]) -> tuple[int, str]:
    """(KiTS label, how it was found) of one segment, or ExportError naming the segment.

    The terminology decides; a segment without one that this extension wrote maps by its structure
    key (older files). Anything else is an error, so nothing ends up in the wrong class silently.
    """
    tag = tags.get(TERMINOLOGY_TAG)
    label = label_from_terminology(tag)
    if label is not None:
        return label, "terminology"
    key = tags.get(STRUCTURE_TAG)
    if key in STRUCTURES and not tag:
        return STRUCTURES[key].label, "structure tag"
    raise ExportError(
        f"The segment '{name}' cannot be mapped to a KiTS label: its terminology is "
        f"{_describe_terminology(tag)}, not kidney or kidney tumour, so set its terminology "
        "(double-click its colour in the Segment Editor) or remove the segment before exporting."
    )


def merge_labels(segments: list[tuple[np.ndarray, int]], shape) -> np.ndarray:
    """One uint8 label map from (mask, label) pairs; tumour wins where segments overlap."""
    labels = np.zeros(shape, np.uint8)
    for mask, label in sorted(segments, key=lambda item: item[1]):
        labels[np.asarray(mask, bool)] = label
    return labels


def resample_labels(labels: Volume, reference: Volume) -> Volume:
    """A label map brought onto the reference grid (nearest neighbour, physical space)."""
    if labels.same_grid(reference, tol=1e-4):
        return reference.with_array(np.asarray(labels.array, np.uint8))
    import SimpleITK as sitk

    moved = sitk.Resample(labels.to_sitk(), reference.with_array(np.zeros(reference.array.shape, np.uint8)).to_sitk(),
                          sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return reference.with_array(sitk.GetArrayFromImage(moved).astype(np.uint8))


# --- the case folder -----------------------------------------------------------------------------
def case_folder_name(case_id: str | int) -> str:
    """``12`` -> ``case_00012``; ``case_x`` stays; any other safe name gets the ``case_`` prefix."""
    text = str(case_id).strip()
    if not text.isdigit() and not _CASE_ID.match(text):
        raise ExportError(f"The case ID '{text}' is not a plain name; use digits, letters, '-', '_' or '.'.")
    return kits_folder_name(text)


def next_case_number(out_dir: Path) -> int:
    """One past the highest ``case_NNNNN`` in the folder (0 for an empty or new folder)."""
    highest = -1
    for path in out_dir.iterdir() if out_dir.is_dir() else ():
        match = _CASE_DIR.match(path.name)
        if match and path.is_dir():
            highest = max(highest, int(match.group(1)))
    return highest + 1


def grid_description(volume: Volume) -> dict:
    return {
        "size_xyz": list(volume.size_xyz),
        "spacing_mm": [round(float(v), 6) for v in volume.spacing],
        "origin_lps_mm": [round(float(v), 6) for v in volume.origin],
        "direction": [[round(float(v), 6) for v in row] for row in volume.direction],
    }


def write_training_case(out_dir, ct: Volume, labels: Volume, provenance: dict | None = None,
                        case_id: str | int | None = None) -> Path:
    """Write one case into ``out_dir`` and return its folder; an existing case is never touched.

    The files are written into a hidden folder beside the target and renamed into place at the
    end, so an interrupted export leaves no half-written case that training would read.
    """
    out_dir = Path(out_dir)
    if not ct.same_grid(labels, tol=1e-4) or ct.array.shape != labels.array.shape:
        raise ExportError("The label map does not lie on the CT's grid; nothing was written.")
    values = np.unique(labels.array)
    if not set(values.tolist()) <= {0, 1, 2}:
        raise ExportError(f"The label map holds values {values.tolist()}; a KiTS case holds only 0, 1 and 2.")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"The output {out_dir} is a file, not a folder; choose a folder for the cases.")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ExportError(f"The folder {out_dir} cannot be written; choose another folder for the cases.")

    explicit = case_id is not None
    name = case_folder_name(case_id) if explicit else f"case_{next_case_number(out_dir):05d}"
    counts = {int(v): int(n) for v, n in zip(*np.unique(labels.array, return_counts=True))}
    record = {
        "case": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tool": f"kidney-tumor-seg {__version__}",
        "labels": {"0": "background", "1": "kidney", "2": "kidney tumour"},
        "voxels": {"kidney": counts.get(1, 0), "tumour": counts.get(2, 0)},
        "volume_ml": {"kidney": round(counts.get(1, 0) * ct.voxel_volume_ml, 3),
                      "tumour": round(counts.get(2, 0) * ct.voxel_volume_ml, 3)},
        "grid": grid_description(ct),
        **(provenance or {}),
    }
    staging = out_dir / f".{name}.partial-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        write_case_files(staging, ct, labels)
        for _ in range(1000):  # another export may take a number meanwhile: move on to the next
            target = out_dir / name
            record["case"] = name
            (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
            if not target.exists():
                try:
                    os.rename(staging, target)
                    return target
                except OSError:
                    if not target.exists():
                        raise
            if explicit:
                raise ExportError(
                    f"The case {name} already exists in {out_dir} and was left as it is; choose another "
                    "case ID, or none to number the case automatically."
                )
            name = f"case_{max(next_case_number(out_dir), int(name[5:]) + 1):05d}"
        raise ExportError(f"No free case number was found in {out_dir}.")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# --- from files (the command line) ---------------------------------------------------------------
def export_files(segmentation_path, reference_path, out_dir, case_id=None) -> Path:
    """``.seg.nrrd`` + the CT it was made on -> one KiTS case; returns the case folder."""
    from .io import read_volume
    from .segfile import read_seg_nrrd_segments

    segmentation_path, reference_path = Path(segmentation_path), Path(reference_path)
    if not str(segmentation_path).lower().endswith(".seg.nrrd"):
        raise ExportError(f"The segmentation {segmentation_path} must be a Slicer segmentation file (.seg.nrrd).")
    if not reference_path.exists():
        raise ExportError(f"The reference CT {reference_path} does not exist.")
    segments, grid = read_seg_nrrd_segments(segmentation_path)
    ct = read_volume(reference_path)
    mapped, described = [], []
    for seg in segments:
        label, how = segment_label(seg["name"], seg["tags"])
        mapped.append((seg["mask"], label))
        described.append(_segment_record(seg["name"], label, how, seg["tags"].get(TERMINOLOGY_TAG),
                                         int(seg["mask"].sum())))
    on_file_grid = grid.with_array(merge_labels(mapped, grid.array.shape))
    labels = resample_labels(on_file_grid, ct)
    if on_file_grid.array.any() and not labels.array.any():
        raise ExportError(
            f"The segmentation {segmentation_path.name} does not overlap the reference CT {reference_path.name}; "
            "give the CT it was made on."
        )
    provenance = {
        "source": {"from": "kidney-tumor-seg export", "segmentation": str(segmentation_path.resolve()),
                   "reference": str(reference_path.resolve()),
                   "resampled": not grid.same_grid(ct, tol=1e-4)},
        "segments": described,
    }
    return write_training_case(out_dir, ct, labels, provenance, case_id)


def _segment_record(name: str, label: int, how: str, terminology: str | None, voxels: int, **extra) -> dict:
    return {"name": name, "label": label, "mapped_by": how, "terminology": terminology or "", "voxels": voxels,
            **extra}
