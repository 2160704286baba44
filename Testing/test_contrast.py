"""The contrast phase judged from the kidneys' HU, on phantoms whose phase is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib import contrast
from KidneyTumorSegLib.phantoms import PhantomConfig, make_phantom, procedural_labels
from KidneyTumorSegLib.phantoms.realbody import PaintConfig, paint_body

from .test_real_anatomy import STILL, toy_body


@pytest.fixture(scope="module")
def kidneys():
    labels = procedural_labels(3, (60, 80, 80), (2.5, 2.5, 2.5))
    return labels.with_array(np.asarray(labels.array).astype(np.uint8))


@pytest.mark.parametrize("phase,expected", [
    ("corticomedullary", contrast.ARTERIAL),
    ("nephrographic", contrast.VENOUS),
    ("excretory", contrast.EXCRETORY),
])
def test_each_enhanced_phase_is_recognised(kidneys, phase, expected):
    ct, _ = make_phantom(kidneys, seed=1, config=PhantomConfig(phase=phase, tissue_map=False))
    result = contrast.contrast_phase(ct, kidneys.array)
    assert result["phase"] == expected and result["enhanced"]
    assert contrast.warning_for(result) is None


def test_an_unenhanced_scan_is_recognised_and_warned_about():
    body = toy_body()
    ct, labels, _ = paint_body(body, None, 2, PaintConfig(**STILL, mode_weights=(0.0, 1.0, 0.0)))
    result = contrast.contrast_phase(ct, labels.array)
    assert result["phase"] == contrast.UNENHANCED and not result["enhanced"]
    assert result["kidney_median_hu"] < 60
    assert "unreliable" in contrast.warning_for(result)


def test_too_little_kidney_is_not_judged(kidneys):
    tiny = np.zeros(kidneys.array.shape, np.uint8)
    tiny[30, 40, 40] = 1
    ct, _ = make_phantom(kidneys, seed=1, config=PhantomConfig(tissue_map=False))
    assert contrast.contrast_phase(ct, tiny) is None


def _shell_kidney(cortex_hu: float, medulla_hu: float):
    """A 60 x 40 x 40 mm ellipsoid kidney on a 1 mm grid: a 5 mm cortex around a medulla, in fat."""
    from KidneyTumorSegLib.volume import Volume

    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in (80, 60, 60)], indexing="ij")
    r = np.sqrt(((zz - 40) / 30) ** 2 + ((yy - 30) / 20) ** 2 + ((xx - 30) / 20) ** 2)
    kidney = r <= 1.0
    hu = np.full(kidney.shape, -100.0, np.float32)
    hu[kidney] = medulla_hu
    hu[kidney & (r > 0.75)] = cortex_hu  # the outer quarter of the radius: 5-7 mm of cortex
    return Volume(hu, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), kidney.astype(np.uint8)


def test_corticomedullary_differentiation_means_contrast_even_when_the_median_is_low():
    # an early arterial kidney: a bright cortex, a medulla not yet enhanced; the median falls below
    # the unenhanced limit, but unenhanced parenchyma never shows a 130 HU cortex-medulla step
    ct, labels = _shell_kidney(cortex_hu=170.0, medulla_hu=40.0)
    result = contrast.contrast_phase(ct, labels)
    assert result["kidney_median_hu"] < contrast.UNENHANCED_BELOW_HU
    assert result["phase"] == contrast.ARTERIAL and contrast.warning_for(result) is None
    # the same kidney without contrast: even parenchyma, judged unenhanced and warned about
    plain = contrast.contrast_phase(*_shell_kidney(cortex_hu=38.0, medulla_hu=35.0))
    assert plain["phase"] == contrast.UNENHANCED and contrast.warning_for(plain)
    # a plain kidney whose label takes in sinus fat: a large step, but no enhanced cortex
    fatty = contrast.contrast_phase(*_shell_kidney(cortex_hu=35.0, medulla_hu=-20.0))
    assert fatty["cortex_minus_inner_hu"] > contrast.CORTICOMEDULLARY_DIFF_HU
    assert fatty["phase"] == contrast.UNENHANCED and contrast.warning_for(fatty)


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_ct"


@pytest.mark.skipif(not (REAL / "totalseg_s0009" / "labels.nii.gz").exists(), reason="real CTs not available")
@pytest.mark.parametrize("case,ids,enhanced", [("ircadb1_1", (1, 2), True), ("totalseg_s0009", (2, 3), False)])
def test_the_real_scans_phase_is_judged_right_from_their_true_kidneys(case, ids, enhanced):
    """The portal-venous IRCAD scan and the non-contrast TotalSegmentator scan, judged from their
    labelled kidneys (the detector alone, no network)."""
    from KidneyTumorSegLib.io import read_volume

    ct = read_volume(REAL / case / "ct.nii.gz")
    truth = np.asarray(read_volume(REAL / case / "labels.nii.gz").array)
    result = contrast.contrast_phase(ct, np.isin(truth, ids).astype(np.uint8))
    assert result["enhanced"] is enhanced
    assert result["phase"] == (contrast.VENOUS if enhanced else contrast.UNENHANCED)


def test_thin_slices_are_judged_like_the_same_kidney_at_1_mm():
    """Axes finer than 1 mm are thinned before the distance transform: 0.5 mm slices of a kidney
    give the phase and HU of the same kidney at 1 mm."""
    from KidneyTumorSegLib.volume import Volume

    ct, labels = _shell_kidney(cortex_hu=170.0, medulla_hu=40.0)
    thin = Volume(np.repeat(np.asarray(ct.array), 2, axis=0), (1.0, 1.0, 0.5), (0.0, 0.0, 0.0))
    at_1mm = contrast.contrast_phase(ct, labels)
    at_half = contrast.contrast_phase(thin, np.repeat(labels, 2, axis=0))
    assert at_half["phase"] == at_1mm["phase"] == contrast.ARTERIAL
    for key in ("kidney_median_hu", "cortex_minus_inner_hu", "brightest_1pct_hu"):
        assert at_half[key] == pytest.approx(at_1mm[key], abs=3.0)
    # and the distance transform ran on every other slice, with the thinned axis's spacing
    seen = []
    real_edt = contrast.ndimage.distance_transform_edt

    def spy(mask, sampling=None, **kw):
        seen.append((mask.shape, tuple(sampling)))
        return real_edt(mask, sampling=sampling, **kw)

    contrast.ndimage.distance_transform_edt = spy
    try:
        contrast.contrast_phase(thin, np.repeat(labels, 2, axis=0))
    finally:
        contrast.ndimage.distance_transform_edt = real_edt
    (shape, sampling), *closing = seen  # the depth, then the sinus's closing on a 2 mm grid
    assert sampling == (1.0, 1.0, 1.0) and shape[0] <= labels.shape[0] + 12  # unthinned: about 144 slices
    pad = 2 * (int(np.ceil(contrast.SINUS_CLOSING_MM / 2.0)) + 1)  # the closing's margin, both ends
    assert len(closing) == 2 and all(s == (2.0, 2.0, 2.0) and sh[0] <= shape[0] // 2 + 1 + pad for sh, s in closing)


def test_bone_beside_a_kidney_is_not_taken_for_excreted_contrast():
    """A nephrographic kidney lying against bone (a low kidney beside the iliac wing): the bone's HU
    beside it must not pass for contrast in the urine; contrast inside the kidney's hilum does."""
    ct, labels = _shell_kidney(cortex_hu=180.0, medulla_hu=170.0)
    from scipy import ndimage

    outside = ndimage.distance_transform_edt(labels == 0)
    hugging = (outside > 0) & (outside <= 6.0)  # bone from the kidney's very surface outwards
    x, y = np.arange(60)[None, None, :], np.arange(60)[None, :, None]
    for side in (x > 38, x < 22, y > 38, y < 22):  # each side of the kidney in turn, + and - faces
        hu = np.asarray(ct.array).copy()
        hu[hugging & side] = 900.0
        assert contrast.contrast_phase(ct.with_array(hu), labels)["phase"] == contrast.VENOUS
    # excreted contrast in the hollow of the hilum, which the label leaves out: excretory
    hilum = np.asarray(ct.array).copy()
    notch = labels.astype(bool) & (np.abs(np.arange(60)[None, None, :] - 10) < 14) & \
        (np.abs(np.arange(60)[None, :, None] - 30) < 5) & (np.abs(np.arange(80)[:, None, None] - 40) < 10)
    hilum[notch] = 1000.0
    cut = labels.copy()
    cut[notch] = 0
    assert contrast.contrast_phase(ct.with_array(hilum), cut)["phase"] == contrast.EXCRETORY
