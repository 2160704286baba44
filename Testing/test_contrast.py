"""The contrast phase judged from the kidneys' HU, on phantoms whose phase is known."""

from __future__ import annotations

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
