"""A kidney is never encased in bone and always lies in some fat: components the skull or a bone ring
surrounds, or that soft tissue packs with no fat around them, are found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.plausibility import (
    PlausibilityConfig,
    implausible_regions,
    rim_composition,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_ct"


def _scene(shape=(20, 80, 80)):
    """Fat everywhere (-100 HU); in-plane coordinates in mm on a 1 mm grid."""
    hu = np.full(shape, -100.0, np.float32)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return hu, zz, yy, xx


def _blob(yy, xx, cy, cx, r):
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_a_kidney_in_fat_is_not_encased_and_one_inside_a_skull_is():
    hu, zz, yy, xx = _scene()
    labels = np.zeros(hu.shape, np.uint8)
    kidney = _blob(yy, xx, 40, 20, 10) & (zz >= 4) & (zz < 16)
    brain = _blob(yy, xx, 40, 60, 10) & (zz >= 4) & (zz < 16)
    labels[kidney] = 1
    labels[brain] = 1
    labels[_blob(yy, xx, 40, 62, 3) & (zz >= 8) & (zz < 12)] = 2  # a 'tumour' inside the encased one
    hu[kidney | brain] = 35.0
    # the skull: a 4 mm shell of cortical bone around the right-hand blob, 1 mm away from it
    skull = _blob(yy, xx, 40, 60, 15) & ~_blob(yy, xx, 40, 60, 11)
    hu[skull] = 900.0
    encased, found = implausible_regions(labels, hu, (1.0, 1.0, 1.0), 0.001)
    assert not encased[kidney].any()
    assert encased[brain].all() and encased[labels == 2].all()  # its tumour goes with it
    assert len(found) == 1 and found[0]["bone_rim_fraction"] > 0.5 and found[0]["reason"] == "bone"
    assert found[0]["ml"] == pytest.approx(brain.sum() * 0.001, abs=0.05)


def test_a_region_packed_in_soft_tissue_has_no_fat_around_it_and_is_found():
    """With the check at 5 %, brain-like tissue all round (the cerebellum of a head scan) fails and a
    kidney with fat on only a fifth of its rim, liver and muscle against the rest, passes; with the
    check off (the default, and v1.6's) both pass."""
    hu, zz, yy, xx = _scene((20, 80, 120))
    labels = np.zeros(hu.shape, np.uint8)
    slab = (zz >= 4) & (zz < 16)
    brain = _blob(yy, xx, 40, 25, 10) & slab
    kidney = _blob(yy, xx, 40, 85, 10) & slab
    hu[:, :, :55] = 35.0  # soft tissue fills the left part of the scene, around the 'brain'
    hu[:, :, 55:] = 60.0  # liver and muscle around the kidney ...
    hu[(yy - 40) ** 2 + (xx - 85) ** 2 <= 15 ** 2] = 60.0
    hu[_blob(yy, xx, 40, 85, 15) & (xx >= 95)] = -100.0  # ... but for fat against its lateral fifth
    hu[brain] = 35.0
    hu[kidney] = 150.0
    labels[brain | kidney] = 1
    cfg = PlausibilityConfig()
    assert rim_composition(brain, hu, (1.0, 1.0, 1.0), cfg)["fat"] == 0.0
    assert 0.1 < rim_composition(kidney, hu, (1.0, 1.0, 1.0), cfg)["fat"] < 0.3
    failed, found = implausible_regions(labels, hu, (1.0, 1.0, 1.0), 0.001, PlausibilityConfig(min_fat_fraction=0.05))
    assert failed[brain].all() and not failed[kidney].any()
    assert [r["reason"] for r in found] == ["no_fat"] and found[0]["fat_rim_fraction"] == 0.0
    failed, found = implausible_regions(labels, hu, (1.0, 1.0, 1.0), 0.001)  # off unless asked for
    assert found == [] and not failed.any()


def test_a_rib_or_vertebra_against_one_side_of_the_kidney_is_not_encasing():
    hu, zz, yy, xx = _scene()
    labels = np.zeros(hu.shape, np.uint8)
    kidney = _blob(yy, xx, 40, 40, 12) & (zz >= 2) & (zz < 18)
    labels[kidney] = 1
    hu[kidney] = 150.0
    hu[_blob(yy, xx, 40, 57, 4)] = 700.0  # a rib touching the kidney's rim
    share = rim_composition(kidney, hu, (1.0, 1.0, 1.0), PlausibilityConfig())["bone"]
    assert 0.0 < share < 0.15
    encased, found = implausible_regions(labels, hu, (1.0, 1.0, 1.0), 0.001)
    assert not encased.any() and found == []


def test_the_rim_is_measured_in_millimetres_on_anisotropic_pixels():
    # pixels of 2 mm in x and 1 mm in y: a circle in millimetres is an ellipse in voxels
    hu, zz, yy, xx = _scene((10, 80, 40))
    ym, xm = yy * 1.0, xx * 2.0
    brain = _blob(ym, xm, 40, 40, 10)  # its edge at x = 50 mm
    hu[brain] = 35.0
    hu[(xm >= 54) & (xm <= 60)] = 900.0  # a bone plate 4 mm beyond it, along x only
    spacing = (2.0, 1.0, 3.0)  # x, y, z
    assert rim_composition(brain, hu, spacing, PlausibilityConfig(rim_mm=5.0))["bone"] > 0.0
    assert rim_composition(brain, hu, spacing, PlausibilityConfig(rim_mm=3.0))["bone"] == 0.0
    # x and y spacing swapped, the plate would seem 2 mm away and reach into a 3 mm rim
    assert rim_composition(brain, hu, (1.0, 2.0, 3.0), PlausibilityConfig(rim_mm=3.0))["bone"] > 0.0


def test_a_contrast_filled_sinus_inside_the_kidney_is_not_rim():
    hu, zz, yy, xx = _scene()
    kidney = _blob(yy, xx, 40, 40, 14) & ~_blob(yy, xx, 40, 44, 5) & (zz >= 2) & (zz < 18)  # a hollow sinus
    hu[kidney] = 150.0
    hu[_blob(yy, xx, 40, 44, 5)] = 900.0  # excretory-phase urine in the collecting system
    assert rim_composition(kidney, hu, (1.0, 1.0, 1.0), PlausibilityConfig())["bone"] == 0.0


@pytest.mark.skipif(not (REAL / "ircadb1_1" / "labels.nii.gz").exists(), reason="real CTs not available")
@pytest.mark.parametrize("case, ids", [("ircadb1_1", (1, 2)), ("totalseg_s0009", (2, 3))])
def test_real_kidneys_are_never_taken_for_encased(case, ids):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(REAL / case / "ct.nii.gz"))
    hu = sitk.GetArrayFromImage(image)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / case / "labels.nii.gz")))
    labels = np.isin(truth, ids).astype(np.uint8)
    encased, found = implausible_regions(labels, hu, image.GetSpacing(), 0.001)
    assert found == [] and not encased.any()
    from scipy import ndimage

    comps, n = ndimage.label(labels > 0)
    big = [i for i in range(1, n + 1) if (comps == i).sum() * np.prod(image.GetSpacing()) > 20_000]
    assert len(big) == 2  # both kidneys, each with far more fat around it than the check asks
    for i in big:
        assert rim_composition(comps == i, hu, image.GetSpacing(), PlausibilityConfig())["fat"] > 0.25


@pytest.mark.parametrize("surround", ["bone", "no_fat"])
def test_a_discarded_region_hands_its_side_to_the_next_best_region(surround):
    """A region encased in bone, or packed in soft tissue with no fat around it, that out-ranks the
    true kidney on its side is discarded, and the kidney takes the side instead of the side staying
    empty."""
    from KidneyTumorSegLib.pipeline import KidneysFound, Pipeline
    from KidneyTumorSegLib.volume import Volume
    from KidneyTumorSegLib.weights import seeded_bundle

    hu, zz, yy, xx = _scene((20, 80, 100))
    slab = (zz >= 4) & (zz < 16)
    kidney_r = _blob(yy, xx, 40, 15, 7) & slab
    encased = _blob(yy, xx, 40, 42, 10) & slab  # larger, on the same side of the midline (x index 50)
    kidney_l = _blob(yy, xx, 40, 80, 7) & slab
    hu[kidney_r | kidney_l | encased] = 35.0
    if surround == "bone":
        hu[_blob(yy, xx, 40, 42, 15) & ~_blob(yy, xx, 40, 42, 11)] = 900.0
    else:  # soft tissue right against it, the 5 mm rim and more
        hu[_blob(yy, xx, 40, 42, 15) & ~(_blob(yy, xx, 40, 42, 10) & slab)] = 40.0
    probs = np.zeros((2,) + hu.shape, np.float32)
    probs[0][kidney_r | kidney_l | encased] = 0.95
    canvas = Volume(hu, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))  # 2 mm voxels: kidneys of 15 mL
    found = KidneysFound(canvas, midline_mm=100.0, mask=(probs[0] > 0.5))  # the localiser agreed on all three
    bundle = seeded_bundle()
    bundle.config.segmenter.min_rim_fat = 0.05  # the fat check is a setting, off unless set
    pipe = Pipeline(bundle, device="cpu")
    labels, discarded = pipe._labels_on_canvas(probs, canvas, found)
    np.testing.assert_array_equal(labels > 0, kidney_r | kidney_l)
    assert len(discarded) == 1 and discarded[0]["ml"] == pytest.approx(encased.sum() * 0.008, abs=0.05)
    assert discarded[0]["reason"] == surround


def test_only_regions_running_into_a_face_the_scan_continues_behind_are_reported():
    from KidneyTumorSegLib.plausibility import regions_reaching_faces

    labels = np.zeros((20, 30, 40), np.uint8)
    labels[5:15, 5:15, 5:15] = 1  # a kidney well inside the canvas
    labels[2:10, 10:20, 30:40] = 1  # an organ running into the high-x face
    labels[4:8, 12:18, 32:40] = 2  # a part of it labelled tumour
    labels[0:4, 20:26, 5:10] = 1  # a kidney cut by the scan's lowest slice (z0: no image beyond)
    open_faces = {"z0": False, "z1": True, "y0": True, "y1": True, "x0": True, "x1": True}
    found = regions_reaching_faces(labels, open_faces, voxel_ml=0.008)
    organ = labels[2:10, 10:20, 30:40]
    assert len(found) == 1 and found[0]["faces"] == ["x1"]
    assert found[0]["ml"] == pytest.approx(organ.size * 0.008, abs=0.05)
    assert found[0]["tumour_share"] == pytest.approx((organ == 2).mean(), abs=0.01)
    assert found[0]["x_index"] == pytest.approx(34.5)
    # with z0 open as well, the cut kidney counts too; with every face closed nothing does
    assert len(regions_reaching_faces(labels, dict(open_faces, z0=True), 0.008)) == 2
    assert regions_reaching_faces(labels, dict.fromkeys(open_faces, False), 0.008) == []


def test_the_faces_inside_a_scan_are_those_it_continues_behind():
    from KidneyTumorSegLib.resampling import faces_inside
    from KidneyTumorSegLib.volume import Volume

    scan = Volume(np.zeros((50, 100, 100), np.float32), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))  # x, y 0-99, z 0-147
    canvas = Volume(np.zeros((20, 30, 40), np.float32), (2.0, 2.0, 2.0), (20.0, 0.0, 110.0))
    # x: 20-98 inside 0-99 (the high face 1 mm from the edge: under half a 2 mm voxel); y from the edge; z to 148
    assert faces_inside(canvas, scan) == {"x0": True, "x1": False, "y0": False, "y1": True, "z0": True, "z1": False}


def test_a_region_at_an_open_face_is_warned_about_with_its_side():
    from KidneyTumorSegLib.pipeline import AT_EDGE, KidneysFound, Pipeline
    from KidneyTumorSegLib.volume import Volume

    scan = Volume(np.zeros((60, 100, 100), np.float32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    canvas = Volume(np.zeros((20, 30, 40), np.float32), (2.0, 2.0, 2.0), (10.0, 10.0, 20.0))
    labels = np.zeros(canvas.array.shape, np.uint8)
    labels[5:15, 5:25, 30:40] = 2  # runs into x1, at high x: the patient's left in LPS
    labels[5:15, 5:25, 2:12] = 1  # a kidney inside the canvas on the right
    found = KidneysFound(canvas, [], midline_mm=10.0 + 2.0 * 20)
    regions = Pipeline._regions_at_edge(labels, canvas, scan, found)
    assert regions == [{"ml": 16.0, "faces": ["x1"], "tumour_share": 1.0, "side": "left"}]
    text = AT_EDGE.format(side="left", ml=16.0, tumour=100.0)
    assert "patient's left (16 mL, 100 % of it tumour) runs on sideways" in text and "check that it is a kidney" in text
    assert "large tumour" in text and "spleen" in text  # 5 of 12 large true tumours reach a side face
    # the top and bottom faces do not count: a kidney pole the z-localiser's slices cut short is no organ
    labels[:] = 0
    labels[12:20, 5:25, 2:12] = 1
    assert Pipeline._regions_at_edge(labels, canvas, scan, found) == []


def test_boxes_grow_past_a_kidney_pole_the_segmented_slices_cut():
    """A kept region reaching the canvas's top while the scan goes on: the boxes on its side grow
    GROW_MM upwards (clipped to the grid), the other side's stay; at the scan's own edge nothing grows."""
    from KidneyTumorSegLib.localisation import Box
    from KidneyTumorSegLib.pipeline import GROW_MM, KidneysFound, Pipeline
    from KidneyTumorSegLib.volume import Volume

    scan = Volume(np.zeros((100, 100, 100), np.float32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))  # z 0-198 mm
    grid = Volume(np.zeros((50, 25, 25), np.float32), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))  # the localiser grid
    canvas = Volume(np.zeros((30, 30, 40), np.float32), (2.0, 2.0, 2.0), (10.0, 10.0, 40.0))  # z 40-98 mm
    labels = np.zeros(canvas.array.shape, np.uint8)
    labels[20:30, 5:25, 28:38] = 1  # the patient's left (high x), up to the canvas's top
    labels[5:15, 5:25, 2:12] = 1  # the right one, inside
    found = KidneysFound(grid, [Box((12, 4, 2), (24, 16, 10)), Box((12, 4, 15), (24, 16, 23))], midline_mm=50.0)
    grown = Pipeline._grown_boxes(labels, canvas, scan, found)
    step = int(np.ceil(GROW_MM / 4.0))
    assert grown[0] == found.boxes[0]  # the right box (low x) stays
    assert grown[1] == Box((12, 4, 15), (24 + step, 16, 23))
    # a box already at the grid's top cannot grow: nothing changes, so no second run
    found.boxes[1] = Box((12, 4, 15), (50, 16, 23))
    assert Pipeline._grown_boxes(labels, canvas, scan, found) is None
    # the scan ends at the canvas's top: the pole is cut by the scan, not by the slices chosen
    short = Volume(np.zeros((50, 100, 100), np.float32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))  # z 0-98 mm
    assert Pipeline._grown_boxes(labels, canvas, short, found) is None


def test_boxes_grow_downwards_in_slices_of_the_grids_own_z_spacing():
    """The growth is GROW_MM in the localiser grid's z spacing (not its x spacing), and stops at
    the grid's first slice."""
    from KidneyTumorSegLib.localisation import Box
    from KidneyTumorSegLib.pipeline import GROW_MM, KidneysFound, Pipeline
    from KidneyTumorSegLib.volume import Volume

    scan = Volume(np.zeros((100, 100, 100), np.float32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    grid = Volume(np.zeros((40, 25, 50), np.float32), (2.0, 4.0, 5.0), (0.0, 0.0, 0.0))  # z slices 5 mm
    canvas = Volume(np.zeros((30, 30, 40), np.float32), (2.0, 2.0, 2.0), (10.0, 10.0, 60.0))  # z 60-118 mm
    labels = np.zeros(canvas.array.shape, np.uint8)
    labels[0:10, 5:25, 2:12] = 1  # the patient's right, down to the canvas's bottom
    found = KidneysFound(grid, [Box((14, 4, 5), (24, 16, 20)), Box((2, 4, 30), (24, 16, 45))], midline_mm=50.0)
    grown = Pipeline._grown_boxes(labels, canvas, scan, found)
    assert grown[0] == Box((14 - int(np.ceil(GROW_MM / 5.0)), 4, 5), (24, 16, 20))  # 8 slices of 5 mm
    assert grown[1] == found.boxes[1]  # the left box stays
    found.boxes[0] = Box((3, 4, 5), (24, 16, 20))
    assert Pipeline._grown_boxes(labels, canvas, scan, found)[0].lo[0] == 0  # clipped at the first slice
