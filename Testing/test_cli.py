"""The command line end to end on a small synthetic volume: outputs, JSON protocol, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from KidneyTumorSegLib.io import read_volume, write_volume
from KidneyTumorSegLib.weights import save_bundle

from .test_pipeline import body_ct, bundle_with_heads


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "KidneyTumorSegLib", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ct = body_ct()
    write_volume(ct.with_array(np.round(ct.array).astype(np.int16)), d / "ct.nii.gz")
    b = bundle_with_heads(10, 10, 10, -10)
    save_bundle(d / "w.safetensors", b.config, b.state_dicts, provenance={"name": "heads"})
    return d


def test_segment_writes_every_output_and_speaks_json(case):
    out = case / "out"
    r = run_cli(
        "segment", case / "ct.nii.gz", "-o", out / "seg.seg.nrrd", "--labelmap", out / "labels.nii.gz",
        "--report", out / "report.json", "--snapshot", out / "snap.png",
        "--weights", case / "w.safetensors", "--device", "cpu", "--progress", "json",
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event"] == "progress" and events[-1]["event"] == "done"
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    labels = read_volume(out / "labels.nii.gz")
    ct = read_volume(case / "ct.nii.gz")
    assert labels.same_grid(ct) and set(np.unique(labels.array)) == {1}
    report = json.loads((out / "report.json").read_text())
    assert report == events[-1]["report"]
    assert sum(s["kidney_without_tumour_ml"] for s in report["sides"].values()) == pytest.approx(
        ct.array.size * ct.voxel_volume_ml, rel=1e-3
    )
    assert {"read", "write", "total"} <= set(report["timings_s"])
    assert (out / "snap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "seg.seg.nrrd").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_mirroring_follows_the_weights_and_no_mirror_turns_it_off(case):
    b = bundle_with_heads(10, 10, 10, -10)
    b.config.segmenter.mirror_x = True
    save_bundle(case / "mirror.safetensors", b.config, b.state_dicts)
    reports = {}
    for name, extra in (("default", ()), ("off", ("--no-mirror",))):
        out = case / f"mirror-{name}"
        r = run_cli("segment", case / "ct.nii.gz", "-o", out / "seg.seg.nrrd", "--report", out / "report.json",
                    "--weights", case / "mirror.safetensors", "--device", "cpu", "--progress", "none", *extra)
        assert r.returncode == 0, r.stderr
        reports[name] = json.loads((out / "report.json").read_text())
    assert reports["default"]["test_time_mirroring"] is True
    assert reports["off"]["test_time_mirroring"] is False
    assert reports["default"]["sides"] == reports["off"]["sides"]  # heads set by hand: mirror-invariant


def test_terminal_summary_is_readable(case):
    r = run_cli("segment", case / "ct.nii.gz", "-o", case / "o2.seg.nrrd", "--weights", case / "w.safetensors",
                "--device", "cpu", "--progress", "none")
    assert r.returncode == 0, r.stderr
    assert "Right kidney " in r.stdout and "mL, no tumour" in r.stdout


@pytest.mark.parametrize(
    "args,code,phrase",
    [
        (["segment", "missing.nii.gz", "-o", "x.seg.nrrd"], 2, "does not exist"),
        (["segment", "{ct}", "-o", "x.seg.nrrd", "--weights", "nope.safetensors"], 3, "does not exist"),
        (["segment", "{ct}", "-o", "x.nii.gz", "--weights", "{w}"], 2, ".seg.nrrd"),
        (["segment", "{ct}", "-o", "x.seg.nrrd", "--weights", "{w}", "--device", "tpu"], 4, "unknown"),
    ],
)
def test_user_errors_are_one_sentence_and_write_nothing(case, tmp_path, args, code, phrase):
    args = [a.format(ct=case / "ct.nii.gz", w=case / "w.safetensors") for a in args]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == code
    assert "Traceback" not in r.stderr and phrase in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].endswith(".") and r.stderr.rstrip().endswith(errors[0])
    assert list(tmp_path.iterdir()) == []


def test_json_mode_reports_errors_as_an_event(tmp_path):
    r = run_cli("segment", tmp_path / "none.nrrd", "-o", tmp_path / "o.seg.nrrd", "--progress", "json")
    assert r.returncode == 2
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["event"] == "error" and "does not exist" in last["message"]
