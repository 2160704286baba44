"""Report text and snapshot picture: what a surgeon reads and sees."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.pipeline import NO_KIDNEY
from KidneyTumorSegLib.report import summary_text
from KidneyTumorSegLib.snapshot import (
    HEADER,
    KIDNEY_RGB,
    MARKER_RGB,
    TUMOUR_RGB,
    panel_captions,
    write_snapshot,
)
from KidneyTumorSegLib.volume import Volume


def test_summary_names_sides_volumes_and_diameter():
    report = {
        "sides": {
            "left": {"kidney_without_tumour_ml": 140.0, "kidney_with_tumour_ml": 180.5, "tumour_ml": 40.5,
                     "tumour_diameter_mm": 52.3, "tumour_count": 1},
            "right": {"kidney_without_tumour_ml": 150.0, "kidney_with_tumour_ml": 150.0, "tumour_ml": 0.0,
                      "tumour_diameter_mm": 0.0, "tumour_count": 0},
        },
        "warnings": [],
        "timings_s": {"segmenter": 2.0, "total": 3.0},
        "device": "cpu",
    }
    text = summary_text(report)
    assert "Right kidney 150.0 mL, no tumour" in text
    assert ("Left kidney with tumour 180.5 mL = kidney without tumour 140.0 mL + tumour 40.5 mL "
            "(largest diameter 52 mm)") in text
    assert "Time: 3.0 s" in text
    # One vocabulary: a kidney volume is always said with or without its tumour, never plain "kidney volume".
    assert "kidney volume" not in text.lower()
    empty = summary_text({"sides": {}, "warnings": [NO_KIDNEY]})
    assert empty.splitlines()[0] == NO_KIDNEY and empty.count("No kidney") == 1
    assert "Contrast" not in text
    report["contrast"] = {"phase": "unenhanced", "kidney_median_hu": 36.4}
    assert "Contrast: unenhanced (kidneys about 36 HU)" in summary_text(report)


def _left_kidney_scan():
    """A body with a kidney and its tumour on the patient's left (high i = LPS +x), tumour centre at
    voxel (z 20, y 55, x 80) on a 1 x 1 x 2 mm grid: S = 40 mm, A = -55 mm in Slicer's RAS."""
    shape = (40, 100, 100)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ct = np.where((yy - 50) ** 2 + (xx - 50) ** 2 < 45**2, 40.0, -1000.0).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    # Kidney and tumour at high i = patient's LEFT (LPS +x): radiological display puts it on the right.
    kidney = (zz - 20) ** 2 + (yy - 55) ** 2 + (xx - 75) ** 2 < 12**2
    labels[kidney] = 1
    labels[kidney & ((zz - 20) ** 2 + (yy - 55) ** 2 + (xx - 80) ** 2 < 6**2)] = 2
    grid = dict(spacing=(1.0, 1.0, 2.0))
    return Volume(ct, **grid), Volume(labels, **grid)


def test_snapshot_outlines_the_tumour_on_the_patients_side(tmp_path):
    path = write_snapshot(*_left_kidney_scan(), tmp_path / "s.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = np.asarray(Image.open(path).convert("RGB"))
    axial = img[HEADER:, : img.shape[1] // 2]
    tumour_px = np.argwhere(np.all(axial == TUMOUR_RGB, axis=-1))
    kidney_px = np.argwhere(np.all(axial == KIDNEY_RGB, axis=-1))
    assert len(tumour_px) > 10 and len(kidney_px) > 10
    assert tumour_px[:, 1].mean() > axial.shape[1] * 0.6  # image right = patient's left
    assert not list(tmp_path.glob(".*"))


def test_snapshot_marks_orientation_on_the_image_and_names_the_slice_position(tmp_path):
    from scipy import ndimage

    img = np.asarray(Image.open(write_snapshot(*_left_kidney_scan(), tmp_path / "s.png")).convert("RGB"))
    marks = np.all(img == MARKER_RGB, axis=-1)
    blobs, n = ndimage.label(ndimage.binary_dilation(marks, iterations=3))
    centres = [tuple(c) for c in ndimage.center_of_mass(marks, blobs, range(1, n + 1))]
    h, half = img.shape[0], img.shape[1] / 2
    mid = (HEADER + h) / 2
    # Axial panel (left half): R on its left edge, L on its right edge, A at the top, P at the bottom.
    axial = [(y, x) for y, x in centres if x < half]
    assert any(abs(y - mid) < 30 and x < 20 for y, x in axial)  # R
    assert any(abs(y - mid) < 30 and half - 40 < x < half for y, x in axial)  # L
    assert any(y < HEADER + 25 for y, _ in axial) and any(y > h - 25 for y, _ in axial)  # A, P
    assert len(centres) == 8  # four letters per panel, all inside the picture
    # The slice position, in the RAS millimetres Slicer shows, through the tumour's centre.
    from KidneyTumorSegLib.snapshot import _focus_point

    assert panel_captions(_focus_point(_left_kidney_scan()[1])) == ["axial S 40.0 mm", "coronal A -55.0 mm"]


def test_snapshot_format_follows_the_file_name_or_is_refused(tmp_path):
    ct, labels = _left_kidney_scan()
    jpg = write_snapshot(ct, labels, tmp_path / "s.jpg")
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff" and Image.open(jpg).format == "JPEG"
    assert Image.open(write_snapshot(ct, labels, tmp_path / "s.tiff")).format == "TIFF"
    with pytest.raises(InputError, match=r"\.gif must end in one of \.png"):
        write_snapshot(ct, labels, tmp_path / "s.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jpg", "s.tiff"]
