"""DICOM studies with several series: the one segmented is the one a user means, and it is named.

The studies are real DICOM files written by SimpleITK's GDCM writer (Testing/dicom_study.py): a
localiser, an arterial and a venous axial phase, and a coronal reformat holding more images than
either phase (so "the largest series" would be the wrong answer).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from KidneyTumorSegLib.cli import main
from KidneyTumorSegLib.dicom import choose_series, find_series
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.io import read_volume
from KidneyTumorSegLib.weights import save_bundle

from .dicom_study import abdominal_study, body, write_series
from .test_pipeline import bundle_with_heads


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    flat, nested = tmp_path_factory.mktemp("flat"), tmp_path_factory.mktemp("nested") / "STUDY"
    return {"flat": (flat, abdominal_study(flat)), "nested": (nested, abdominal_study(nested, nested=True))}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    b = bundle_with_heads(10, 10, 10, -10)  # "kidney everywhere": a known, fast result
    return save_bundle(tmp_path_factory.mktemp("w") / "w.safetensors", b.config, b.state_dicts)


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_every_series_is_found_with_its_description(studies, layout):
    root, truth = studies[layout]
    found = {s.uid: s for s in find_series(root)}
    assert set(found) == {t["uid"] for t in truth.values()}
    for t in truth.values():
        s = found[t["uid"]]
        assert (s.number, s.description, s.slices) == (t["number"], t["description"], t["shape"][0])
    assert found[truth["coronal"]["uid"]].orientation == "coronal"
    assert found[truth["venous"]["uid"]].spacing_mm == (1.5, 1.5, 3.0)


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_the_axial_original_ct_is_preferred_to_a_larger_reformat_and_the_localiser(studies, layout):
    root, truth = studies[layout]
    choice = choose_series(root)
    assert choice.series.uid == truth["venous"]["uid"]  # axial original CT with the most slices
    assert "axial original CT" in choice.reason
    assert "localiser" in choice.reason and "reformat" in choice.reason  # why the others were passed over
    volume = read_volume(root)
    assert volume.array.shape == truth["venous"]["shape"]


def test_a_series_is_picked_by_number_or_uid_and_a_wrong_one_is_refused(studies):
    root, truth = studies["nested"]
    assert read_volume(root, series="2").array.shape == truth["arterial"]["shape"]
    assert read_volume(root, series=truth["coronal"]["uid"]).array.shape == truth["coronal"]["shape"]
    with pytest.raises(InputError, match=r"no series with the number or UID 9 \(series numbers there: 1, 2, 3, 4\)"):
        choose_series(root, "9")


def test_a_folder_without_series_says_so_after_searching_subfolders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "notes.txt").write_text("no image here")
    with pytest.raises(InputError, match="holds no DICOM image series, neither in it nor in its subfolders"):
        choose_series(tmp_path)


def test_segment_names_the_series_in_a_warning_and_in_the_report(studies, weights, tmp_path, capsys):
    root, truth = studies["nested"]
    out = tmp_path / "out"
    code = main(["segment", str(root), "-o", str(out / "s.seg.nrrd"), "--report", str(out / "r.json"),
                 "--labelmap", str(out / "l.nii.gz"), "--weights", str(weights), "--device", "cpu",
                 "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 0, err
    venous = truth["venous"]
    warning = next(line for line in err.splitlines() if line.startswith("Warning: "))
    for needle in ("holds 4 image series", f'series {venous["number"]} "{venous["description"]}"', venous["uid"],
                   "--series", "--list-series"):
        assert needle in warning
    report = json.loads((out / "r.json").read_text())
    series = report["input"]["series"]
    assert (series["uid"], series["number"], series["description"]) == (venous["uid"], 3, venous["description"])
    assert series["series_in_folder"] == 4 and "axial original CT" in series["reason"]
    assert warning[len("Warning: "):] in report["warnings"]
    assert read_volume(out / "l.nii.gz").array.shape == venous["shape"]


def test_segment_series_option_picks_the_arterial_phase(studies, weights, tmp_path, capsys):
    root, truth = studies["flat"]
    code = main(["segment", str(root), "-o", str(tmp_path / "s.seg.nrrd"), "--report", str(tmp_path / "r.json"),
                 "--series", "2", "--weights", str(weights), "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Warning: The folder" not in err  # the user chose: nothing to warn about
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["input"]["series"]["uid"] == truth["arterial"]["uid"]
    assert report["input"]["series"]["reason"] == "named by the user"
    assert report["input"]["shape_zyx"] == list(truth["arterial"]["shape"])


def test_segment_with_an_unknown_series_ends_in_one_sentence_and_exit_2(studies, weights, tmp_path, capsys):
    root, _ = studies["flat"]
    code = main(["segment", str(root), "-o", str(tmp_path / "s.seg.nrrd"), "--series", "1.2.3.999",
                 "--weights", str(weights), "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("Error: ") and "1.2.3.999" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_list_series_prints_every_series_and_stars_the_one_used(studies, capsys):
    root, truth = studies["nested"]
    assert main(["segment", str(root), "--list-series"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{root} holds 4 image series:"
    rows = {line.split()[1 if line.startswith("*") else 0]: line for line in lines[2:6]}
    assert set(rows) == {"1", "2", "3", "4"}
    assert rows["3"].startswith("*") and not any(rows[n].startswith("*") for n in "124")
    for t in truth.values():
        row = rows[str(t["number"])]
        assert t["uid"] in row and t["description"] in row and f" {t['shape'][0]} " in row
    assert "localiser" in rows["1"] and "reformat" in rows["4"] and "1.5 x 1.5 x 3" in rows["3"]
    assert lines[-1].startswith('* series 3 "Venous 3.0 B30f" is the one segment would use')


def test_list_series_speaks_json(studies, capsys):
    root, truth = studies["flat"]
    assert main(["segment", str(root), "--list-series", "--progress", "json"]) == 0
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert event["event"] == "series" and event["chosen"] == truth["venous"]["uid"]
    assert sorted(s["number"] for s in event["series"]) == [1, 2, 3, 4]


def test_a_series_spread_over_subfolders_is_read_as_one_in_slice_order(tmp_path):
    array = body((24, 32, 36))
    array[:, 0, 0] = np.arange(24) * 10 - 1000  # each slice carries its index
    write_series(tmp_path / "tmp", array, uid="1.2.826.0.1.3680043.8.498.77", number=5, description="Split")
    files = sorted((tmp_path / "tmp").iterdir())
    for i, f in enumerate(files):  # half the slices in one folder, half in another, interleaved
        dest = tmp_path / "study" / ("DIR000" if i % 2 else "DIR001")
        dest.mkdir(parents=True, exist_ok=True)
        f.rename(dest / f.name)
    [series] = find_series(tmp_path / "study")
    assert series.slices == 24
    volume = read_volume(tmp_path / "study")
    assert np.array_equal(volume.array[:, 0, 0], np.arange(24) * 10 - 1000)



def test_series_for_a_file_input_is_refused(tmp_path, weights, capsys):
    from KidneyTumorSegLib.io import write_volume
    from KidneyTumorSegLib.volume import Volume

    scan = write_volume(Volume(body((16, 40, 44)), (3.0, 3.0, 6.0)), tmp_path / "ct.nii.gz")
    code = main(["segment", str(scan), "-o", str(tmp_path / "s.seg.nrrd"), "--series", "2", "--weights",
                 str(weights), "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"Error: --series chooses a series of a DICOM folder, and {scan} is a file."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
