"""Real-anatomy training data and real-scan evaluation: painted bodies, label mappings, metrics.

The bodies here are small synthetic label maps in TotalSegmentator's ids (vertebrae, liver, two
kidneys), so every expected answer is known: where the kidneys are, which HU each tissue gets.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.io import write_volume
from KidneyTumorSegLib.labelled_scans import LabelMapping, find_scans, parse_kidney_free
from KidneyTumorSegLib.phantoms import tissues as ts
from KidneyTumorSegLib.phantoms.bodies import Body, complete_organ_map, tissue_lut
from KidneyTumorSegLib.phantoms.realbody import RANDOM, UNENHANCED, PaintConfig, paint_body
from KidneyTumorSegLib.volume import Volume

TS_NAMES = {2: "kidney_right", 3: "kidney_left", 5: "liver", 29: "vertebrae_L3", 88: "iliopsoas_left"}
STILL = dict(deform=0.0, z_fov_mm=None, table_prob=0.0)


def toy_body(spacing=(2.0, 2.0, 2.0)) -> Body:
    """A 2 mm torso: a vertebral column in the middle, a kidney on each side, a liver in front."""
    a = np.zeros((50, 70, 90), np.uint8)
    a[:, 40:52, 39:51] = 29  # vertebrae (posterior)
    a[10:35, 35:50, 18:30] = 2  # right kidney (low x in LPS)
    a[14:39, 35:50, 60:72] = 3  # left kidney
    a[25:50, 12:32, 10:45] = 5  # liver
    vol = Volume(a, spacing, (-90.0, -70.0, 0.0), np.eye(3))
    lut, kidneys = tissue_lut(TS_NAMES)
    return Body(vol, lut, kidneys, "toy", dict(TS_NAMES))


def test_tissue_lut_maps_totalsegmentator_names_and_finds_both_kidneys():
    lut, kidneys = tissue_lut(TS_NAMES)
    assert kidneys == {"right": 2, "left": 3}
    assert lut[5] == ts.LIVER and lut[88] == ts.MUSCLE
    assert lut[0] == ts.AIR


def test_without_a_kits_mask_the_bodys_own_kidneys_are_the_labels():
    body = toy_body()
    ct, labels, info = paint_body(body, None, seed=1, config=PaintConfig(**STILL))
    assert ct.same_grid(labels) and ct.array.dtype == np.float32
    expected = np.isin(body.labels.array, (2, 3))
    assert labels.array.shape == expected.shape
    assert np.array_equal(labels.array > 0, expected)
    assert not (labels.array == 2).any()
    assert info["body"] == "toy"


@pytest.mark.parametrize("seed", [0, 1])
def test_unenhanced_and_contrast_scans_differ_where_real_scans_do(seed):
    body = toy_body()
    flat = PaintConfig(**STILL, mode_weights=(0.0, 1.0, 0.0), noise_sd=(1.0, 1.0), slice_thickness_mm=(1.0, 1.0))
    ct, labels, info = paint_body(body, None, seed, flat)
    assert info["phase"] == UNENHANCED
    kidney = np.median(ct.array[labels.array == 1])
    assert 10 < kidney < 60  # unenhanced kidney parenchyma: about 30-45 HU
    bone = ct.array[body.labels.array == 29]
    assert np.median(bone) > kidney + 50  # cancellous bone inside a cortical shell
    contrast = PaintConfig(**STILL, mode_weights=(1.0, 0.0, 0.0), noise_sd=(1.0, 1.0), slice_thickness_mm=(1.0, 1.0))
    ct2, labels2, info2 = paint_body(body, None, seed, contrast)
    assert info2["phase"] not in (UNENHANCED, RANDOM)
    assert np.median(ct2.array[labels2.array == 1]) > kidney + 40  # enhancing parenchyma


def test_outside_the_body_is_air_and_fat_surrounds_the_organs():
    body = toy_body()
    ct, _, _ = paint_body(body, None, 3, PaintConfig(**STILL, noise_sd=(1.0, 1.0)))
    assert np.median(ct.array[:, 0, :]) < -900  # the first row lies outside the body
    # between liver and kidneys nothing is labelled: fat, far below soft tissue
    gap = ct.array[20:30, 33:35, 35:38]
    assert np.median(gap) < 0


def test_a_kits_mask_replaces_each_kidney_at_its_place_with_its_tumour():
    body = toy_body()
    k = np.zeros((40, 40, 80), np.uint8)
    k[10:26, 10:24, 5:15] = 1  # right kidney of the mask
    k[12:20, 12:20, 12:18] = 2  # ... with a tumour
    k[12:28, 10:24, 60:70] = 1  # left kidney
    kits = Volume(k, (2.0, 2.0, 2.0), (300.0, 300.0, 300.0), np.eye(3))  # far away on purpose
    _, labels, _ = paint_body(body, kits, 5, PaintConfig(**STILL))
    lab = labels.array
    assert (lab == 2).sum() == (k == 2).sum()  # the tumour arrives whole
    right_body = np.argwhere(body.labels.array == 2).mean(0)
    placed = np.argwhere(lab[:, :, :45] > 0).mean(0)
    assert np.abs(placed - right_body).max() < 8  # voxels (16 mm): jitter of a few mm only
    assert (lab[:, :, 45:] > 0).sum() == (k[:, :, 40:] == 1).sum()
    assert not (lab[body.labels.array == 29] > 0).any()  # never through the vertebra


def test_a_single_kits_kidney_keeps_its_side_of_the_midline_it_was_drawn_beside():
    body = toy_body()
    k = np.zeros((30, 30, 30), np.uint8)
    k[5:25, 8:22, 8:20] = 1  # one kidney, in a cropped mask (KiTS23 style): the crop's centre says nothing
    kits = Volume(k, (2.0, 2.0, 2.0), (40.0, 0.0, 0.0), np.eye(3))  # x 40-98 mm
    for midline, side_slice in ((0.0, slice(45, None)), (200.0, slice(0, 45))):
        _, labels, _ = paint_body(body, kits, 4, PaintConfig(**STILL), kits_midline_x=midline)
        lab = labels.array > 0
        # left of the midline (larger x) -> placed at the body's left kidney, and vice versa
        assert lab[:, :, side_slice].sum() == (k > 0).sum()


def test_deformation_changes_the_body_but_keeps_kidneys_plausible():
    body = toy_body()
    _, a, _ = paint_body(body, None, 7, PaintConfig(deform=1.0, z_fov_mm=None, table_prob=0.0))
    _, b, _ = paint_body(body, None, 8, PaintConfig(deform=1.0, z_fov_mm=None, table_prob=0.0))
    original = np.isin(body.labels.array, (2, 3)).sum() * 0.008
    for lab in (a, b):
        assert 0.6 * original < (lab.array > 0).sum() * lab.voxel_volume_ml < 1.6 * original
    assert a.array.shape != b.array.shape or not np.array_equal(a.array, b.array)


def test_an_organ_map_is_completed_with_the_donors_spine_scaled_to_its_organs():
    donor = toy_body()
    # the same anatomy 10 % wider and shifted 30 mm, organs only, in BTCV ids (2/3 kidneys, 5 liver)
    a = np.zeros((50, 70, 100), np.uint8)
    src = donor.labels.array
    for btcv_id, ts_id in ((2, 2), (3, 3), (5, 5)):
        zyx = np.argwhere(src == ts_id)
        zyx[:, 2] = np.round((zyx[:, 2] - 45) * 1.1 + 50).astype(int)
        a[tuple(zyx.T)] = btcv_id
    organs = Volume(a, (2.0, 2.0, 2.0), (-70.0, -70.0, 0.0), np.eye(3))
    body = complete_organ_map(organs, "btcv", donor, (2.0, 2.0, 2.0))
    out = body.labels.array
    assert body.kidney_ids == {"right": 2, "left": 3}
    assert np.array_equal(out == 2, a == 2) and np.array_equal(out == 5, a == 5)  # the organ map's organs win
    spine = np.argwhere(out == 29)
    assert len(spine) > 0.7 * (src == 29).sum()  # the donor's vertebrae arrive ...
    centre_x = body.labels.origin[0] + 2.0 * spine[:, 2].mean()
    kidneys_x = [body.labels.origin[0] + 2.0 * np.argwhere(out == k)[:, 2].mean() for k in (2, 3)]
    assert abs(centre_x - np.mean(kidneys_x)) < 6.0  # ... between the (moved, widened) kidneys


def test_label_mapping_presets_custom_and_errors():
    arr = np.array([0, 1, 2, 3, 23, 4])
    assert list(LabelMapping.parse("totalseg").apply(arr)) == [0, 0, 1, 1, 1, 0]
    assert list(LabelMapping.parse("ircadb").apply(arr)) == [0, 1, 1, 0, 0, 0]
    assert list(LabelMapping.parse("kits").apply(arr)) == [0, 1, 2, 1, 0, 0]
    assert list(LabelMapping.parse("kidney=4;tumour=3").apply(arr)) == [0, 0, 0, 2, 0, 1]
    for bad in ("kidny=2", "kidney=a", "tumour=2"):
        with pytest.raises(InputError):
            LabelMapping.parse(bad)
    assert parse_kidney_free(["a", "b:3-5"]) == {"a": None, "b": (3, 6)}
    with pytest.raises(InputError):
        parse_kidney_free(["b:x"])


def _write_case(folder, name, ct_arr, lab_arr=None, names=None, spacing=(2.0, 2.0, 2.0)):
    case = folder / name
    case.mkdir(parents=True)
    write_volume(Volume(ct_arr, spacing), case / "ct.nii.gz")
    if lab_arr is not None:
        write_volume(Volume(lab_arr.astype(np.uint8), spacing), case / "labels.nii.gz")
    if names:
        (case / "labels.json").write_text(json.dumps(names))
    return case


def test_find_scans_reads_each_cases_own_label_names(tmp_path):
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:4, 2:4, 2:4] = 7
    lab[5:7, 5:7, 5:7] = 9
    ct = np.zeros((8, 8, 8), np.int16)
    _write_case(tmp_path, "a", ct, lab, {"7": "leftkidney", "9": "liver"})
    _write_case(tmp_path, "b", ct)  # no labels: kidney-free checks only
    scans = find_scans(tmp_path)
    assert [s.name for s in scans] == ["a", "b"]
    _, truth = scans[0].load()
    assert truth.array.sum() == 8 and set(np.unique(truth.array)) == {0, 1}
    assert scans[1].labels is None and scans[1].load()[1] is None
    with pytest.raises(InputError):
        find_scans(tmp_path / "a")


def test_surface_metrics_and_found_kidneys_on_known_masks():
    pytest.importorskip("monai")
    from KidneyTumorSegLib.training.evaluate_real import surface_metrics
    from KidneyTumorSegLib.training.metrics import kidneys_found

    truth = np.zeros((30, 30, 30), bool)
    truth[5:15, 5:15, 5:15] = True
    pred = np.roll(truth, 2, axis=2)  # shifted 2 voxels along x
    m = surface_metrics(pred, truth, (1.0, 1.0, 3.0))
    assert m["hd95_mm"] == pytest.approx(6.0, abs=0.01)  # 2 voxels of 3 mm
    assert 0.0 < m["nsd_2mm"] < 1.0
    same = surface_metrics(truth, truth, (1.0, 1.0, 1.0))
    assert same["hd95_mm"] == 0.0 and same["nsd_2mm"] == 1.0
    two = truth.copy()
    two[20:28, 20:28, 20:28] = True
    found = kidneys_found(truth, two)
    assert found["true_kidneys"] == 2 and found["found"] == 1
    chip = truth.copy()
    chip[25, 25, 25] = True  # a fragment of one voxel beside a solitary kidney is no second kidney
    assert kidneys_found(truth, chip) == {"true_kidneys": 1, "found": 1, "coverage": [1.0]}


def test_evaluate_scans_reports_dice_and_false_kidney_where_the_answer_is_known(tmp_path):
    from KidneyTumorSegLib.training.evaluate_real import evaluate_scans

    from .test_pipeline import body_ct, bundle_with_heads

    ct = body_ct()  # (36, 80, 90) at 1.6 x 1.6 x 4 mm
    lab = np.zeros(ct.array.shape, np.uint8)
    lab[10:20, 30:50, 20:40] = 1
    _write_case(tmp_path, "labelled", ct.array, lab, {"1": "rightkidney"}, ct.spacing)
    _write_case(tmp_path, "free", ct.array, None, None, ct.spacing)
    # "kidney everywhere": the whole scan becomes kidney, so the answers are counts of voxels
    report = evaluate_scans(bundle_with_heads(10, 10, 10, -10), find_scans(tmp_path), {"free": None},
                            device="cpu", overlay_dir=tmp_path / "png")
    rows = {r["case"]: r for r in report["cases"]}
    n, t = lab.size, int(lab.sum())
    assert rows["labelled"]["kidney_dice"] == pytest.approx(2 * t / (n + t), abs=1e-3)
    assert rows["labelled"]["found"] == 1
    free_slices = 36 - (20 + 3) + 10 - 3  # beyond the kidney's slices by more than 10 mm (3 slices)
    assert rows["labelled"]["kidney_free_slices"] == free_slices
    per_slice_ml = 80 * 90 * ct.voxel_volume_ml
    assert rows["labelled"]["false_kidney_ml_in_free_slices"] == pytest.approx(free_slices * per_slice_ml, rel=1e-3)
    assert rows["free"]["false_kidney_ml_in_free_slices"] == pytest.approx(36 * per_slice_ml, rel=1e-3)
    assert (tmp_path / "png" / "labelled.png").exists()


def test_held_out_body_phantoms_carry_their_draw_into_the_evaluation_report(tmp_path):
    """Each phantom painted into a body reports its contrast phase and tumour type, so that a missed
    tumour can be read against how it was drawn (an iso-attenuating one is nearly invisible)."""
    from KidneyTumorSegLib.phantoms.intensity import PHASES, TUMOUR_TYPES
    from KidneyTumorSegLib.training.evaluate import evaluate, real_body_phantom
    from KidneyTumorSegLib.weights import seeded_bundle

    mask = np.zeros((40, 60, 80), np.uint8)
    mask[10:30, 20:40, 10:22] = 1  # right kidney
    mask[18:24, 26:32, 12:18] = 2  # its tumour
    mask[10:30, 20:40, 58:70] = 1  # left kidney
    path = tmp_path / "case_00001" / "segmentation.nii.gz"
    path.parent.mkdir()
    write_volume(Volume(mask, (2.0, 2.0, 2.0), (-80.0, -60.0, 10.0), np.eye(3)), path)
    ct, truth, info = real_body_phantom(toy_body(), path, "case_00001", 0, (2.0, 2.0, 2.0))
    assert info["phase"] in PHASES and info["tumour_type"] in TUMOUR_TYPES and info["body"] == "toy"
    assert (truth.array == 2).any()
    report = evaluate(seeded_bundle(), [("toy@case_00001", ct, truth, info), ("plain", ct, truth)], device="cpu")
    drawn, plain = report["cases"]
    assert drawn["phantom"]["phase"] == info["phase"] and drawn["phantom"]["tumour_type"] == info["tumour_type"]
    assert "phantom" not in plain
    by_type = report["tumour_dice_by_type"]
    assert list(by_type) == [info["tumour_type"]] and by_type[info["tumour_type"]]["n"] == 1  # the plain case has no draw
    assert by_type[info["tumour_type"]]["mean"] == drawn["tumour_dice"]
    # the detector's phase is kept beside the painted one, and tabulated for drawn phantoms only
    assert report["contrast_phase_detected"] == {info["phase"]: {str(drawn["contrast_detected"]): 1}}
    json.dumps(report)  # the draw stays JSON-able


def test_a_displaced_kidney_is_painted_lower_and_nearer_the_midline_and_nothing_else_changes():
    """--displace-kidney's painting: one kidney moves caudally by the drawn distance (LPS: -z) and
    towards the midline; the other kidney and every other draw stay as they were without it."""
    body = toy_body()
    plain_ct, plain, plain_info = paint_body(body, None, seed=3, config=PaintConfig(**STILL))
    ct, moved, info = paint_body(body, None, seed=3, config=PaintConfig(**STILL, displaced_kidney_mm=(20.0, 30.0)))
    d = info["displaced"]
    assert 20.0 - 2.0 <= d["down_mm"] <= 30.0 + 2.0 and d["medial_mm"] >= 0.0
    assert {k: v for k, v in info.items() if k != "displaced"} == plain_info
    sides = {"right": lambda a: a[:, :, :45], "left": lambda a: a[:, :, 45:]}  # midline at x index 45
    mover, other = sides[d["side"]], sides["left" if d["side"] == "right" else "right"]
    np.testing.assert_array_equal(other(moved.array) > 0, other(plain.array) > 0)
    z_plain, z_moved = (np.argwhere(mover(a.array) > 0)[:, 0].mean() for a in (plain, moved))
    assert (z_plain - z_moved) * 2.0 == pytest.approx(d["down_mm"], abs=2.5)  # 2 mm slices; a few voxels may clip
    x_plain, x_moved = (np.argwhere(mover(a.array) > 0)[:, 2].mean() for a in (plain, moved))
    assert abs(x_moved - 45) <= abs(x_plain - 45)


def test_a_removed_kidney_leaves_the_other_kidney_and_every_draw_as_they_were():
    """--remove-kidney's painting: one side's kidney is gone (its fossa has no label), the other
    side's labels and every draw of the painting are those of the same seed without it."""
    body = toy_body()
    plain_ct, plain, plain_info = paint_body(body, None, seed=3, config=PaintConfig(**STILL))
    ct, solitary, info = paint_body(body, None, seed=3, config=PaintConfig(**STILL, missing_kidney=True))
    assert {k: v for k, v in info.items() if k != "missing"} == plain_info
    sides = {"right": lambda a: a[:, :, :45], "left": lambda a: a[:, :, 45:]}  # midline at x index 45
    gone, kept = sides[info["missing"]["side"]], sides["left" if info["missing"]["side"] == "right" else "right"]
    assert (gone(plain.array) > 0).sum() > 100 and not (gone(solitary.array) > 0).any()
    np.testing.assert_array_equal(kept(solitary.array), kept(plain.array))
    with pytest.raises(ValueError, match="not both"):
        paint_body(body, None, seed=3, config=PaintConfig(**STILL, missing_kidney=True, displaced_kidney_mm=(20.0, 30.0)))


def test_remove_kidney_needs_painted_bodies_and_no_displacement(tmp_path, capsys):
    from KidneyTumorSegLib.cli import main

    for args, words in ((["--remove-kidney"], "--in-bodies"),
                        (["--remove-kidney", "--displace-kidney", "60,120", "--in-bodies", str(tmp_path)], "one of them")):
        code = main(["evaluate", "--kits-masks", str(tmp_path), "--cases", "case_00000", *args])
        err = capsys.readouterr().err
        assert code != 0 and words in err and "Traceback" not in err


@pytest.mark.parametrize("feet_first", [False, True])
def test_a_cut_field_of_view_keeps_the_slices_below_or_above_the_kidneys_middle(feet_first):
    """--cut-field: image and truth cut alike at the middle of the kidneys' head-foot extent (both
    kidneys together), the lower or the upper part kept whichever way the slices run."""
    from KidneyTumorSegLib.training.evaluate import cut_at_kidneys_middle, cut_cases

    truth_array = np.zeros((40, 8, 8), np.uint8)
    truth_array[10:21, 2:4, 1:3] = 1  # one kidney in slices 10-20
    truth_array[14:31, 2:4, 5:7] = 1  # the other, higher, in 14-30: together 10-30, middle 20
    truth_array[28:30, 2:4, 5:7] = 2
    direction = np.diag([1.0, 1.0, -1.0 if feet_first else 1.0])
    origin = (0.0, 0.0, 80.0 if feet_first else 0.0)  # slice k at z = 80 - 2k or 2k mm
    if feet_first:
        truth_array = truth_array[::-1].copy()  # the same anatomy, stored from the head down
    truth = Volume(truth_array, (1.0, 1.0, 2.0), origin, direction)
    ct = truth.with_array(np.where(truth_array > 0, 150.0, -100.0).astype(np.float32))
    z = lambda v: v.index_to_physical(np.array([[0, 0, k] for k in range(v.array.shape[0])], float))[:, 2]  # noqa: E731
    for keep in ("below", "above"):
        cut_ct, cut_truth = cut_at_kidneys_middle(ct, truth, keep)
        assert cut_ct.same_grid(cut_truth) and cut_ct.array.shape[1:] == ct.array.shape[1:]
        kept_z = z(cut_truth)
        if keep == "below":
            assert kept_z.max() == pytest.approx(38.0 if not feet_first else 40.0)
            assert kept_z.min() == pytest.approx(0.0 if not feet_first else 2.0)
            assert not (cut_truth.array == 2).any()  # the tumour lies high
        else:
            assert kept_z.min() == pytest.approx(40.0 if not feet_first else 42.0) and (cut_truth.array == 2).any()
        assert cut_truth.array.shape[0] < truth.array.shape[0]
        np.testing.assert_array_equal(cut_ct.array > 0, cut_truth.array > 0)  # image and truth cut alike
    (case, cut_ct, cut_truth, drawn), = cut_cases([("c", ct, truth, {"phase": "x"})], "above")
    assert case == "c" and drawn == {"phase": "x"} and cut_truth.array.shape[0] < truth.array.shape[0]
    with pytest.raises(ValueError, match="below, above"):
        cut_at_kidneys_middle(ct, truth, "middle")


def test_cut_field_is_for_phantoms_only(tmp_path, capsys):
    from KidneyTumorSegLib.cli import main

    code = main(["evaluate", "--scans", str(tmp_path), "--cut-field", "below"])
    err = capsys.readouterr().err
    assert code != 0 and "scanner_variants" in err and "Traceback" not in err


def test_displace_kidney_needs_painted_bodies_and_two_distances(tmp_path, capsys):
    from KidneyTumorSegLib.cli import main

    for args, words in ((["--displace-kidney", "60,120"], "--in-bodies"), (["--displace-kidney", "60"], "LO,HI"),
                        (["--displace-kidney", "90,30", "--in-bodies", str(tmp_path)], "LO <= HI")):
        code = main(["evaluate", "--kits-masks", str(tmp_path), "--cases", "case_00000", *args])
        err = capsys.readouterr().err
        assert code != 0 and words in err and "Traceback" not in err


def test_a_variant_of_a_scan_seen_in_training_counts_as_seen():
    from KidneyTumorSegLib.training.evaluate_real import derived_from_any

    seen = {"ircadb1_1"}
    assert derived_from_any("ircadb1_1", seen) and derived_from_any("ircadb1_1_slice5mm", seen)
    assert not derived_from_any("ircadb1_17", seen) and not derived_from_any("ircadb1_17_noise25", seen)
    assert not derived_from_any("totalseg_s0009_slice3mm", seen)


def test_evaluate_scans_counts_kidney_predicted_inside_the_liver_and_spleen(tmp_path):
    """A prediction that covers the labelled liver is reported per organ, in mL."""
    from KidneyTumorSegLib.labelled_scans import find_scans
    from KidneyTumorSegLib.training.evaluate_real import evaluate_scans

    from .test_pipeline import body_ct, bundle_with_heads

    ct = body_ct()  # (36, 80, 90) at 1.6 x 1.6 x 4 mm
    lab = np.zeros(ct.array.shape, np.uint8)
    lab[10:20, 30:50, 20:40] = 1  # right kidney
    lab[5:30, 10:30, 50:80] = 13  # liver
    _write_case(tmp_path, "withliver", ct.array, lab, {"1": "rightkidney", "13": "Liver", "24": "spleen"}, ct.spacing)
    _write_case(tmp_path, "kidneyonly", ct.array, lab, {"1": "rightkidney"}, ct.spacing)
    assert find_scans(tmp_path)[1].organ_ids() == {"liver": 13, "spleen": 24}
    report = evaluate_scans(bundle_with_heads(10, 10, 10, -10), find_scans(tmp_path), device="cpu")  # kidney everywhere
    rows = {r["case"]: r for r in report["cases"]}
    liver_ml = float((lab == 13).sum()) * ct.voxel_volume_ml
    assert rows["withliver"]["predicted_in_organs_ml"] == {"liver": pytest.approx(liver_ml, abs=0.1), "spleen": 0.0}
    assert "predicted_in_organs_ml" not in rows["kidneyonly"]
