"""Writing real DICOM studies for tests: one file per slice, written by SimpleITK's GDCM writer.

Each series gets its own Series Instance UID, number, description, image type and orientation, so
a study can hold what scanners export beside the scan itself: localisers, reformats, other phases.
"""

from __future__ import annotations

import contextlib
import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KidneyTumorSegLib.volume import Volume

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
# Slice planes: (direction columns i, j, k in LPS) for an axial, a coronal and a sagittal stack.
PLANES = {
    "axial": np.eye(3),
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),  # rows run inferior, slices anterior->posterior
    "sagittal": np.array([[0, 0, 1.0], [1, 0, 0], [0, -1, 0]]),
}


@contextlib.contextmanager
def _locale_kept():
    """GDCM's writer switches the process's locale to "C" (ASCII text files afterwards): undo it."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_series(folder: Path, array: np.ndarray, uid: str, number: int, description: str,
                 spacing=(1.5, 1.5, 3.0), origin=(-60.0, -60.0, 100.0), plane: str = "axial",
                 image_type: str = "ORIGINAL\\PRIMARY\\AXIAL", modality: str = "CT", body_part: str = "ABDOMEN",
                 prefix: str = "IM") -> Volume:
    """Write ``array`` (z, y, x) as a DICOM series, one file per slice; returns the volume written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(array, np.int16))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    direction = PLANES[plane]
    image.SetDirection(direction.flatten().tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    iop = "\\".join(f"{v:g}" for v in (*direction[:, 0], *direction[:, 1]))
    with _locale_kept():
        _write_slices(folder, image, writer, iop, uid, number, description, spacing, image_type, modality,
                      body_part, prefix)
    return Volume(np.asarray(array), spacing, origin, direction)


def _write_slices(folder, image, writer, iop, uid, number, description, spacing, image_type, modality, body_part,
                  prefix):
    for k in range(image.GetDepth()):
        piece = image[:, :, k : k + 1]
        ipp = piece.GetOrigin()
        tags = {
            "0008|0060": modality, "0008|0008": image_type, "0008|103e": description,
            "0020|000d": STUDY_UID, "0020|000e": uid, "0020|0011": str(number), "0020|0013": str(k + 1),
            "0008|0018": f"{uid}.{k + 1}", "0018|0015": body_part, "0018|0050": f"{spacing[2]:g}",
            "0020|0032": "\\".join(f"{v:g}" for v in ipp), "0020|0037": iop,
            "0028|1052": "0", "0028|1053": "1", "0010|0010": "Phantom^Test", "0010|0020": "TEST",
        }
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{k + 1:04d}.dcm"))
        writer.Execute(piece)


def body(shape=(24, 64, 72), offset: float = 0.0) -> np.ndarray:
    """An elliptical soft-tissue body in air (HU), distinct per ``offset`` so series can be told apart."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    inside = ((yy - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((xx - shape[2] / 2) / (shape[2] * 0.45)) ** 2 <= 1
    return np.where(inside, 40.0 + offset + 30.0 * np.sin(xx / 3.0) * np.cos(yy / 5.0), -1000.0).astype(np.int16)


def abdominal_study(root: Path, nested: bool = False) -> dict[str, dict]:
    """A study as a scanner exports it: a 2-image localiser, an arterial and a venous axial phase,
    and a coronal reformat with more images than either phase. With ``nested``, each series lies
    in its own subfolder (as PACS exports do). Returns, per series name, its uid, number and shape.
    """
    series = {
        "localiser": dict(uid="1.2.826.0.1.3680043.8.498.10", number=1, description="Topogram 0.6 T20f",
                          image_type="ORIGINAL\\PRIMARY\\LOCALIZER", array=body((2, 64, 72)), plane="coronal",
                          spacing=(1.0, 1.0, 100.0)),
        "arterial": dict(uid="1.2.826.0.1.3680043.8.498.20", number=2, description="Arterial 3.0 B30f",
                         array=body((20, 64, 72), 100.0)),
        "venous": dict(uid="1.2.826.0.1.3680043.8.498.30", number=3, description="Venous 3.0 B30f",
                       array=body((22, 64, 72), 60.0)),
        "coronal": dict(uid="1.2.826.0.1.3680043.8.498.40", number=4, description="Venous COR 2.0",
                        image_type="DERIVED\\SECONDARY\\MPR", array=body((40, 60, 72), 60.0), plane="coronal",
                        spacing=(1.5, 1.5, 1.5)),
    }
    out = {}
    for name, s in series.items():
        array = s.pop("array")
        folder = root / f"{s['number']:03d}_{name}" if nested else root
        write_series(folder, array, prefix=f"S{s['number']}_", **s)
        out[name] = {"uid": s["uid"], "number": s["number"], "shape": array.shape, "description": s["description"]}
    return out
