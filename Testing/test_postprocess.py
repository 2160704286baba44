"""Post-processing and measurements on probability maps where the right answer is known."""

from __future__ import annotations

import numpy as np

from KidneyTumorSegLib.measure import largest_diameter_mm, side_measurements
from KidneyTumorSegLib.postprocess import PostprocessConfig, labels_from_probabilities, split_sides
from KidneyTumorSegLib.volume import Volume


def ball(shape, centre, radius):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


def test_kidney_with_tumour_kept_far_tumour_blob_and_speckle_dropped():
    shape = (40, 60, 80)
    kidney = ball(shape, (20, 30, 20), 10)
    tumour_in_kidney = ball(shape, (20, 30, 26), 5)
    far_blob = ball(shape, (20, 30, 65), 6)  # tumour-like blob with no kidney around it
    speck = ball(shape, (5, 5, 70), 1)
    p_region = np.zeros(shape, np.float32)
    p_region[kidney | far_blob | speck] = 0.9
    p_tumour = np.zeros(shape, np.float32)
    p_tumour[tumour_in_kidney | far_blob] = 0.9
    labels = labels_from_probabilities(p_region, p_tumour, voxel_ml=0.008, cfg=PostprocessConfig(min_kidney_ml=1.0))
    assert set(np.unique(labels)) == {0, 1, 2}
    assert not labels[far_blob].any() and not labels[speck].any()
    np.testing.assert_array_equal(labels == 2, tumour_in_kidney)  # its exophytic part stays too
    np.testing.assert_array_equal(labels > 0, kidney | tumour_in_kidney)


def test_no_kidney_gives_an_empty_result():
    shape = (10, 10, 10)
    labels = labels_from_probabilities(np.full(shape, 0.2, np.float32), np.zeros(shape, np.float32), 0.001)
    assert not labels.any()


def test_single_kidney_and_sides_follow_the_patient_not_the_array():
    shape = (30, 40, 60)
    arr = np.zeros(shape, np.uint8)
    arr[ball(shape, (15, 20, 12), 6)] = 1  # low i
    # With an x-flipped direction, low i is the patient's LEFT (LPS +x).
    flipped = Volume(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.diag([-1.0, 1.0, 1.0]))
    assert set(split_sides(flipped, midline_x=-30.0)) == {"kidney_left"}
    plain = Volume(arr, (1.0, 1.0, 1.0))
    assert set(split_sides(plain, midline_x=30.0)) == {"kidney_right"}


def test_two_kidneys_split_by_side_with_their_tumours():
    shape = (30, 40, 80)
    arr = np.zeros(shape, np.uint8)
    arr[ball(shape, (15, 20, 15), 8)] = 1
    arr[ball(shape, (15, 20, 65), 8)] = 1
    arr[ball(shape, (15, 20, 68), 3)] = 2
    s = split_sides(Volume(arr, (1.0, 1.0, 1.0)), midline_x=40.0)
    assert set(s) == {"kidney_right", "kidney_left", "tumour_left"}
    assert s["tumour_left"].sum() == (arr == 2).sum()


def test_measurements_match_known_geometry():
    shape = (40, 40, 40)
    spacing = (0.5, 0.5, 2.0)  # anisotropic: the diameter must be measured in mm
    arr = np.zeros(shape, np.uint8)
    # A box tumour 20 voxels in x (10 mm), 10 in y (5 mm), 6 in z (12 mm); diagonal between centres:
    arr[10:16, 10:20, 10:30] = 2
    grid = Volume(arr, spacing)
    d = largest_diameter_mm(arr == 2, grid)
    expected = np.sqrt((19 * 0.5) ** 2 + (9 * 0.5) ** 2 + (5 * 2.0) ** 2)
    assert abs(d - expected) < 1e-6
    m = side_measurements({"tumour_left": arr == 2, "kidney_left": np.zeros(shape, bool)}, grid)
    assert m["left"]["tumour_ml"] == round(6 * 10 * 20 * 0.5 * 0.5 * 2.0 / 1000, 2)
    assert m["left"]["tumour_count"] == 1 and "right" not in m


def test_tumour_fragments_below_the_minimum_volume_are_dropped_and_larger_ones_kept():
    shape = (40, 60, 80)
    kidney = ball(shape, (20, 30, 40), 15)
    small = ball(shape, (20, 30, 30), 2.5)  # 81 voxels: 0.65 mL at 0.008 mL per voxel
    large = ball(shape, (20, 30, 48), 4)  # 257 voxels: 2.1 mL
    p_region = np.where(kidney, 0.9, 0.0).astype(np.float32)
    p_tumour = np.where(small | large, 0.9, 0.0).astype(np.float32)
    for limit, kept in ((0.05, small | large), (1.0, large), (3.0, np.zeros(shape, bool))):
        labels = labels_from_probabilities(p_region, p_tumour, 0.008, PostprocessConfig(min_kidney_ml=1.0, min_tumour_ml=limit))
        np.testing.assert_array_equal(labels == 2, kept)
        np.testing.assert_array_equal(labels > 0, kidney)  # a dropped fragment stays kidney


def test_with_a_midline_the_largest_region_of_each_side_is_kept():
    from KidneyTumorSegLib.postprocess import labels_from_probabilities

    p = np.zeros((20, 30, 60), np.float32)
    p[5:15, 5:25, 2:12] = 1.0  # right kidney
    p[5:15, 5:25, 14:26] = 1.0  # a larger false region, also right of the midline (x < 30)
    p[6:12, 8:20, 40:48] = 1.0  # the left kidney, the smallest of the three
    no_tumour = np.zeros_like(p)
    plain = labels_from_probabilities(p, no_tumour, 1.0)
    assert not plain[:, :, 40:48].any()  # two largest overall: the left kidney is lost
    sided = labels_from_probabilities(p, no_tumour, 1.0, midline_x_index=30.0)
    assert sided[:, :, 40:48].any() and sided[:, :, 14:26].any() and not sided[:, :, 2:12].any()


def test_the_localisers_support_outranks_size_on_a_side():
    """A larger region next to the kidney that only the segmenter saw (a liver blob) loses its side
    to the kidney the xy-localiser also marked; a region the localiser never marked is dropped."""
    p = np.zeros((20, 30, 60), np.float32)
    p[5:15, 5:25, 2:8] = 1.0  # right kidney, 1200 mL at 1 mL voxels
    p[2:18, 2:28, 10:26] = 1.0  # a larger region on the same side (liver), 6656 mL
    p[6:12, 8:20, 40:48] = 1.0  # left kidney
    p[0:4, 0:6, 52:60] = 1.0  # a region on the left the localiser never marked
    no_tumour = np.zeros_like(p)
    support = np.zeros(p.shape, bool)
    support[7:13, 8:22, 3:7] = True  # the localiser's right kidney: inside the true one, at its resolution
    support[7:11, 10:18, 41:47] = True
    support[2:4, 2:28, 10:12] = True  # and a sliver of the liver region: it may touch a false region
    sized = labels_from_probabilities(p, no_tumour, 1.0, midline_x_index=30.0)
    assert sized[:, :, 10:26].any() and not sized[:, :, 2:8].any()  # by size the liver wins the right
    voted = labels_from_probabilities(p, no_tumour, 1.0, midline_x_index=30.0, support=support)
    np.testing.assert_array_equal(voted > 0, (p > 0) & _columns(p.shape, [(2, 8), (40, 48)]))


def test_a_region_the_localiser_never_marked_is_dropped_even_when_alone():
    p = np.zeros((10, 10, 10), np.float32)
    p[2:8, 2:8, 2:8] = 1.0
    support = np.zeros(p.shape, bool)
    assert not labels_from_probabilities(p, np.zeros_like(p), 1.0, support=support).any()
    support[4, 4, 4] = True
    assert (labels_from_probabilities(p, np.zeros_like(p), 1.0, support=support) > 0).sum() == 216


def test_a_region_segmented_without_conviction_is_dropped_only_with_min_confidence():
    """min_confidence: a region whose mean region probability is below it goes (a spleen in an
    empty fossa at 0.7), a kidney at 0.97 stays; at 0 (the default) both stay, as before."""
    p = np.zeros((20, 30, 60), np.float32)
    p[5:15, 5:25, 2:8] = 0.97  # the solitary kidney, right
    p[5:15, 5:25, 40:50] = 0.7  # something in the empty left fossa
    p[5:15, 5:25, 44:46] = 0.95  # with a confident streak: the region's mean decides, not its peak
    no_tumour = np.zeros_like(p)
    both = labels_from_probabilities(p, no_tumour, 1.0, midline_x_index=30.0)
    assert (both[5:15, 5:25, 2:8] > 0).all() and (both[5:15, 5:25, 40:50] > 0).all()
    strict = labels_from_probabilities(p, no_tumour, 1.0, PostprocessConfig(min_confidence=0.9), midline_x_index=30.0)
    np.testing.assert_array_equal(strict > 0, (p > 0) & _columns(p.shape, [(2, 8)]))


def _columns(shape, x_ranges):
    out = np.zeros(shape, bool)
    for a, b in x_ranges:
        out[:, :, a:b] = True
    return out


def test_a_region_both_networks_doubt_is_dropped_and_either_doubt_alone_is_not():
    """weak_confidence + weak_support: a region goes only when the segmenter's mean probability is
    below the one and its share inside the localiser's mask below the other (an empty fossa's spleen).
    A kidney with a large tumour (low probability, well supported) and a kidney leaking into its
    surroundings (confident, half supported) stay; off by default."""
    p = np.zeros((20, 30, 90), np.float32)
    support = np.zeros(p.shape, bool)
    p[5:15, 5:25, 2:10] = 0.7  # right: a kidney with a large tumour, unsure but inside the mask
    support[5:15, 5:25, 2:10] = True
    p[5:15, 5:25, 50:60] = 0.95  # left, lateral: a confident region only 40 % inside the mask
    support[5:15, 5:25, 50:54] = True
    p[5:15, 5:25, 75:85] = 0.7  # left, further out: unsure and 20 % inside the mask
    support[5:15, 5:25, 75:77] = True
    no_tumour = np.zeros_like(p)
    cfg = PostprocessConfig(weak_confidence=0.8, weak_support=0.5, max_kidneys=3)
    default = labels_from_probabilities(p, no_tumour, 1.0, PostprocessConfig(max_kidneys=3), support=support)
    np.testing.assert_array_equal(default > 0, p > 0)
    judged = labels_from_probabilities(p, no_tumour, 1.0, cfg, support=support)
    np.testing.assert_array_equal(judged > 0, (p > 0) & _columns(p.shape, [(2, 10), (50, 60)]))
    # the share is the region's own: the same doubtful region gets its side when the mask holds more of it
    support[5:15, 5:25, 75:81] = True
    np.testing.assert_array_equal(labels_from_probabilities(p, no_tumour, 1.0, cfg, support=support) > 0, p > 0)
    # without a localiser mask there is no second vote, and nothing is doubted
    np.testing.assert_array_equal(labels_from_probabilities(p, no_tumour, 1.0, cfg) > 0, p > 0)


def test_one_region_per_side_applies_to_two_regions_on_one_side():
    """Two regions right of the midline and none left: v1.5 keeps both (the per-side choice ran from
    three regions on); with one_per_side only the better supported one stays, and two regions on
    different sides are both kept either way."""
    p = np.zeros((20, 30, 60), np.float32)
    p[5:15, 5:25, 2:10] = 1.0  # the right kidney
    p[5:15, 5:25, 14:20] = 1.0  # a smaller region beside it, also right (x < 30)
    support = np.zeros(p.shape, bool)
    support[5:15, 5:25, 2:20] = True
    no_tumour = np.zeros_like(p)
    both = labels_from_probabilities(p, no_tumour, 1.0, midline_x_index=30.0, support=support)
    np.testing.assert_array_equal(both > 0, p > 0)
    cfg = PostprocessConfig(one_per_side=True)
    one = labels_from_probabilities(p, no_tumour, 1.0, cfg, midline_x_index=30.0, support=support)
    np.testing.assert_array_equal(one > 0, (p > 0) & _columns(p.shape, [(2, 10)]))
    p[:, :, 14:20] = 0.0
    p[5:15, 5:25, 40:46] = 1.0  # now on the left
    support[5:15, 5:25, 40:46] = True
    np.testing.assert_array_equal(labels_from_probabilities(p, no_tumour, 1.0, cfg, midline_x_index=30.0,
                                                            support=support) > 0, p > 0)
