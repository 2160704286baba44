"""DICOM studies: the image series a folder holds (subfolders included), and the one to segment.

A study exported from a scanner or PACS often holds several series: a localiser (scout), arterial
and venous phases, thin and thick reconstructions, coronal and sagittal reformats, dose reports.
GDCM (through SimpleITK's ImageSeriesReader) groups and orders the files; this module describes
each series from its headers and picks the one a user means: an axial, original CT (not a
localiser or a reformat), of the abdomen where the header says so, with the most slices. The
choice and its reason are returned, so that callers can name them; ``series=`` (a Series Instance
UID or a series number) picks one explicitly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

MIN_SLICES = 10  # fewer slices than this is no 3D CT of the abdomen (scouts, key images)
_LOCALISER_WORDS = re.compile(r"scout|topogram|locali[sz]er|surview|scanogram|planning", re.I)
_REFORMAT_WORDS = re.compile(r"\b(mpr|mip|minip|vrt?|reformat\w*|curved)\b", re.I)
_ABDOMEN_WORDS = re.compile(r"abd|kidney|renal|nephro|uro|pelvi|liver", re.I)

TAGS = {
    "uid": "0020|000e",
    "number": "0020|0011",
    "description": "0008|103e",
    "modality": "0008|0060",
    "image_type": "0008|0008",
    "orientation": "0020|0037",
    "position": "0020|0032",
    "pixel_spacing": "0028|0030",
    "body_part": "0018|0015",
}


@dataclass
class Series:
    """One image series as its headers describe it (GDCM's file order: along the slice normal)."""

    uid: str
    files: tuple[str, ...]
    folder: str  # the subfolder holding it, relative to the study folder ("." for the folder itself)
    number: int | None = None
    description: str = ""
    modality: str = ""
    image_type: str = ""
    orientation: str = "unknown"  # axial, coronal, sagittal, oblique or unknown
    spacing_mm: tuple[float, float, float] | None = None  # columns, rows, between slices
    body_part: str = ""

    @property
    def slices(self) -> int:
        return len(self.files)

    @property
    def name(self) -> str:
        """How a person refers to it: ``series 4 "Venous 1.0 B30f"``."""
        number = f"series {self.number}" if self.number is not None else "the series"
        return f'{number} "{self.description}"' if self.description else number

    def concerns(self) -> list[str]:
        """Why this may not be the scan a user means; empty for an axial original CT."""
        out = []
        if self.modality and self.modality.upper() != "CT":
            out.append(f"a {self.modality} series, not CT")
        if self.is_localiser:
            out.append("a localiser")
        elif self.slices < MIN_SLICES:
            out.append(f"only {self.slices} slice{'s' if self.slices != 1 else ''}")
        if self.orientation not in ("axial", "unknown"):
            out.append(f"{self.orientation} slices")
        if self.is_reformat and not self.is_localiser:
            out.append("a reformat")
        return out

    @property
    def is_localiser(self) -> bool:
        return "LOCALIZER" in self.image_type.upper() or bool(_LOCALISER_WORDS.search(self.description))

    @property
    def is_reformat(self) -> bool:
        kinds = set(self.image_type.upper().replace(" ", "").split("\\"))
        return bool(kinds & {"DERIVED", "SECONDARY", "REFORMATTED", "MPR", "MIP", "PROJECTION IMAGE"}) or bool(
            _REFORMAT_WORDS.search(self.description)
        )

    @property
    def is_abdomen(self) -> bool:
        return bool(_ABDOMEN_WORDS.search(f"{self.body_part} {self.description}"))

    def as_dict(self) -> dict:
        return {
            "uid": self.uid, "number": self.number, "description": self.description, "slices": self.slices,
            "modality": self.modality, "orientation": self.orientation, "image_type": self.image_type,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None, "folder": self.folder,
        }


@dataclass
class Choice:
    """The series to segment, why, and every series the folder holds."""

    series: Series
    reason: str
    all: list[Series] = field(default_factory=list)
    explicit: bool = False  # named by the user (--series)

    def as_dict(self) -> dict:
        return {**self.series.as_dict(), "reason": self.reason, "series_in_folder": len(self.all)}


def _tag(reader, key: str) -> str:
    tag = TAGS[key]
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split("\\") if v.strip()]
    except ValueError:
        return []


def _orientation(iop: list[float]) -> str:
    if len(iop) != 6:
        return "unknown"
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if not np.isfinite(norm) or norm < 1e-6:
        return "unknown"
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) / norm < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _header(path: str):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def describe(uid: str, files, folder: str) -> Series:
    """A series from the headers of its first and last file (GDCM has already ordered them)."""
    series = Series(uid=uid, files=tuple(files), folder=folder)
    try:
        first = _header(series.files[0])
    except RuntimeError:
        return series
    number = _tag(first, "number")
    series.number = int(float(number)) if re.fullmatch(r"[+-]?\d+(\.0*)?", number) else None
    series.description = _tag(first, "description")
    series.modality = _tag(first, "modality")
    series.image_type = _tag(first, "image_type")
    series.body_part = _tag(first, "body_part")
    series.orientation = _orientation(_floats(_tag(first, "orientation")))
    pixel = _floats(_tag(first, "pixel_spacing"))  # row spacing (between rows), column spacing
    between = 0.0
    if len(series.files) > 1:
        try:
            a = np.array(_floats(_tag(first, "position")))
            b = np.array(_floats(_tag(_header(series.files[-1]), "position")))
            if a.size == 3 and b.size == 3:
                between = float(np.linalg.norm(b - a)) / (len(series.files) - 1)
        except RuntimeError:
            pass
    if len(pixel) == 2:
        series.spacing_mm = (round(pixel[1], 4), round(pixel[0], 4), round(between, 4))
    return series


def find_series(folder: str | os.PathLike) -> list[Series]:
    """Every image series under ``folder`` (subfolders too), in folder order, then series number.

    A series whose files lie in several subfolders is gathered and ordered by GDCM as one.
    """
    import SimpleITK as sitk

    root = Path(folder)
    reader = sitk.ImageSeriesReader()
    found: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if not filenames:
            continue
        try:
            uids = reader.GetGDCMSeriesIDs(dirpath)
        except RuntimeError:
            continue
        for uid in uids:
            found.setdefault(uid, []).append(dirpath)
    out = []
    for uid, dirs in found.items():
        if len(dirs) == 1:
            base = dirs[0]
            files = reader.GetGDCMSeriesFileNames(base, uid)
        else:
            base = os.path.commonpath(dirs)
            files = reader.GetGDCMSeriesFileNames(base, uid, False, True)
        if files:
            out.append(describe(uid, files, os.path.relpath(base, root)))
    out.sort(key=lambda s: (s.folder, s.number if s.number is not None else 1 << 30, s.uid))
    return out


def _rank(s: Series) -> tuple:
    usable = (not s.modality or s.modality.upper() == "CT") and not s.is_localiser and s.slices >= MIN_SLICES
    return (usable, s.orientation == "axial", not s.is_reformat, s.is_abdomen, s.slices,
            -(s.number if s.number is not None else 1 << 30))


def _why(best: Series, others: list[Series]) -> str:
    what = []
    if best.orientation == "axial":
        what.append("axial")
    what.append("original" if not best.is_reformat else "reformatted")
    what.append("CT" if best.modality.upper() in ("CT", "") else best.modality)
    text = " ".join(what)
    if best.is_abdomen:
        text += " of the abdomen"
    rivals = [s for s in others if _rank(s)[:4] == _rank(best)[:4]]
    if rivals:
        text = f"it is the {text} with the most slices"
    else:
        text = f"it is the only {text} series" if others else "it is the folder's only series"
    if best.concerns():
        text += f", although it is {' and '.join(best.concerns())}"
    passed = [f"{s.name} ({', '.join(s.concerns())})" for s in others if s.concerns()]
    if passed:
        text += "; passed over: " + "; ".join(passed)
    return text


def choose_series(folder: str | os.PathLike, series: str | None = None) -> Choice:
    """The series to segment in ``folder``: ``series`` (a UID or a series number) or the best one.

    Raises :class:`InputError` when the folder holds no image series or ``series`` names none.
    """
    folder = Path(folder)
    found = find_series(folder)
    if not found:
        raise InputError(f"The folder {folder} holds no DICOM image series, neither in it nor in its subfolders.")
    if series is not None and str(series).strip():
        wanted = str(series).strip()
        hits = [s for s in found if s.uid == wanted]
        if not hits and re.fullmatch(r"\d+", wanted):
            hits = [s for s in found if s.number == int(wanted)]
        if not hits:
            numbers = ", ".join(str(s.number) for s in found if s.number is not None) or "none"
            raise InputError(
                f"The folder {folder} holds no series with the number or UID {wanted} (series numbers there: "
                f"{numbers})."
            )
        if len(hits) > 1:
            raise InputError(
                f"The folder {folder} holds {len(hits)} series numbered {wanted}; give the Series Instance UID "
                "of the one to segment."
            )
        return Choice(hits[0], "named by the user", found, explicit=True)
    best = max(found, key=_rank)
    return Choice(best, _why(best, [s for s in found if s is not best]), found)


def format_series_table(choice: Choice, folder) -> str:
    """The folder's series as a table a person reads, the chosen one starred, and why."""
    rows = [("", "number", "slices", "orientation", "spacing (mm)", "type", "description", "folder", "UID")]
    for s in choice.all:
        spacing = " x ".join(f"{v:g}" for v in s.spacing_mm) if s.spacing_mm else "?"
        kind = "localiser" if s.is_localiser else "reformat" if s.is_reformat else "original"
        rows.append(("*" if s is choice.series else "", "" if s.number is None else str(s.number), str(s.slices),
                     s.orientation, spacing, f"{s.modality or '?'} {kind}", s.description or "-", s.folder, s.uid))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [f"{folder} holds {len(choice.all)} image series:"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(f"* {choice.series.name} is the one segment would use: {choice.reason}.")
    return "\n".join(lines)
