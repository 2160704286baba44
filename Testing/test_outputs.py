"""Report text and snapshot picture: what a surgeon reads and sees."""

from __future__ import annotations

import numpy as np
from PIL import Image

from KidneyTumorSegLib.report import summary_text
from KidneyTumorSegLib.snapshot import KIDNEY_RGB, TUMOUR_RGB, write_snapshot
from KidneyTumorSegLib.volume import Volume


def test_summary_names_sides_volumes_and_diameter():
    report = {
        "sides": {
            "left": {"kidney_ml": 140.0, "kidney_with_tumour_ml": 180.5, "tumour_ml": 40.5,
                     "tumour_diameter_mm": 52.3, "tumour_count": 1},
            "right": {"kidney_ml": 150.0, "kidney_with_tumour_ml": 150.0, "tumour_ml": 0.0,
                      "tumour_diameter_mm": 0.0, "tumour_count": 0},
        },
        "warnings": [],
        "timings_s": {"segmenter": 2.0, "total": 3.0},
        "device": "cpu",
    }
    text = summary_text(report)
    assert "Right kidney: 150.0 mL; no tumour" in text
    assert "Left kidney: 180.5 mL; tumour: 40.5 mL, largest diameter 52 mm" in text
    assert "Time: 3.0 s" in text
    assert summary_text({"sides": {}, "warnings": ["No kidney was found in this scan; the result is empty."]})\
        .startswith("No kidney found.")


def test_snapshot_outlines_the_tumour_on_the_patients_side(tmp_path):
    shape = (40, 100, 100)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ct = np.where((yy - 50) ** 2 + (xx - 50) ** 2 < 45**2, 40.0, -1000.0).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    # Kidney and tumour at high i = patient's LEFT (LPS +x): radiological display puts it on the right.
    kidney = (zz - 20) ** 2 + (yy - 55) ** 2 + (xx - 75) ** 2 < 12**2
    labels[kidney] = 1
    labels[kidney & ((zz - 20) ** 2 + (yy - 55) ** 2 + (xx - 80) ** 2 < 6**2)] = 2
    grid = dict(spacing=(1.0, 1.0, 2.0))
    path = write_snapshot(Volume(ct, **grid), Volume(labels, **grid), tmp_path / "s.png", title="t")
    img = np.asarray(Image.open(path).convert("RGB"))
    header = 22
    axial = img[header:, : img.shape[1] // 2]
    tumour_px = np.argwhere(np.all(axial == TUMOUR_RGB, axis=-1))
    kidney_px = np.argwhere(np.all(axial == KIDNEY_RGB, axis=-1))
    assert len(tumour_px) > 10 and len(kidney_px) > 10
    assert tumour_px[:, 1].mean() > axial.shape[1] * 0.6  # image right = patient's left
    assert not list(tmp_path.glob(".*"))
