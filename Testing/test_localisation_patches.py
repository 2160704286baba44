"""Localisation (z-range, kidney boxes), patch coverage and Gaussian stitching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from KidneyTumorSegLib.config import XYLocaliserConfig, ZLocaliserConfig
from KidneyTumorSegLib.localisation import (
    Box,
    candidate_slices,
    choose_kidney_boxes,
    kidney_boxes,
    kidney_candidates,
    z_range,
)
from KidneyTumorSegLib.patches import Stitcher, axis_starts, extract, gaussian_weights, plan_windows


def test_z_range_keeps_the_kidney_run_and_ignores_a_far_false_alarm():
    probs = np.zeros(100)
    probs[40:60] = 0.9
    probs[5] = 1.0  # one-slice false alarm in the chest
    cfg = ZLocaliserConfig(smoothing_mm=4.0, margin_mm=10.0, threshold=0.5)
    k0, k1 = z_range(probs, spacing_z=2.0, cfg=cfg)
    assert (k0, k1) == (40 - 5, 60 + 5)


def test_z_range_is_none_without_kidney():
    assert z_range(np.full(50, 0.1), 2.0, ZLocaliserConfig()) is None


def test_kidney_boxes_one_per_kidney_and_single_kidney_works():
    mask = np.zeros((30, 60, 60), bool)
    mask[10:20, 20:35, 5:15] = True  # right kidney (low x)
    mask[12:22, 20:35, 40:52] = True  # left kidney
    mask[0:2, 0:2, 58:60] = True  # speck, too small
    cfg = XYLocaliserConfig(margin_mm=2.0, min_component_ml=0.5)
    boxes = kidney_boxes(mask, (2.0, 2.0, 2.0), cfg)
    assert len(boxes) == 2
    assert sorted(b.lo[2] for b in boxes) == [4, 39]
    one = kidney_boxes(mask[:, :, :30], (2.0, 2.0, 2.0), cfg)
    assert len(one) == 1 and one[0].lo == (9, 19, 4) and one[0].hi == (21, 36, 16)
    assert kidney_boxes(np.zeros_like(mask), (2.0, 2.0, 2.0), cfg) == []


def test_candidate_slices_keep_every_run_not_only_the_heaviest():
    probs = np.zeros(120)
    probs[20:45] = 0.95  # a low-lying kidney
    probs[80:90] = 0.7  # the other kidney, higher and smaller in z: z_range would drop it
    cfg = ZLocaliserConfig(smoothing_mm=4.0, margin_mm=8.0, threshold=0.5)
    k0, k1 = z_range(probs, 2.0, cfg)
    assert k1 < 80  # the single-run rule loses the second kidney
    slices = candidate_slices(probs, 2.0, cfg)
    assert slices[20:45].all() and slices[80:90].all()
    assert not slices[55:70].any() and not slices[110:].any()
    assert not candidate_slices(np.full(50, 0.1), 2.0, cfg).any()


def _two_kidneys_and_a_false_alarm():
    mask = np.zeros((60, 60, 80), bool)
    mask[5:20, 25:40, 10:22] = True  # right kidney (low x), low-lying
    mask[35:50, 25:40, 55:66] = True  # left kidney, higher
    mask[20:45, 20:45, 25:40] = True  # a bigger false alarm right of the midline (x 25-40 < 40)
    return mask


def test_a_false_alarm_cannot_take_the_place_of_the_other_sides_kidney():
    mask = _two_kidneys_and_a_false_alarm()
    probs = np.full(60, 0.9)
    cfg = XYLocaliserConfig(margin_mm=0.0, min_component_ml=0.5)
    cands = kidney_candidates(mask, probs, (2.0, 2.0, 2.0), cfg)
    assert len(cands) == 3 and cands[0].box.lo == (20, 20, 25)  # the false alarm scores highest
    # the two largest overall would be the false alarm and the right kidney: the left one lost
    overall = kidney_boxes(mask, (2.0, 2.0, 2.0), cfg)
    assert all(b.lo[2] != 55 for b in overall)
    per_side = choose_kidney_boxes(cands, midline_x=40.0, per_side=1)
    assert sorted(b.lo[2] for b in per_side) == [25, 55]  # the best of each side
    both = choose_kidney_boxes(cands, midline_x=40.0, per_side=2)
    assert sorted(b.lo[2] for b in both) == [10, 25, 55]  # all three go to the segmenter


def test_candidates_weigh_the_z_localisers_belief_and_drop_implausible_blobs():
    mask = np.zeros((60, 60, 80), bool)
    mask[5:20, 25:40, 10:22] = True
    mask[35:50, 25:40, 55:66] = True
    probs = np.zeros(60)
    probs[5:20] = 0.9
    probs[35:50] = 0.2  # the z-localiser doubts the second blob
    cfg = XYLocaliserConfig(margin_mm=0.0, min_component_ml=0.5)
    cands = kidney_candidates(mask, probs, (2.0, 2.0, 2.0), cfg)
    assert [c.box.lo[2] for c in cands] == [10, 55]
    assert cands[0].score > 3 * cands[1].score
    huge = np.ones((60, 60, 80), bool)  # 1.8 L at 2 mm: allowed; at 4 mm (14 L): not a kidney
    assert len(kidney_candidates(huge, np.ones(60), (2.0, 2.0, 2.0), cfg)) == 1
    assert kidney_candidates(huge, np.ones(60), (4.0, 4.0, 4.0), cfg) == []


@pytest.mark.parametrize("lo,hi,patch,overlap", [(0, 10, 32, 0.5), (5, 200, 64, 0.5), (-3, 81, 40, 0.25), (0, 64, 64, 0.5)])
def test_axis_starts_cover_the_range(lo, hi, patch, overlap):
    starts = axis_starts(lo, hi, patch, overlap)
    covered = np.zeros(hi - lo, bool)
    for s in starts:
        covered[max(0, s - lo) : max(0, s + patch - lo)] = True
    assert covered.all()
    if hi - lo <= patch:  # a small box gets one centred window
        assert len(starts) == 1 and abs((starts[0] + patch / 2) - (lo + hi) / 2) <= 0.5
    else:
        steps = np.diff(starts)
        assert steps.max() <= patch * (1 - overlap) + 1


def test_windows_cover_any_box():
    rng = np.random.default_rng(0)
    patch = (20, 32, 32)
    for _ in range(20):
        lo = rng.integers(-5, 30, 3)
        size = rng.integers(1, 90, 3)
        box = Box(tuple(int(v) for v in lo), tuple(int(v) for v in lo + size))
        starts = plan_windows([box], patch, 0.5)
        covered = np.zeros(tuple(size), bool)
        for s in starts:
            sl = tuple(slice(max(0, a - b), max(0, a - b + p)) for a, b, p in zip(s, box.lo, patch))
            covered[sl] = True
        assert covered.all()


def test_extract_pads_outside_the_array():
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    win = extract(arr, (-2, 1, 4), (4, 3, 4), fill=-1)
    assert win.shape == (4, 3, 4)
    np.testing.assert_array_equal(win[2:, :, :2], arr[0:2, 1:4, 4:6])
    assert (win[:2] == -1).all() and (win[:, :, 2:] == -1).all()


def test_stitching_a_constant_field_gives_the_constant_everywhere_covered():
    canvas = (30, 50, 40)
    patch = (16, 24, 24)
    st = Stitcher(2, canvas, patch)
    starts = [s for s in itertools.product(*[axis_starts(0, c, p, 0.5) for c, p in zip(canvas, patch)])]
    for s in starts:
        st.add(s, np.stack([np.full(patch, 0.25, np.float32), np.full(patch, 0.75, np.float32)]))
    out = st.result()
    np.testing.assert_allclose(out[0], 0.25, rtol=1e-5)
    np.testing.assert_allclose(out[1], 0.75, rtol=1e-5)


def test_gaussian_weights_peak_in_the_centre():
    w = gaussian_weights((9, 11, 13))
    assert w[4, 5, 6] == w.max() == 1.0
    assert w[0, 0, 0] < w[4, 5, 6] and w.min() > 0


def test_fusing_scales_brings_the_coarse_probabilities_to_where_they_physically_lie():
    """A field that depends only on physical x, sampled on a coarse grid with another origin and
    spacing, fuses with the same field on the fine grid into that field (mean and max alike) where
    the coarse windows looked, and leaves the fine field alone elsewhere."""
    from KidneyTumorSegLib.patches import fuse_scales
    from KidneyTumorSegLib.volume import Volume

    fine_grid = Volume(np.zeros((10, 12, 30), np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    coarse_grid = Volume(np.zeros((8, 10, 8), np.float32), (3.0, 3.0, 3.0), (-3.0, -3.0, -3.0))  # x -3..18 mm

    def ramp(grid):
        x = grid.origin[0] + grid.spacing[0] * np.arange(grid.array.shape[2])
        field = np.broadcast_to(x / 60.0, grid.array.shape).astype(np.float32)
        return np.stack([field, 1.0 - field])

    fine, coarse = ramp(fine_grid), ramp(coarse_grid)
    fine_x = 2.0 * np.arange(30)
    inside = fine_x <= 18.0 - 1e-6
    for how in ("mean", "max", "split"):
        fused = fuse_scales(fine, fine_grid, coarse, coarse_grid, how)
        np.testing.assert_allclose(fused[:, :, :, inside], fine[:, :, :, inside], atol=1e-5)
    # a coarse field of ones: the mean is halfway and the max is one where it looked, nothing beyond
    ones = np.ones_like(coarse)
    zeros = np.zeros_like(fine)
    mean = fuse_scales(zeros, fine_grid, ones, coarse_grid, "mean")
    peak = fuse_scales(zeros, fine_grid, ones, coarse_grid, "max")
    assert np.allclose(mean[:, :8, :10, :9], 0.5) and np.allclose(peak[:, :8, :10, :9], 1.0)
    assert not mean[:, :, :, 10:].any() and not peak[:, :, :, 10:].any()
    split = fuse_scales(zeros, fine_grid, ones, coarse_grid, "split")  # region: the mean; tumour: the max
    assert np.allclose(split[0, :8, :10, :9], 0.5) and np.allclose(split[1, :8, :10, :9], 1.0)
    with pytest.raises(ValueError, match="'mean', 'max' or 'split'"):
        fuse_scales(zeros, fine_grid, ones, coarse_grid, "median")


def test_only_large_regions_or_ones_at_the_canvas_side_call_for_the_coarse_look():
    """A 1 mL voxel grid: a 27 mL block inside opens the gate at 20 mL, a 12 mL block does not
    unless it touches a side (x or y) face; touching the top or bottom (z) faces does not count,
    since the localiser's slices may end in a pole."""
    from KidneyTumorSegLib.patches import context_seeds

    region = np.zeros((20, 20, 20), bool)
    region[2:5, 8:10, 8:10] = True  # 12 mL, inside
    region[10:13, 10:13, 10:13] = True  # 27 mL, inside
    seeds = context_seeds(region, 1.0, 20.0)
    assert seeds.sum() == 27 and seeds[11, 11, 11] and not seeds[3, 9, 9]
    assert context_seeds(region, 1.0, 30.0) is None  # nothing large enough, nothing at a side
    assert context_seeds(np.zeros_like(region), 1.0, 1.0) is None
    at_side = np.zeros_like(region)
    at_side[5:7, 5:7, 0:2] = True  # 8 mL on the x = 0 face
    at_side[0:2, 12:14, 12:14] = True  # 8 mL on the z = 0 face
    seeds = context_seeds(at_side, 1.0, 100.0)
    assert seeds.sum() == 8 and seeds[5, 5, 0] and not seeds[0, 12, 12]
    for face in (np.s_[8:10, 19, 8:10], np.s_[8:10, 0, 8:10], np.s_[8:10, 8:10, 19]):  # y = -1, y = 0, x = -1
        on_face = np.zeros_like(region)
        on_face[face] = True
        assert context_seeds(on_face, 1.0, 100.0).sum() == 4
    # volumes are in mL: 27 voxels of 8 mL are 216 mL; the gate is "at least"
    assert context_seeds(region, 8.0, 216.0).sum() == 27 and context_seeds(region, 8.0, 216.1) is None


def test_a_gated_fusion_moves_only_the_regions_its_seeds_touch():
    """The fused probabilities count inside the fused region's parts that meet a seed and inside
    the seed; a fused part elsewhere, and every voxel beyond, keeps the fine grid's values."""
    from KidneyTumorSegLib.patches import gate_fusion

    fine = np.full((2, 10, 10, 30), 0.2, np.float32)
    fused = np.full_like(fine, 0.7)
    fused_region = np.zeros((10, 10, 30), bool)
    fused_region[2:8, 2:8, 2:12] = True  # meets the seed
    fused_region[2:8, 2:8, 18:26] = True  # a part of its own
    seeds = np.zeros_like(fused_region)
    seeds[4:6, 4:6, 4:6] = True
    seeds[0, 0, 0] = True  # a seed outside every fused part still takes the fused values
    out = gate_fusion(fine, fused, fused_region, seeds)
    zone = np.zeros_like(fused_region)
    zone[2:8, 2:8, 2:12] = True
    zone[0, 0, 0] = True
    assert np.allclose(out[:, zone], 0.7) and np.allclose(out[:, ~zone], 0.2)
    assert out.dtype == np.float32
