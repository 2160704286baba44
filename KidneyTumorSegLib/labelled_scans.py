"""Real CT scans with label maps in any labelling scheme: finding the pairs, mapping their labels.

Evaluation and training on real scans both need "this scan, and where its kidneys (and tumours)
are" whatever the label map's ids: TotalSegmentator (2 right kidney, 3 left kidney), 3D-IRCADb
(1 right, 2 left), KiTS (1 kidney, 2 tumour, 3 cyst), or a user's own. A ``LabelMapping`` says which
ids are kidney and which tumour; a folder of cases is found in one of two layouts:

- ``CASE/ct.nii.gz`` (+ ``CASE/labels.nii.gz``; a case without labels is usable for kidney-free
  checks only), as in ``../shared/data/real_ct``;
- the KiTS layout, ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_NAMES = ("ct.nii.gz", "imaging.nii.gz", "ct.nrrd", "ct.mha")
LABEL_NAMES = ("labels.nii.gz", "segmentation.nii.gz", "labels.nrrd", "labels.mha")


@dataclass(frozen=True)
class LabelMapping:
    """Label-map ids that mean kidney and tumour (cysts go with the kidney unless listed as tumour)."""

    kidney: tuple[int, ...]
    tumour: tuple[int, ...] = ()

    PRESETS = {}  # filled below

    @classmethod
    def parse(cls, text: str) -> LabelMapping:
        """``totalseg``, ``ircadb``, ``kits`` or ``kidney=2,3[;tumour=4]``; one clear error otherwise."""
        text = (text or "").strip()
        if text in cls.PRESETS:
            return cls.PRESETS[text]
        parts = {}
        for item in text.replace(" ", "").split(";"):
            key, sep, values = item.partition("=")
            if not sep or key not in ("kidney", "tumour", "tumor"):
                raise InputError(f"The label mapping {text!r} is not understood; use a preset "
                                 f"({', '.join(sorted(cls.PRESETS))}) or 'kidney=2,3;tumour=4'.")
            try:
                parts["tumour" if key == "tumor" else key] = tuple(int(v) for v in values.split(",") if v)
            except ValueError:
                raise InputError(f"The label mapping {text!r} holds a value that is not an integer id.") from None
        if not parts.get("kidney"):
            raise InputError(f"The label mapping {text!r} names no kidney id.")
        return cls(parts["kidney"], parts.get("tumour", ()))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """0 background, 1 kidney, 2 tumour (uint8)."""
        out = np.zeros(array.shape, np.uint8)
        out[np.isin(array, self.kidney)] = 1
        if self.tumour:
            out[np.isin(array, self.tumour)] = 2
        return out


LabelMapping.PRESETS.update({
    "totalseg": LabelMapping((2, 3, 23, 24)),  # kidneys and their cysts
    "ircadb": LabelMapping((1, 2)),
    "kits": LabelMapping((1, 3), (2,)),
})


def label_names(case_dir: Path) -> dict[int, str]:
    """A case's ``labels.json`` as id -> name, names lower-cased without spaces ('Right Kidney' ->
    'rightkidney'); empty without the file."""
    import json

    names = case_dir / "labels.json"
    if not names.exists():
        return {}
    return {int(k): v.lower().replace(" ", "") for k, v in json.loads(names.read_text()).items()}


def named_kidney_ids(case_dir: Path) -> tuple[int, ...]:
    """The ids a case's ``labels.json`` names as kidney ('rightkidney', 'kidney_left', ...); empty
    when it names none or there is no such file."""
    return tuple(i for i, v in label_names(case_dir).items() if "kidney" in v)


def guess_mapping(case_dir: Path) -> LabelMapping:
    """The mapping a case's own ``labels.json`` implies (names such as 'rightkidney' or
    'kidney_left'); the KiTS mapping for a KiTS-layout case."""
    names = case_dir / "labels.json"
    kid = named_kidney_ids(case_dir)
    if kid:
        return LabelMapping(kid)
    if (case_dir / "imaging.nii.gz").exists():
        return LabelMapping.PRESETS["kits"]
    if names.exists() or (case_dir.parent / "classes.json").exists():
        return LabelMapping.PRESETS["totalseg"]
    return LabelMapping.PRESETS["kits"]


@dataclass
class LabelledScan:
    """One real scan: its image, its label map (or None) and which slices are known kidney-free."""

    name: str
    image: Path
    labels: Path | None
    mapping: LabelMapping | None
    kidney_free_slices: tuple[int, int] | None = None  # [k0, k1) of the image, checked by a person
    notes: dict = field(default_factory=dict)

    def load(self):
        """(ct Volume, 0/1/2 labels Volume or None)."""
        ct, lab = self.load_raw()
        return ct, None if lab is None else lab.with_array(self.mapping.apply(np.asarray(lab.array)))

    def load_raw(self):
        """(ct Volume, the label map with its own ids, or None): for counts beyond the kidneys."""
        from .io import read_volume

        ct = read_volume(self.image)
        if self.labels is None:
            return ct, None
        lab = read_volume(self.labels)
        if not ct.same_grid(lab):
            raise InputError(f"The image and label map of {self.name} lie on different grids.")
        return ct, lab

    def organ_ids(self, organs=("liver", "spleen")) -> dict[str, int]:
        """The label ids of the named organs the case's ``labels.json`` lists (exact names, any
        case), for counting kidney predicted inside them; empty without labels or names."""
        if self.labels is None:
            return {}
        ids = {v: i for i, v in label_names(self.labels.parent).items()}
        return {o: ids[o] for o in organs if o in ids}


def _first(folder: Path, names) -> Path | None:
    return next((folder / n for n in names if (folder / n).exists()), None)


def find_scans(folder, mapping: LabelMapping | None = None, names=None) -> list[LabelledScan]:
    """Every case folder under ``folder`` holding a CT (``IMAGE_NAMES``), with its labels if any."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of scans.")
    scans = []
    for case in sorted(p for p in folder.iterdir() if p.is_dir()):
        if names is not None and case.name not in names:
            continue
        image = _first(case, IMAGE_NAMES)
        if image is None:
            continue
        labels = _first(case, LABEL_NAMES)
        scans.append(LabelledScan(case.name, image, labels,
                                  (mapping or guess_mapping(case)) if labels is not None else None))
    if not scans:
        raise InputError(f"{folder} holds no case folder with a CT ({' or '.join(IMAGE_NAMES[:2])}).")
    return scans


def parse_kidney_free(specs) -> dict[str, tuple[int, int] | None]:
    """``CASE`` (the whole scan is kidney-free) or ``CASE:K0-K1`` (those slices, K1 included)."""
    out = {}
    for spec in specs or ():
        name, _, rng = spec.partition(":")
        if not rng:
            out[name] = None
            continue
        try:
            a, b = (int(v) for v in rng.split("-"))
        except ValueError:
            raise InputError(f"The kidney-free region {spec!r} is not CASE or CASE:K0-K1.") from None
        out[name] = (a, b + 1)
    return out
