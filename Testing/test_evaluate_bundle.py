"""scripts/evaluate_bundle.py's validation phantoms: the masks a split validated on, in place and
displaced, each dataset from its own folder (the commands are recorded, not run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import evaluate_bundle  # noqa: E402


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for ds, case in (("kits19", "case_00063"), ("kits19", "case_00166"), ("kits23", "case_00493"), ("kits19", "case_00003")):
        (data / ds / case).mkdir(parents=True)
        (data / ds / case / "segmentation.nii.gz").write_bytes(b"")
    return data


def test_validation_masks_come_from_the_split_per_dataset(tmp_path):
    data = _data(tmp_path)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["s0001@case_00003"], "val": [
        "btcv_label0004@case_00166", "s0004@case_00493", "btcv_label0001@case_00063~v2", "btcv_label0003@dispval0"]}))
    # the displaced validation case is no KiTS mask; a training mask is never taken
    assert evaluate_bundle.validation_masks(split, data) == {"kits19": ["case_00063", "case_00166"],
                                                             "kits23": ["case_00493"]}


def test_each_validation_dataset_is_evaluated_in_place_and_displaced(tmp_path):
    data = _data(tmp_path)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": ["a@case_00063", "b@case_00493"]}))
    calls = []
    args = argparse.Namespace(data=str(data), validation=str(split), bundle="b.safetensors", threads="1",
                              grid_mm="1.5,1.5,3.0")
    code = evaluate_bundle.evaluate_validation(lambda argv: calls.append(argv) or 0, args, tmp_path, "BODIES")
    assert code == 0
    outs = [Path(c[c.index("--out") + 1]).name for c in calls]
    assert outs == ["validation_bodies_kits19.json", "validation_bodies_kits19_displaced.json",
                    "validation_bodies_kits23.json", "validation_bodies_kits23_displaced.json"]
    for c in calls:
        assert c[c.index("--kits-masks") + 1] == str(data / ("kits23" if "kits23" in c[-1] else "kits19"))
        assert c[c.index("--cases") + 1] == ("case_00493" if "kits23" in c[-1] else "case_00063")
        assert ("--displace-kidney" in c) == c[-1].endswith("_displaced.json")
    # a failing evaluation stops the rest and passes its exit code on
    calls.clear()
    assert evaluate_bundle.evaluate_validation(lambda argv: calls.append(argv) or 2, args, tmp_path, "BODIES") == 2
    assert len(calls) == 1


def test_large_tumours_are_the_held_out_masks_over_the_volume_given(tmp_path):
    """Held out: every 7th mask from the 4th; of those, the ones whose tumour is over the limit,
    largest first. Real NIfTI files with known tumour volumes."""
    import numpy as np
    import SimpleITK as sitk

    data = tmp_path / "data"
    tumour_ml = {3: 500.0, 10: 100.0, 17: 900.0, 4: 2000.0}  # case_00004 is not held out
    for i in range(21):
        folder = data / "kits19" / f"case_{i:05d}"
        folder.mkdir(parents=True)
        labels = np.zeros((20, 20, 20), np.uint8)  # 8 mm voxels: 0.512 mL each
        labels.flat[: int(round(tumour_ml.get(i, 0.0) / 0.512))] = 2
        image = sitk.GetImageFromArray(labels)
        image.SetSpacing((8.0, 8.0, 8.0))
        sitk.WriteImage(image, str(folder / "segmentation.nii.gz"))
    assert evaluate_bundle.held_out(data, "kits19") == ["case_00003", "case_00010", "case_00017"]
    assert evaluate_bundle.large_tumour_masks(data, 400.0) == {"kits19": ["case_00017", "case_00003"]}
    assert evaluate_bundle.large_tumour_masks(data, 1000.0) == {}


def test_tuning_sets_run_per_set_and_dataset_and_add_up(tmp_path, capsys):
    masks = [f"case_{i:05d}" for i in range(200, 230)]  # 10 KiTS19 masks, 20 KiTS23
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"masks": masks, "tumour_ml": {m: float(i) for i, m in enumerate(masks)}}))
    calls = []

    def cli(argv):  # stands in for `evaluate`: one case per call, its kidney Dice from the dataset
        calls.append(argv)
        ds = Path(argv[argv.index("--kits-masks") + 1]).name
        kidney = 0.9 if ds == "kits19" else 0.6
        Path(argv[argv.index("--out") + 1]).write_text(json.dumps({
            "kidney_dice": {"n": 1, "mean": kidney}, "tumour_dice": {"n": 1, "mean": 0.5},
            "false_tumour": {"ml_total": 1.0}, "tumours_found": {"> 40 mL": "1 of 1"}, "kidneys_found": "2 of 2"}))
        return 0

    args = argparse.Namespace(data=str(tmp_path), bundle="b.safetensors", threads="1", grid_mm="1.5,1.5,3.0",
                              tuning_baseline=None, tuning_sets=None)
    assert evaluate_bundle.evaluate_tuning(cli, args, tmp_path, "BODIES", pool) == 0
    outs = [Path(c[c.index("--out") + 1]).name for c in calls]
    sets = ("in_place", "displaced", "missing", "large", "cut_below", "cut_above")
    assert outs == [f"tuning_{s}_{ds}.json" for s in sets for ds in ("kits19", "kits23")]
    assert [("--displace-kidney" in c) for c in calls] == [False, False, True, True] + [False] * 8
    assert [("--remove-kidney" in c) for c in calls] == [False] * 4 + [True, True] + [False] * 6
    assert [c[c.index("--cut-field") + 1] if "--cut-field" in c else None for c in calls] == \
        [None] * 8 + ["below", "below", "above", "above"]
    assert calls[8][calls[8].index("--cases") + 1] == calls[0][calls[0].index("--cases") + 1]  # the in-place masks
    # the tuning set (every 10th from the 6th): case_00205 in KiTS19, case_00215 and case_00225 in KiTS23
    assert calls[0][calls[0].index("--cases") + 1] == "case_00205"
    assert calls[1][calls[1].index("--cases") + 1] == "case_00215,case_00225"
    # the large set: each dataset's six largest tumours, largest first
    assert calls[7][calls[7].index("--cases") + 1] == ",".join(f"case_{i:05d}" for i in range(229, 223, -1))
    summary = json.loads((tmp_path / "tuning_summary.json").read_text())
    assert summary["in_place"]["cases"] == 2 and summary["in_place"]["kidney_dice"] == 0.75
    assert summary["large"]["kidneys_found"] == "4 of 4" and summary["large"]["false_tumour_ml"] == 2.0

    args.tuning_baseline = str(tmp_path / "tuning_summary.json")
    assert evaluate_bundle.evaluate_tuning(cli, args, tmp_path, "BODIES", pool) == 0
    assert "kidney_dice: 0.75 -> 0.75 (+0)" in capsys.readouterr().out


def test_tuning_sets_can_be_run_in_stages_into_one_summary(tmp_path, capsys):
    masks = [f"case_{i:05d}" for i in range(200, 230)]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"masks": masks, "tumour_ml": {m: float(i) for i, m in enumerate(masks)}}))
    calls = []

    def cli(argv):
        calls.append(argv)
        kidney = 0.8 if "--remove-kidney" in argv else 0.9
        Path(argv[argv.index("--out") + 1]).write_text(json.dumps({
            "kidney_dice": {"n": 1, "mean": kidney}, "tumour_dice": {"n": 1, "mean": 0.5},
            "false_tumour": {"ml_total": 1.0}, "tumours_found": {}, "kidneys_found": "2 of 2"}))
        return 0

    args = argparse.Namespace(data=str(tmp_path), bundle="b.safetensors", threads="1", grid_mm="1.5,1.5,3.0",
                              tuning_baseline=None, tuning_sets="missing")
    assert evaluate_bundle.evaluate_tuning(cli, args, tmp_path, "BODIES", pool) == 0
    assert [Path(c[c.index("--out") + 1]).name for c in calls] == ["tuning_missing_kits19.json", "tuning_missing_kits23.json"]
    args.tuning_sets = "in_place"
    assert evaluate_bundle.evaluate_tuning(cli, args, tmp_path, "BODIES", pool) == 0
    summary = json.loads((tmp_path / "tuning_summary.json").read_text())
    assert list(summary) == ["missing", "in_place"]  # the second stage added to the first
    assert summary["missing"]["kidney_dice"] == 0.8 and summary["in_place"]["kidney_dice"] == 0.9
    assert len(calls) == 4
    args.tuning_sets = "missing,elsewhere"
    assert evaluate_bundle.evaluate_tuning(cli, args, tmp_path, "BODIES", pool) == 2
    assert "no set named elsewhere" in capsys.readouterr().err and len(calls) == 4  # nothing run


def test_cut_adds_the_held_out_phantoms_cut_from_below_and_above(tmp_path, monkeypatch):
    import KidneyTumorSegLib.cli

    data = _data(tmp_path)
    calls = []
    monkeypatch.setattr(KidneyTumorSegLib.cli, "main", lambda argv: calls.append(argv) or 0)
    out = tmp_path / "out"
    assert evaluate_bundle.main(["b.safetensors", str(out), "--data", str(data), "--no-real", "--heldout", "1", "--cut"]) == 0
    outs = [Path(c[c.index("--out") + 1]).name for c in calls]
    assert outs == ["heldout_bodies.json", "heldout_bodies_cut_below.json", "heldout_bodies_cut_above.json"]
    assert [c[c.index("--cut-field") + 1] if "--cut-field" in c else None for c in calls] == [None, "below", "above"]
    held = evaluate_bundle.held_out(data, "kits19")[:1]
    assert all(c[c.index("--cases") + 1] == ",".join(held) for c in calls)  # the same held-out masks
    calls.clear()
    assert evaluate_bundle.main(["b.safetensors", str(out), "--data", str(data), "--no-real", "--heldout", "1"]) == 0
    assert len(calls) == 1  # without --cut, in place only
