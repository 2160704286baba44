"""The bundled weights on real CT scans they never trained on: kidney-free scans stay empty and the
unseen non-contrast scan gets both kidneys, also as a thick-slice or coarse-pixel scanner would have
shown them. Skipped where ../shared/data is absent."""

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


def _as_volume(image):
    """The image as the int16 HU volume a scanner file would hold."""
    from KidneyTumorSegLib.volume import Volume

    volume = Volume.from_sitk(image)
    return volume.with_array(volume.array.astype(np.int16))


def _labelled_ml(pipeline, image) -> tuple[float, dict]:
    volume = _as_volume(image)
    result = pipeline.run(volume)
    return float((result.labels.array > 0).sum()) * volume.voxel_volume_ml, result.report


def _variant(case, variant):
    """The scan as scanned, or one of ``scripts/scanner_variants.py``'s variants of it (image, labels)."""
    import SimpleITK as sitk
    from scanner_variants import variants

    from KidneyTumorSegLib.labelled_scans import named_kidney_ids

    image = sitk.ReadImage(str(REAL / case / "ct.nii.gz"))
    labels = sitk.ReadImage(str(REAL / case / "labels.nii.gz"))
    if variant == "as scanned":
        return image, labels
    named = variants(image, labels, kidney_ids=named_kidney_ids(REAL / case))
    return next((ct, lab) for name, ct, lab in named if name == variant)


@pytest.mark.parametrize("case, variant", [
    ("totalseg_s0002", "as scanned"), ("totalseg_s0002", "slice5mm"), ("totalseg_s0002", "pixel2.5mm"),
    ("totalseg_s0002", "noise25"), ("totalseg_s0002", "pitch15"), ("totalseg_s0003", "as scanned"),
    ("totalseg_s0003", "slice5mm"), ("totalseg_s0003", "pixel2.5mm"), ("totalseg_s0003", "noise25"),
    ("totalseg_s0003", "oblique15"), ("totalseg_s0003", "pitch15"), ("totalseg_s0003", "roll20"),
    ("totalseg_s0002", "body0.85"), ("totalseg_s0003", "body0.85"),
    pytest.param("totalseg_s0002", "body1.15", marks=pytest.mark.xfail(
        strict=True, reason="v1.6 labels 42 mL of this larger-patient variant's cerebellum; the fat check that "
                            "removes it (segmenter.min_rim_fat) is off, as it lost pelvic kidneys (model card)")),
    pytest.param("totalseg_s0003", "body1.15", marks=pytest.mark.xfail(
        strict=True, reason="v1.6 labels 11.2 mL of neck muscle in this larger-patient variant; its rim is 21 % fat, "
                            "so the fat check cannot reach it (model card)"))])
def test_head_and_neck_scans_get_no_kidney(pipeline, case, variant):
    """Networks trained on abdomens once took the 5 mm cerebellum for a kidney; the plausibility
    checks (a kidney is never encased in bone, and lies in its perirenal fat) must keep every version
    of these scans empty. v1.2 to v1.4 labelled 8.6 mL of shoulder muscle at the 5 mm version's lower
    end, where the segmenter's window saw air beyond the scan; v1.5 carries the last slice on there.
    v1.6 labels 42 mL of s0002's cerebellum at 1.15 times its size, its rim 9 % bone but 0.8 % fat:
    the fat check would discard it, but it is off (model card, docs/evaluation/fat_rim/)."""
    image, _ = _variant(case, variant)
    ml, report = _labelled_ml(pipeline, image)
    assert ml < MAX_FALSE_ML, report["discarded_regions"]


def test_the_fat_check_when_set_discards_the_larger_heads_cerebellum():
    """segmenter.min_rim_fat=0.05: the cerebellum v1.6 labels in s0002 at 1.15 times its size (rim
    0.8 % fat) is discarded, with its reason, and the scan comes out empty."""
    from KidneyTumorSegLib.pipeline import Pipeline

    pipe = Pipeline.from_weights(None, device="cpu")
    pipe.config.segmenter.min_rim_fat = 0.05
    image, _ = _variant("totalseg_s0002", "body1.15")
    ml, report = _labelled_ml(pipe, image)
    assert ml < MAX_FALSE_ML
    assert [r["reason"] for r in report["discarded_regions"]] == ["no_fat"]


@pytest.mark.parametrize("variant", ["as scanned", "slice5mm", "pixel2.5mm", "oblique15", "from_kidney_middle",
                                     "to_kidney_middle", "body0.85", "body1.15"])
def test_the_unseen_non_contrast_scan_gets_both_kidneys(pipeline, variant):
    """totalseg_s0009 (unenhanced, 1.5 mm): the project's target is kidney Dice 0.85 where no network
    trained on it, and it must hold as a 5 mm or 2.5 mm-pixel scanner would have shown it too, and
    on slices tilted 15 degrees, and with a field of view that ends halfway down the kidneys (a pelvis or an upper-abdomen scan:
    v1.4 found one kidney of two there, Dice 0.52 / 0.54, its segmenter seeing air past the scan's
    end; v1.5 0.91 / 0.90), and in a smaller or a larger patient (v1.6: 0.895, 0.919)."""
    import SimpleITK as sitk

    if "totalseg_s0009" in pipeline.bundle.header.get("provenance", {}).get("real_scans_seen", []):
        pytest.skip("the bundled weights trained on totalseg_s0009")
    image, labels = _variant("totalseg_s0009", variant)
    truth = np.isin(sitk.GetArrayFromImage(labels), (2, 3))
    result = pipeline.run(_as_volume(image))
    assert set(result.report["sides"]) == {"right", "left"}
    predicted = result.labels.array > 0
    dice = 2.0 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice >= 0.85, dice


def test_a_tilted_scans_ends_through_the_kidneys_are_carried_on(pipeline):
    """ircadb1_1 on slices tilted 15 degrees, its tilted ends cutting both kidneys: the segmenter's
    windows see the end slices carried on along the tilt (kidney Dice 0.946, both kidneys); when a
    tilted scan saw air past its ends, 0.878. ircadb1_1 trained the bundled weights, so this holds
    the engine to its measured behaviour; it is not a figure for unseen scans."""
    import SimpleITK as sitk

    from KidneyTumorSegLib.labelled_scans import named_kidney_ids

    image, labels = _variant("ircadb1_1", "oblique15")
    truth = np.isin(sitk.GetArrayFromImage(labels), list(named_kidney_ids(REAL / "ircadb1_1")))
    result = pipeline.run(_as_volume(image))
    assert set(result.report["sides"]) == {"right", "left"}
    predicted = result.labels.array > 0
    dice = 2.0 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice >= 0.92, dice
