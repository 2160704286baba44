"""``kidney-tumor-seg batch``: many cases, networks loaded once, a broken case reported, resumable.

The networks' heads are set by hand ("kidney everywhere, no tumour"), so every case's answer is
known: one kidney filling the scan, its volume the scan's volume.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from KidneyTumorSegLib import pipeline as pipeline_module
from KidneyTumorSegLib.batch import BATCH_FAILED, COLUMNS, find_cases
from KidneyTumorSegLib.cli import main
from KidneyTumorSegLib.io import read_volume, write_volume
from KidneyTumorSegLib.weights import save_bundle

from .dicom_study import abdominal_study
from .test_pipeline import body_ct, bundle_with_heads

SPACING = (2.5, 2.5, 5.0)


def _ct(shape):
    ct = body_ct(shape=shape, spacing=SPACING)
    return ct.with_array(np.round(ct.array).astype(np.int16))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    b = bundle_with_heads(10, 10, 10, -10)
    return save_bundle(tmp_path_factory.mktemp("w") / "w.safetensors", b.config, b.state_dicts)


@pytest.fixture()
def loads(monkeypatch):
    """Counts how often a weights file is read and networks are built from it."""
    counts = {"bundles": 0, "networks": 0}
    real_load, real_nets = pipeline_module.load_bundle, pipeline_module.networks_from_bundle

    def load(*a, **k):
        counts["bundles"] += 1
        return real_load(*a, **k)

    def nets(*a, **k):
        counts["networks"] += 1
        return real_nets(*a, **k)

    monkeypatch.setattr(pipeline_module, "load_bundle", load)
    monkeypatch.setattr(pipeline_module, "networks_from_bundle", nets)
    return counts


def _summary(out):
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and tuple(rows[0]) == COLUMNS
    return {r["case"]: r for r in rows}


def _batch(*args, weights):
    return main(["batch", *map(str, args), "--weights", str(weights), "--device", "cpu", "--progress", "none"])


def test_files_dicom_folders_and_kits_cases_in_one_batch_and_a_broken_case_does_not_stop_it(
        tmp_path, weights, loads, capsys):
    scan = write_volume(_ct((16, 40, 44)), tmp_path / "in" / "patient_a.nii.gz")
    study = tmp_path / "in" / "patient_b"
    abdominal_study(study, nested=True)  # the venous phase (22 x 64 x 72) is the one to segment
    kits = tmp_path / "in" / "kits"
    write_volume(_ct((20, 48, 56)), kits / "case_00000" / "imaging.nii.gz")
    (kits / "case_00001").mkdir()
    (kits / "case_00001" / "imaging.nii.gz").write_bytes(b"\x1f\x8b not really a scan")  # broken
    write_volume(_ct((18, 40, 48)), kits / "case_00002" / "imaging.nii.gz")
    out = tmp_path / "results"

    code = _batch(scan, study, kits, "--out-dir", out, weights=weights)
    captured = capsys.readouterr()
    assert code == BATCH_FAILED, captured.err
    assert "Traceback" not in captured.err
    assert loads == {"bundles": 1, "networks": 1}  # the networks are loaded once for all five cases

    rows = _summary(out)
    assert list(rows) == ["patient_a", "patient_b", "case_00000", "case_00001", "case_00002"]
    assert rows["case_00001"]["status"] == "failed" and rows["case_00001"]["exit_code"] == "2"
    assert str(kits / "case_00001" / "imaging.nii.gz") in rows["case_00001"]["message"]
    assert not (out / "case_00001").exists()  # nothing half-written for the broken case
    for name, shape in (("patient_a", (16, 40, 44)), ("case_00000", (20, 48, 56)), ("case_00002", (18, 40, 48))):
        row, folder = rows[name], out / name
        assert row["status"] == "done" and row["exit_code"] == "0" and float(row["seconds"]) >= 0
        report = json.loads((folder / f"{name}_report.json").read_text())
        whole_scan_ml = np.prod(shape) * np.prod(SPACING) / 1000.0
        assert float(row["right_kidney_with_tumour_ml"]) == pytest.approx(whole_scan_ml, rel=1e-3)
        assert float(row["right_kidney_without_tumour_ml"]) == report["sides"]["right"]["kidney_without_tumour_ml"]
        assert float(row["right_tumour_ml"]) == 0.0 and row["left_kidney_with_tumour_ml"] == ""
        assert read_volume(folder / f"{name}_labels.nii.gz").array.shape == shape
        assert (folder / f"{name}.seg.nrrd").stat().st_size > 0
    dicom = rows["patient_b"]
    assert dicom["status"] == "done" and "Venous 3.0 B30f" in dicom["series"]
    assert "1.2.826.0.1.3680043.8.498.30" in dicom["series"]
    assert read_volume(out / "patient_b" / "patient_b_labels.nii.gz").array.shape == (22, 64, 72)
    assert "4 of 5 cases segmented, 1 failed" in captured.out


def test_skip_existing_resumes_and_keeps_what_was_done(tmp_path, weights, loads, capsys):
    inputs = [write_volume(_ct((16, 40, 44)), tmp_path / f"scan{i}.nii.gz") for i in (1, 2)]
    out = tmp_path / "results"
    assert _batch(*inputs, "--out-dir", out, weights=weights) == 0
    kept = (out / "scan1" / "scan1.seg.nrrd")
    before = (kept.read_bytes(), kept.stat().st_mtime_ns)
    for f in (out / "scan2").iterdir():  # as if the first batch had stopped before scan2
        f.unlink()
    (out / "scan2").rmdir()

    loads.update(bundles=0, networks=0)
    assert _batch(*inputs, "--out-dir", out, "--skip-existing", weights=weights) == 0
    assert (kept.read_bytes(), kept.stat().st_mtime_ns) == before  # scan1 was not run again
    rows = _summary(out)
    assert rows["scan1"]["status"] == "done" and rows["scan1"]["message"] == "kept from an earlier run"
    assert float(rows["scan1"]["right_kidney_with_tumour_ml"]) > 0
    assert rows["scan2"]["status"] == "done" and rows["scan2"]["message"] == ""
    assert (out / "scan2" / "scan2_report.json").is_file()
    assert loads["bundles"] == 1

    loads.update(bundles=0, networks=0)
    assert _batch(*inputs, "--out-dir", out, "--skip-existing", weights=weights) == 0
    assert loads == {"bundles": 0, "networks": 0}  # nothing to do: the networks are not even loaded


def test_an_interrupted_batch_leaves_a_summary_of_the_cases_done(tmp_path, weights, monkeypatch, capsys):
    from KidneyTumorSegLib import cli

    inputs = [write_volume(_ct((16, 40, 44)), tmp_path / f"scan{i}.nii.gz") for i in (1, 2, 3)]
    real, calls = cli.segment_scan, []

    def interrupted_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cli, "segment_scan", interrupted_on_the_second)
    assert _batch(*inputs, "--out-dir", tmp_path / "results", weights=weights) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "Cancelled; no output was written."
    assert list(_summary(tmp_path / "results")) == ["scan1"]
    assert not (tmp_path / "results" / "scan2").exists()


def test_case_names_are_unique_and_kits_case_folders_count_as_cases(tmp_path):
    a = write_volume(_ct((16, 40, 44)), tmp_path / "a" / "ct.nii.gz")
    b = write_volume(_ct((16, 40, 44)), tmp_path / "b" / "ct.nii.gz")
    write_volume(_ct((16, 40, 44)), tmp_path / "kits" / "case_00007" / "imaging.nii.gz")
    cases = find_cases([a, b, tmp_path / "kits" / "case_00007"])
    assert [c.name for c in cases] == ["ct", "ct_2", "case_00007"]
    assert cases[2].input == tmp_path / "kits" / "case_00007" / "imaging.nii.gz"


@pytest.mark.parametrize("what", ["missing input", "out-dir is a file"])
def test_unusable_batch_arguments_end_in_one_sentence_before_any_work(tmp_path, weights, what, capsys):
    scan = write_volume(_ct((16, 40, 44)), tmp_path / "scan.nii.gz")
    out = tmp_path / "results"
    inputs = [scan, tmp_path / "nope.nii.gz"] if what == "missing input" else [scan]
    if what == "out-dir is a file":
        out.write_text("a file")
    assert _batch(*inputs, "--out-dir", out, weights=weights) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and err[0].endswith(".")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["scan.nii.gz"] + (["results"] if out.exists() else []))
    assert not out.is_dir()
