"""Slicer segmentation files (``.seg.nrrd``): write the result, read results (or corrections) back.

A ``.seg.nrrd`` is a NRRD label map plus ``SegmentN_*`` header fields that describe each segment
(ID, name, colour, label value, layer, extent, tags including the terminology). Segments that do not
overlap share one 3D layer, each with its own label value; overlapping ones go to further layers,
which makes the file 4D with a leading ``list`` axis (the layout Slicer writes and reads).

The writer is hand-made (header text + gzip) because the 4D layout needs ``kinds: list ...``, which
ITK does not write; the reader uses SimpleITK, which reads every NRRD encoding. Geometry is written
in LPS ("left-posterior-superior"), as Slicer does, straight from the :class:`Volume`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import atomic_output
from .terminology import (
    FINGERPRINT_TAG,
    STRUCTURE_TAG,
    STRUCTURES,
    TERMINOLOGY_TAG,
    ordered_keys,
)
from .volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_NRRD_TYPES = {
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int16): "short",
    np.dtype(np.int32): "int",
}


# --- helpers shared with the MRML bridge --------------------------------------------------------
def pack_layers(masks: list[np.ndarray]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Pack boolean masks into as few label layers as possible without losing overlaps.

    Returns the layers (uint8 arrays, 0 = empty) and, per mask, ``(layer index, label value)``.
    Each mask goes into the first layer where it overlaps nothing already there.
    """
    layers: list[np.ndarray] = []
    counts: list[int] = []
    where: list[tuple[int, int]] = []
    for mask in masks:
        for i, layer in enumerate(layers):
            if counts[i] < 255 and not np.any(layer[mask]):
                break
        else:
            layers.append(np.zeros(mask.shape, np.uint8))
            counts.append(0)
            i = len(layers) - 1
        counts[i] += 1
        layers[i][mask] = counts[i]
        where.append((i, counts[i]))
    return layers, where


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int, int, int] | None:
    """Tight extent ``(i0, i1, j0, j1, k0, k1)`` (inclusive, VTK order) of a (z, y, x) mask."""
    if not mask.any():
        return None
    out = []
    for axis in (2, 1, 0):  # i (x), j (y), k (z)
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        out += [int(idx[0]), int(idx[-1])]
    return tuple(out)


def mask_fingerprint(mask: np.ndarray, offset_ijk=(0, 0, 0)) -> str:
    """A short text that changes when any voxel of the mask changes.

    ``offset_ijk`` is the reference-grid index of ``mask[0, 0, 0]``, so the same voxels give the same
    fingerprint whatever box they are stored in (Slicer crops and pads segment labelmaps freely).
    """
    box = mask_bbox(mask)
    if box is None:
        return "0"
    i0, i1, j0, j1, k0, k1 = box
    crop = np.ascontiguousarray(mask[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1], dtype=bool)
    oi, oj, ok = (int(v) for v in offset_ijk)
    digest = hashlib.sha1(np.packbits(crop).tobytes() + repr(crop.shape).encode()).hexdigest()[:16]
    return f"{int(crop.sum())}@{i0 + oi},{j0 + oj},{k0 + ok}:{digest}"


def ijk_to_ras(volume: Volume) -> np.ndarray:
    """4 x 4 IJK-to-RAS matrix of a volume's grid (Slicer's convention)."""
    m = volume.index_to_physical_matrix()
    m[:3, :] = LPS_TO_RAS @ m[:3, :]
    return m


def reference_geometry_string(volume: Volume) -> str:
    """Slicer's "Reference image geometry" conversion parameter: IJK-to-RAS (row-major) + extent."""
    m = ijk_to_ras(volume)
    nx, ny, nz = volume.size_xyz
    values = [_num(v) for v in m.flatten()] + ["0", str(nx - 1), "0", str(ny - 1), "0", str(nz - 1)]
    return ";".join(values) + ";"


def kits_labels(structures: dict[str, np.ndarray], grid: Volume) -> Volume:
    """KiTS label map (0 background, 1 kidney, 2 tumour) on ``grid`` from per-structure masks.

    Only this extension's structure keys count; tumour wins where masks overlap.
    """
    labels = np.zeros(grid.array.shape, np.uint8)
    for key in sorted((k for k in structures if k in STRUCTURES), key=lambda k: STRUCTURES[k].label):
        labels[structures[key]] = STRUCTURES[key].label
    return grid.with_array(labels)


def _num(v: float) -> str:
    v = float(v)
    if v == 0:
        return "0"  # also turns -0.0 into 0
    return repr(v)


def _vec(v) -> str:
    return "(" + ",".join(_num(x) for x in v) + ")"


# --- writing ------------------------------------------------------------------------------------
def _segment_fields(index: int, seg_id: str, fields: dict) -> list[str]:
    lines = []
    for name in ("Color", "ColorAutoGenerated", "Extent", "ID", "LabelValue", "Layer", "Name",
                 "NameAutoGenerated", "Tags"):
        value = seg_id if name == "ID" else fields[name]
        lines.append(f"Segment{index}_{name}:={value}")
    return lines


def _clean(text: str) -> str:
    """Header values are single lines; tags may not contain the separators '|' or ':' in names."""
    return str(text).replace("\n", " ").replace("\r", " ")


def write_seg_nrrd(
    path: str | os.PathLike,
    structures: dict[str, np.ndarray],
    reference: Volume,
    compresslevel: int = 1,
) -> Path:
    """Write ``structures`` (key -> bool mask (z, y, x) on ``reference``'s grid) as a Slicer file.

    Keys from the catalogue (``kidney_right``, ...) get their names, colours and terminology; other
    keys are written as plain segments named after the key. Empty masks are skipped; with nothing
    left the file holds an empty segmentation on the reference grid. Written atomically.
    """
    path = Path(path)
    shape = reference.array.shape
    items = []
    for key in ordered_keys(structures):
        mask = np.asarray(structures[key])
        if mask.shape != shape:
            raise ValueError(f"structure {key!r} has shape {mask.shape}, the reference grid is {shape}")
        mask = mask.astype(bool, copy=False)
        if mask.any():
            items.append((key, mask))
    layers, where = pack_layers([m for _, m in items])
    if not layers:
        layers = [np.zeros(shape, np.uint8)]

    m = reference.index_to_physical_matrix()
    nx, ny, nz = reference.size_xyz
    dirs = " ".join(_vec(m[:3, c]) for c in range(3))
    header = ["NRRD0004", "# Complete NRRD file format specification at:",
              "# http://teem.sourceforge.net/nrrd/format.html", "type: unsigned char"]
    if len(layers) == 1:
        header += ["dimension: 3", "space: left-posterior-superior", f"sizes: {nx} {ny} {nz}",
                   f"space directions: {dirs}", "kinds: domain domain domain"]
    else:
        header += ["dimension: 4", "space: left-posterior-superior",
                   f"sizes: {len(layers)} {nx} {ny} {nz}", f"space directions: none {dirs}",
                   "kinds: list domain domain domain"]
    header += ["encoding: gzip", f"space origin: {_vec(m[:3, 3])}"]

    for index, ((key, mask), (layer, label)) in enumerate(zip(items, where)):
        entry = STRUCTURES.get(key)
        name = entry.name if entry else key
        color = entry.color if entry else (0.5, 0.5, 0.5)
        tags = {STRUCTURE_TAG: key, FINGERPRINT_TAG: mask_fingerprint(mask)} if entry else {}
        if entry:
            tags[TERMINOLOGY_TAG] = entry.terminology
        fields = {
            "Color": " ".join(f"{c:.6g}" for c in color),
            "ColorAutoGenerated": "0" if entry else "1",
            "Extent": " ".join(str(v) for v in mask_bbox(mask)),
            "LabelValue": str(label),
            "Layer": str(layer),
            "Name": _clean(name),
            "NameAutoGenerated": "0" if entry else "1",
            "Tags": "".join(f"{_clean(k)}:{_clean(v)}|" for k, v in sorted(tags.items())),
        }
        header += _segment_fields(index, _clean(key), fields)

    header += [
        "Segmentation_ContainedRepresentationNames:=Binary labelmap|",
        "Segmentation_ConversionParameters:=Reference image geometry|"
        + reference_geometry_string(reference)
        + "|Image geometry description string determining the geometry of the labelmap that is"
        " created in course of conversion.&",
        "Segmentation_MasterRepresentation:=Binary labelmap",
        "Segmentation_ReferenceImageExtentOffset:=0 0 0",
    ]
    data = layers[0] if len(layers) == 1 else np.stack(layers, axis=-1)  # list axis fastest
    with atomic_output(path, suffix=".seg.nrrd") as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(header) + "\n\n").encode("utf-8"))
            # No file name and no time in the gzip header: the same result gives the same bytes.
            with gzip.GzipFile(filename="", fileobj=f, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
                gz.write(np.ascontiguousarray(data).tobytes())
    return path


# --- reading ------------------------------------------------------------------------------------
def _parse_tags(text: str) -> dict[str, str]:
    tags = {}
    for item in text.split("|"):
        if not item:
            continue
        name, _, value = item.partition(":")
        tags[name] = value
    return tags


def _segments_from_metadata(meta: dict[str, str]) -> list[dict]:
    segments = []
    i = 0
    while f"Segment{i}_ID" in meta:
        def get(field, default="", i=i):
            return meta.get(f"Segment{i}_{field}", default)

        color = [float(c) for c in get("Color", "0.5 0.5 0.5").split()]
        segments.append({
            "id": get("ID"),
            "name": get("Name") or get("ID"),
            "color": tuple(color[:3]),
            "label": int(get("LabelValue", "1") or 1),
            "layer": int(get("Layer", "0") or 0),
            "tags": _parse_tags(get("Tags")),
        })
        i += 1
    return segments


def _reference_grid(meta: dict[str, str]) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """IJK-to-LPS matrix and extent of the "Reference image geometry" conversion parameter."""
    text = meta.get("Segmentation_ConversionParameters", "")
    for param in text.split("&"):
        parts = param.split("|")
        if len(parts) >= 2 and parts[0] == "Reference image geometry":
            values = [v for v in parts[1].split(";") if v != ""]
            if len(values) != 22:
                return None
            try:
                m = np.array([float(v) for v in values[:16]]).reshape(4, 4)
                extent = tuple(int(round(float(v))) for v in values[16:])
            except ValueError:
                return None
            m[:3, :] = LPS_TO_RAS @ m[:3, :]
            return m, extent
    return None


def _volume_from_matrix(m: np.ndarray, extent, array: np.ndarray) -> Volume:
    cols = m[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    origin = m[:3, :3] @ np.array([extent[0], extent[2], extent[4]], float) + m[:3, 3]
    return Volume(array, tuple(spacing), tuple(origin), cols / spacing)


def read_seg_nrrd(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Volume]:
    """Masks of every segment of a ``.seg.nrrd``, and the grid they lie on.

    Keys: the structure key for segments this extension wrote (``kidney_right``, ...), else the
    segment name (made unique with the segment ID when names repeat). Files Slicer cropped to the
    segments' extent are put back onto the reference image grid stored in the file, so corrected
    segmentations line up voxel for voxel with the CT they were made on. The returned Volume holds
    the KiTS label map (0/1/2) of this extension's structures on that grid (see :func:`kits_labels`).
    """
    segments, grid = read_seg_nrrd_segments(path)
    masks = {seg["key"]: seg["mask"] for seg in segments}
    return masks, kits_labels(masks, grid)


def read_seg_nrrd_segments(path: str | os.PathLike) -> tuple[list[dict], Volume]:
    """Every segment of a ``.seg.nrrd`` with its header fields, and the grid the masks lie on.

    Each segment: ``id``, ``name``, ``color``, ``label``, ``layer``, ``tags`` (terminology included),
    ``key`` (as :func:`read_seg_nrrd` names it) and ``mask`` (bool, on the returned grid). For
    readers that map segments by their terminology rather than by name.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"The segmentation file {path} does not exist.")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"The file {path} could not be read as a NRRD segmentation.") from None
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    voxels = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 4:  # written as 4D domain axes (rare): the last axis is the layer
        voxels = np.moveaxis(voxels, 0, -1)
        image = image[:, :, :, 0]
    if voxels.ndim == 3:
        voxels = voxels[..., None]
    if voxels.ndim != 4:
        raise InputError(f"The segmentation {path} is not a 3D label map.")
    file_grid = Volume(
        np.zeros(voxels.shape[:3], np.uint8), image.GetSpacing()[:3], image.GetOrigin()[:3],
        np.array(image.GetDirection()).reshape(image.GetDimension(), -1)[:3, :3],
    )

    # Put a cropped file back onto its reference grid when the two agree.
    grid, offset = file_grid, np.zeros(3, int)
    ref = _reference_grid(meta)
    if ref is not None:
        m, extent = ref
        file_offset = np.array(
            [int(v) for v in meta.get("Segmentation_ReferenceImageExtentOffset", "0 0 0").split()], int
        )
        ref_shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
        candidate = _volume_from_matrix(m, extent, np.zeros(ref_shape, np.uint8))
        start = file_offset - np.array(extent[0::2])
        end = start + np.array(file_grid.size_xyz)
        expected_origin = candidate.index_to_physical(start.astype(float))
        fits = bool(np.all(start >= 0) and np.all(end <= np.array(candidate.size_xyz)))
        agrees = (
            np.allclose(candidate.spacing, file_grid.spacing, atol=1e-4)
            and np.allclose(candidate.direction, file_grid.direction, atol=1e-4)
            and np.allclose(expected_origin, file_grid.origin, atol=1e-3)
        )
        if fits and agrees and min(ref_shape) > 0:
            grid, offset = candidate, start

    segments = _segments_from_metadata(meta)
    names = [s["name"] for s in segments]
    for seg in segments:
        key = seg["tags"].get(STRUCTURE_TAG) or seg["name"]
        if key == seg["name"] and names.count(key) > 1:
            key = f"{seg['name']} ({seg['id']})"
        if not 0 <= seg["layer"] < voxels.shape[3]:
            raise InputError(f"The segmentation {path} names layer {seg['layer']}, which it does not hold.")
        local = voxels[..., seg["layer"]] == seg["label"]
        if grid is file_grid:
            mask = local
        else:
            mask = np.zeros(grid.array.shape, bool)
            (i0, j0, k0), (nx, ny, nz) = offset, file_grid.size_xyz
            mask[k0 : k0 + nz, j0 : j0 + ny, i0 : i0 + nx] = local
        seg["key"], seg["mask"] = key, mask
    return segments, grid
