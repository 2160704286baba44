"""The segment catalogue: name, colour and standard (DICOM/SNOMED CT) terminology per structure.

Each output structure (``kidney_right``, ``kidney_left``, ``tumour_right``, ``tumour_left``) becomes a
Slicer segment carrying a ``TerminologyEntry`` tag. The tag is Slicer's serialisation of a
terminology entry: seven fields separated by ``~``::

    terminology context ~ category ~ type ~ type modifier ~ anatomic context ~ region ~ region modifier

where each coded field is ``SCHEME^value^meaning`` (empty: ``^^``). Kidneys are typed as anatomical
structures with laterality as the type modifier; tumours as neoplasms with the kidney and its side as
the anatomic region, which is how the DICOM master lists that ship with Slicer code them.

Colours: Slicer's kidney colour (185, 102, 83) for both kidneys and the colour of "Tumor" in Slicer's
built-in ``Labels`` colour table for both tumours, so a result looks as Slicer users expect.
"""

from __future__ import annotations

from dataclasses import dataclass

# Terminology contexts shipped with Slicer (module Terminologies).
SEGMENTATION_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

# Tag that marks a segment as written by this extension (value: the structure key).
STRUCTURE_TAG = "KidneyTumorSeg.structure"
# Tag holding a fingerprint of the voxels as written, to notice later edits by the user.
FINGERPRINT_TAG = "KidneyTumorSeg.fingerprint"
# Segment tag name Slicer uses for the serialised terminology entry.
TERMINOLOGY_TAG = "TerminologyEntry"


@dataclass(frozen=True)
class Code:
    """One coded concept (DICOM code sequence item)."""

    scheme: str
    value: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


EMPTY = Code("", "", "")
ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
KIDNEY = Code("SCT", "64033007", "Kidney")
NEOPLASM = Code("SCT", "108369006", "Neoplasm")
RIGHT = Code("SCT", "24028007", "Right")
LEFT = Code("SCT", "7771000", "Left")
SIDE_CODES = {"right": RIGHT, "left": LEFT}

KIDNEY_RGB = (185, 102, 83)  # Slicer's colour for kidney (General Anatomy / DICOM master list)
TUMOUR_RGB = (128, 230, 128)  # "Tumor" in Slicer's built-in "Labels" colour table

STRUCTURE_KEYS = ("kidney_right", "kidney_left", "tumour_right", "tumour_left")
# The patient's sides, in catalogue order (right before left).
SIDES = ("right", "left")
# The label values of every label map this package reads, writes and trains on (the KiTS values):
# 0 background, 1 kidney, 2 tumour.
BACKGROUND_LABEL = 0
KITS_LABEL = {"kidney": 1, "tumour": 2}


def terminology_tag(
    category: Code,
    type_: Code,
    type_modifier: Code = EMPTY,
    region: Code = EMPTY,
    region_modifier: Code = EMPTY,
    context: str = SEGMENTATION_CONTEXT,
    anatomic_context: str = ANATOMIC_CONTEXT,
) -> str:
    """Slicer's serialised terminology entry (the value of a segment's ``TerminologyEntry`` tag)."""
    fields = [context, category, type_, type_modifier, anatomic_context, region, region_modifier]
    return "~".join(str(f) for f in fields)


def parse_terminology_tag(tag: str) -> dict:
    """Split a tag into its seven fields; coded fields become :class:`Code` (``None`` when empty)."""
    parts = tag.split("~")
    if len(parts) != 7:
        raise ValueError(f"a terminology entry has 7 fields separated by '~', got {len(parts)}: {tag!r}")

    def code(text: str) -> Code | None:
        items = text.split("^")
        if len(items) != 3:
            raise ValueError(f"a coded field is SCHEME^value^meaning, got {text!r}")
        return None if not any(items) else Code(*items)

    return {
        "context": parts[0],
        "category": code(parts[1]),
        "type": code(parts[2]),
        "type_modifier": code(parts[3]),
        "anatomic_context": parts[4],
        "region": code(parts[5]),
        "region_modifier": code(parts[6]),
    }


@dataclass(frozen=True)
class Structure:
    """How one output structure appears in Slicer."""

    key: str  # kidney_right, ...
    kind: str  # kidney | tumour
    side: str  # right | left
    name: str  # display name
    rgb: tuple[int, int, int]  # 0-255
    terminology: str  # TerminologyEntry tag

    @property
    def color(self) -> tuple[float, float, float]:
        """Colour as Slicer stores it (0-1 floats)."""
        return tuple(c / 255.0 for c in self.rgb)

    @property
    def label(self) -> int:
        """KiTS label value of this structure's voxels (1 kidney, 2 tumour)."""
        return KITS_LABEL[self.kind]


def _build() -> dict[str, Structure]:
    out = {}
    for side in SIDES:
        side_code = SIDE_CODES[side]
        out[f"kidney_{side}"] = Structure(
            key=f"kidney_{side}",
            kind="kidney",
            side=side,
            name=f"{side.capitalize()} kidney",
            rgb=KIDNEY_RGB,
            terminology=terminology_tag(ANATOMICAL_STRUCTURE, KIDNEY, type_modifier=side_code),
        )
        out[f"tumour_{side}"] = Structure(
            key=f"tumour_{side}",
            kind="tumour",
            side=side,
            name=f"{side.capitalize()} kidney tumor",
            rgb=TUMOUR_RGB,
            terminology=terminology_tag(
                MORPHOLOGICALLY_ALTERED, NEOPLASM, region=KIDNEY, region_modifier=side_code
            ),
        )
    return {k: out[k] for k in STRUCTURE_KEYS}


STRUCTURES: dict[str, Structure] = _build()


def structure(key: str) -> Structure:
    """The catalogue entry for ``key``; unknown keys are a programming error (ValueError)."""
    try:
        return STRUCTURES[key]
    except KeyError:
        raise ValueError(f"unknown structure {key!r}; known: {', '.join(STRUCTURE_KEYS)}") from None


def ordered_keys(keys) -> list[str]:
    """``keys`` in catalogue order (kidneys before tumours, right before left); unknown keys last."""
    keys = list(keys)
    known = [k for k in STRUCTURE_KEYS if k in keys]
    return known + sorted(k for k in keys if k not in STRUCTURES)
