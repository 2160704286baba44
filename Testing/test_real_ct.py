"""The bundled weights on real CT scans no bundle trained on: kidney-free scans stay empty, also as a
thick-slice or coarse-pixel scanner would have shown them. Skipped where ../shared/data is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.weights import bundled_weights_path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_ct"
sys.path.insert(0, str(REPO / "scripts"))

pytestmark = [
    pytest.mark.skipif(not (REAL / "totalseg_s0002" / "ct.nii.gz").exists(), reason="real CTs not available"),
    pytest.mark.skipif(bundled_weights_path() is None, reason="no bundled weights"),
]
MAX_FALSE_ML = 1.0  # what the kidney-free checks allow


@pytest.fixture(scope="module")
def pipeline():
    from KidneyTumorSegLib.pipeline import Pipeline

    return Pipeline.from_weights(None, device="cpu")


def _labelled_ml(pipeline, image) -> tuple[float, dict]:
    import SimpleITK as sitk

    from KidneyTumorSegLib.volume import Volume

    spacing = tuple(float(s) for s in image.GetSpacing())
    volume = Volume(sitk.GetArrayFromImage(image).astype(np.int16), spacing, tuple(image.GetOrigin()),
                    np.asarray(image.GetDirection(), float).reshape(3, 3))
    result = pipeline.run(volume)
    return float((result.labels.array > 0).sum()) * float(np.prod(spacing)) / 1000.0, result.report


@pytest.mark.parametrize("case", ["totalseg_s0002", "totalseg_s0003"])
@pytest.mark.parametrize("variant", ["as scanned", "slice5mm", "pixel2.5mm"])
def test_head_and_neck_scans_get_no_kidney(pipeline, case, variant):
    """Networks trained on abdomens once took the 5 mm cerebellum for a kidney; the plausibility
    check (a kidney is never encased in bone) must keep every version of these scans empty."""
    import SimpleITK as sitk
    from scanner_variants import reacquire

    image = sitk.ReadImage(str(REAL / case / "ct.nii.gz"))
    labels = sitk.ReadImage(str(REAL / case / "labels.nii.gz"))
    sx, sy, sz = image.GetSpacing()
    if variant == "slice5mm":
        image, _ = reacquire(image, labels, (sx, sy, 5.0))
    elif variant == "pixel2.5mm":
        image, _ = reacquire(image, labels, (2.5, 2.5, sz))
    ml, report = _labelled_ml(pipeline, image)
    assert ml < MAX_FALSE_ML, report["discarded_regions"]
