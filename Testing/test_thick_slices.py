"""The thick-slice augmentation: a fine-grid patch as a 3-6 mm scan would show it after resampling."""

from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.training.sampling import PatchSampler
from KidneyTumorSegLib.training.transforms import (
    AugmentConfig,
    simulate_thick_slices,
    slab_average,
    thick_slices,
)
from KidneyTumorSegLib.training.working_grids import CachedCase, CaseArrays


def test_anything_constant_along_z_is_unchanged():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(1, 7, 9)).astype(np.float32)
    image = np.repeat(plane, 30, axis=0)
    for thickness in (2.0, 3.7, 6.0):
        np.testing.assert_allclose(thick_slices(image, thickness, 0.4), image, atol=1e-5)


@pytest.mark.parametrize("width", [2.0, 2.5, 3.0, 4.0, 5.5])
def test_the_slab_average_is_centred_whatever_its_width(width):
    """An even-width box filter sits half a voxel off centre; the image would then drift away from
    its labels along z."""
    delta = np.zeros((41, 1, 1), np.float32)
    delta[20] = 1.0
    out = slab_average(delta, width)[:, 0, 0]
    assert out.sum() == pytest.approx(1.0)
    assert float((np.arange(41) * out).sum()) == pytest.approx(20.0)  # centroid unmoved
    assert np.count_nonzero(out > 1e-9) == 2 * int(np.ceil(width / 2 - 0.5)) + 1
    step = np.zeros((40, 1, 1), np.float32)
    step[20:] = 1.0
    s_out = slab_average(step, width)[:, 0, 0]
    np.testing.assert_allclose(s_out[:20], 1.0 - s_out[20:][::-1], atol=1e-6)  # symmetric about 19.5


@pytest.mark.parametrize("thickness", [3.0, 5.0])
def test_a_sharp_boundary_becomes_a_ramp_about_one_slice_wide(thickness):
    image = np.zeros((60, 2, 2), np.float32)
    image[30:] = 1.0
    out = thick_slices(image, thickness, 0.5)[:, 0, 0]
    assert out[0] == pytest.approx(0.0) and out[-1] == pytest.approx(1.0)
    assert np.all(np.diff(out) >= -1e-6)  # still monotone: no ringing
    partial = np.nonzero((out > 0.02) & (out < 0.98))[0]
    # slab averaging plus linear interpolation spread the step over about two slice thicknesses
    assert thickness <= partial.size <= 2 * thickness + 1
    assert partial.min() < 30 <= partial.max() + 1


def test_one_voxel_slices_and_a_zero_probability_change_nothing():
    image = np.random.default_rng(1).normal(size=(20, 5, 5)).astype(np.float32)
    assert thick_slices(image, 1.0, 0.3) is image
    off = AugmentConfig(thick_slice_probability=0.0)
    assert simulate_thick_slices(image, np.random.default_rng(2), off, 1.0) is image


def test_patches_get_thick_slices_at_the_configured_rate_and_labels_stay_exact():
    lab = np.zeros((60, 60, 60), np.uint8)  # patches around the kidney never leave the case
    lab[22:38, 20:40, 20:40] = 1
    img = (0.2 + 0.6 * lab).astype(np.float16)
    arrays = CaseArrays(img, lab, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    case = CachedCase("c", arrays, arrays)
    # spatial and intensity augmentation off; only the re-acquisition stays
    aug = AugmentConfig(rotation_deg=0.0, flip_axes=(), scale_range=(1.0, 1.0), probability=0.0,
                        thick_slice_probability=0.5, thick_slice_mm=(4.0, 6.0))
    sampler = PatchSampler([case], (24, 24, 24), aug, tumour_fraction=0.0, random_fraction=0.0, jitter=0.0)
    rng = np.random.default_rng(5)
    changed = 0
    for _ in range(80):
        s = sampler.sample(rng)
        kidney = s.target[0]
        sharp = (0.2 + 0.6 * kidney).astype(np.float16).astype(np.float32)
        assert set(np.unique(kidney)) <= {0.0, 1.0}  # labels are read by nearest neighbour, never blurred
        if np.allclose(s.image[0], sharp, atol=1e-3):
            continue
        changed += 1
        # blurred along z only: within an axial slice the image still takes one value inside the
        # kidney's footprint and one outside it
        for k in range(24):
            assert np.unique(np.round(s.image[0, k], 4)).size <= 2
    assert 25 <= changed <= 55
