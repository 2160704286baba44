"""The KiTS layout (KiTS19, KiTS21, KiTS23): reading its datasets with the labels mapped to 0 / 1 / 2,
and writing cases in it.

Layouts (one folder per case under ``root``):
- KiTS19: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` (0 bg, 1 kidney, 2 tumour);
- KiTS21: ``case_XXXXX/imaging.nii.gz`` + ``aggregated_MAJ_seg.nii.gz`` (1 kidney, 2 tumour, 3 cyst);
- KiTS23: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` (1 kidney, 2 tumour, 3 cyst).
The cyst label (3) is mapped explicitly (``cyst_as``).  Files are read with SimpleITK, which honours
each file's affine: KiTS19 arrays are stored (z, y, x) with I-P-L orientation codes, and the Volume
carries that direction, so no axis order is ever assumed. The library's other readers and writers
of this layout (batch discovery, training sources, the phantom command, the export) take its file
names and folder naming from here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import read_volume, write_volume
from .terminology import BACKGROUND_LABEL, KITS_LABEL
from .volume import Volume

log = logging.getLogger("KidneyTumorSeg")

LAYOUTS = ("kits19", "kits21", "kits23")
SEG_FILES = {"kits19": "segmentation.nii.gz", "kits21": "aggregated_MAJ_seg.nii.gz", "kits23": "segmentation.nii.gz"}
IMAGE_FILE = "imaging.nii.gz"
CYST_TARGETS = {"kidney": KITS_LABEL["kidney"], "tumour": KITS_LABEL["tumour"], "tumor": KITS_LABEL["tumour"],
                "background": BACKGROUND_LABEL}


class KitsCaseError(InputError):
    """One case of a KiTS dataset cannot be used (missing or unreadable file, grids differ, bad labels)."""


@dataclass
class KitsCase:
    case_id: str
    folder: Path
    image_path: Path | None
    label_path: Path
    layout: str
    dataset: KitsDataset

    def load(self) -> tuple[Volume | None, Volume]:
        return self.dataset.load(self.case_id)


def _seg_file(folder: Path, layout: str) -> tuple[Path, str] | None:
    if layout == "auto":
        for lay in ("kits21", "kits19"):
            p = folder / SEG_FILES[lay]
            if p.exists():
                return p, ("kits23" if lay == "kits19" and (folder / "instances").is_dir() else lay)
        return None
    p = folder / SEG_FILES[layout]
    return (p, layout) if p.exists() else None


class KitsDataset:
    """The cases of a KiTS-layout folder; ``load`` returns (ct or None, labels 0/1/2)."""

    def __init__(self, root: str | os.PathLike, layout: str = "auto", require_images: bool = True,
                 cyst_as: str = "kidney"):
        if layout != "auto" and layout not in LAYOUTS:
            raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
        if cyst_as not in CYST_TARGETS:
            raise ValueError(f"cyst_as must be 'kidney', 'tumour' or 'background', got {cyst_as!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"The KiTS folder {self.root} does not exist.")
        self.layout = layout
        self.require_images = require_images
        self.cyst_as = cyst_as
        self.errors: list[tuple[str, str]] = []
        self._cases: dict[str, KitsCase] = {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("case_")):
            found = _seg_file(folder, layout)
            if found is None:
                continue
            img = folder / IMAGE_FILE
            self._cases[folder.name] = KitsCase(folder.name, folder, img if img.exists() else None,
                                                found[0], found[1], self)
        if not self._cases:
            expected = " or ".join(dict.fromkeys(SEG_FILES.values())) if layout == "auto" else SEG_FILES[layout]
            raise InputError(f"The folder {self.root} holds no KiTS cases (case_*/{expected}).")
        self.case_ids: list[str] = list(self._cases)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, i: int) -> KitsCase:
        return self._cases[self.case_ids[i]]

    def case(self, case_id: str) -> KitsCase:
        if case_id not in self._cases:
            raise KitsCaseError(f"The dataset {self.root} has no case {case_id}.")
        return self._cases[case_id]

    def map_labels(self, arr: np.ndarray, case_id: str = "?") -> np.ndarray:
        """KiTS labels -> 0 background, 1 kidney, 2 tumour (cyst mapped by ``cyst_as``)."""
        if arr.dtype.kind == "f" and np.any(arr != np.rint(arr)):
            raise KitsCaseError(f"The segmentation of {case_id} holds non-integer values.")
        a = arr.astype(np.int64, copy=False)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 3:
            raise KitsCaseError(f"The segmentation of {case_id} holds label {hi if hi > 3 else lo}, "
                                "outside the KiTS labels 0-3.")
        # KiTS stores 0 background, 1 kidney, 2 tumour, 3 cyst
        lut = np.array([BACKGROUND_LABEL, KITS_LABEL["kidney"], KITS_LABEL["tumour"], CYST_TARGETS[self.cyst_as]],
                       np.uint8)
        return lut[a]

    def load(self, case_id: str) -> tuple[Volume | None, Volume]:
        case = self.case(case_id)
        try:
            seg = read_volume(case.label_path)
        except InputError as err:
            raise KitsCaseError(f"The segmentation of {case_id} could not be read ({_reason(err)}).") from None
        labels = seg.with_array(self.map_labels(seg.array, case_id))
        ct = None
        if case.image_path is None or not case.image_path.exists():
            if self.require_images:
                raise KitsCaseError(f"Case {case_id} has no {IMAGE_FILE} beside its segmentation.")
            return None, labels
        try:
            ct = read_volume(case.image_path)
        except InputError as err:
            raise KitsCaseError(f"The image of {case_id} could not be read ({_reason(err)}).") from None
        if ct.array.shape != labels.array.shape:
            raise KitsCaseError(f"The image and segmentation of {case_id} differ in size "
                                f"({ct.size_xyz} vs {labels.size_xyz} voxels).")
        if not ct.same_grid(labels):
            raise KitsCaseError(f"The image and segmentation of {case_id} lie on different grids "
                                "(spacing, origin or direction differ).")
        return ct, labels

    def iter_cases(self, on_error: str = "skip"):
        """Yield (case_id, ct, labels); broken cases are logged and collected in ``errors``
        (``on_error="skip"``) or raised (``"raise"``)."""
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.errors = []
        for cid in self.case_ids:
            try:
                ct, labels = self.load(cid)
            except KitsCaseError as err:
                if on_error == "raise":
                    raise
                self.errors.append((cid, str(err)))
                log.warning("%s", err)
                continue
            yield cid, ct, labels


def _reason(err: Exception) -> str:
    msg = str(err).rstrip(".")
    return msg[0].lower() + msg[1:] if msg else "unknown error"


def split_cases(case_ids, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic case-level split: the same ids, fraction and seed give the same split whatever
    the input order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(set(map(str, case_ids)))
    n_val = int(round(len(ids) * val_fraction))
    if val_fraction > 0 and len(ids) > 1:
        n_val = min(max(n_val, 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def case_folder_name(case_id) -> str:
    """A case's folder in the layout: ``7`` -> ``case_00007``; ``case_x`` stays; ``x`` -> ``case_x``."""
    s = str(case_id)
    if s.startswith("case_"):
        return s
    return f"case_{int(s):05d}" if s.isdigit() else f"case_{s}"


def write_case_files(case_dir: Path, ct: Volume, labels: Volume, layout: str = "kits19") -> None:
    """The image and the segmentation (uint8, name by ``layout``) of one case into ``case_dir``,
    both with the volumes' own geometry, so reading them back gives the same grids."""
    write_volume(ct, case_dir / IMAGE_FILE)
    write_volume(labels.with_array(np.asarray(labels.array).astype(np.uint8)), case_dir / SEG_FILES[layout])


def write_kits_case(folder: str | os.PathLike, case_id: str, ct: Volume, labels: Volume,
                    layout: str = "kits19") -> Path:
    """Write ``case_XXXXX/imaging.nii.gz`` and the segmentation (name by ``layout``) under ``folder``.

    Both files keep the volumes' own geometry, so reading them back gives the same grids.
    """
    if layout not in SEG_FILES:
        raise ValueError(f"layout must be one of {tuple(SEG_FILES)}, got {layout!r}")
    if not ct.same_grid(labels):
        raise ValueError("ct and labels must share one grid (shape, spacing, origin, direction)")
    case = Path(folder) / case_folder_name(case_id)
    case.mkdir(parents=True, exist_ok=True)
    write_case_files(case, ct, labels, layout)
    return case
