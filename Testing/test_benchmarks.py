"""The benchmark harness runs and writes well-formed results (behaviour only: no timing assertions)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from benchmarks import report
from benchmarks.geometries import GEOMETRIES, make_input, simple_phantom
from benchmarks.reference import (
    SPECS,
    axis_starts,
    channel_argmax,
    count_windows,
    gaussian_importance,
    sample_indices,
    window_starts,
)

HAS_DNA = importlib.util.find_spec("dynamic_network_architectures") is not None


def test_sliding_window_follows_nnunet_rule():
    # 400 voxels, patch 128, step at most 64: ceil(272 / 64) + 1 = 6 windows, first at 0, last at 272.
    assert axis_starts(400, 128) == [0, 54, 109, 163, 218, 272]
    assert axis_starts(128, 128) == [0]
    assert axis_starts(100, 128) == [0]  # padded up to one patch
    for size in (129, 192, 193, 471, 1000):
        s = axis_starts(size, 128)
        assert s[0] == 0 and s[-1] == size - 128
        assert all(0 < b - a <= 64 for a, b in zip(s, s[1:]))
    assert len(window_starts((324, 400, 400), (128, 128, 128))) == 5 * 6 * 6


def test_window_counts_of_the_kits19_geometries():
    # median: 512 x 0.78125 mm = 400 mm in-plane, 108 x 3 mm = 324 mm: 5 x 6 x 6 windows at 1 mm.
    assert count_windows((108, 512, 512), (0.78125, 0.78125, 3.0)) == ((324, 400, 400), 180)
    grid, n = count_windows(GEOMETRIES["thick"].shape_zyx, GEOMETRIES["thick"].spacing_xyz)
    assert grid == (145, 500, 500) and n == 2 * 7 * 7


def test_gaussian_importance_peaks_in_the_centre():
    w = gaussian_importance((16, 16, 16))
    assert w.shape == (16, 16, 16) and w.dtype == np.float32
    assert np.isclose(w.max(), 10.0) and w.min() > 0
    assert w[8, 8, 8] > w[0, 8, 8] > w[0, 0, 0]
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)  # symmetric


def test_sampled_windows_are_distinct_and_exclude_the_warmup():
    warm, chosen = sample_indices(180, 3)
    assert len(set(chosen)) == 3 and warm not in chosen
    assert all(0 <= i < 180 for i in chosen)
    warm, chosen = sample_indices(4, 0)
    assert chosen == [0, 1, 2, 3]


def test_channel_argmax_matches_numpy():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 5, 6, 7)).astype(np.float32)
    labels = channel_argmax(probs)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.argmax(probs, axis=0))


def test_simple_phantom_is_a_ct_on_the_requested_grid(tmp_path):
    g = GEOMETRIES["tiny"]
    ct = simple_phantom(g, seed=1)
    assert ct.array.shape == g.shape_zyx and ct.array.dtype == np.int16
    assert ct.spacing == g.spacing_xyz
    assert ct.array.min() < -900 and (ct.array > 150).any()  # air and enhancing kidney or bone
    info = make_input(g, tmp_path, "simple", seed=1)
    again = make_input(g, tmp_path, "simple", seed=1)
    assert info["reused"] is False and again["reused"] is True and again["path"] == info["path"]


@pytest.mark.skipif(not HAS_DNA, reason="dynamic-network-architectures (the bench extra) is not installed")
def test_reference_writes_labels_on_the_input_grid(tmp_path):
    import SimpleITK as sitk

    from benchmarks.reference import run_reference

    info = make_input(GEOMETRIES["tiny"], tmp_path, "simple")
    out = tmp_path / "ref.nii.gz"
    res = run_reference(info["path"], str(out), SPECS["tiny"], "cpu", samples=2)
    img, ref_img = sitk.ReadImage(str(out)), sitk.ReadImage(info["path"])
    assert img.GetSize() == ref_img.GetSize() and np.allclose(img.GetSpacing(), ref_img.GetSpacing())
    grid, n = count_windows(GEOMETRIES["tiny"].shape_zyx, GEOMETRIES["tiny"].spacing_xyz, SPECS["tiny"])
    assert res["windows"] == n and tuple(res["grid_zyx"]) == grid
    assert res["timed_windows"] == 2 and res["sampled"] is True
    assert np.isclose(res["times_s"]["network"], res["network_per_window_s"] * n, rtol=1e-3)
    assert res["times_s"]["total"] >= res["times_s"]["network"]


@pytest.mark.slow
def test_harness_runs_end_to_end_and_writes_table_and_json(tmp_path):
    from benchmarks.run import main
    from KidneyTumorSegLib.config import ModelConfig
    from KidneyTumorSegLib.weights import save_bundle, seeded_bundle

    bundle = seeded_bundle(ModelConfig.tiny())
    weights = save_bundle(tmp_path / "tiny.safetensors", bundle.config, bundle.state_dicts,
                          provenance=bundle.header["provenance"])
    out = tmp_path / "results"
    argv = ["--geometries", "tiny", "--phantom", "simple", "--weights", str(weights), "--out", str(out),
            "--name", "test", "--reference-spec", "tiny", "--reference-windows", "1", "--inputs", str(tmp_path / "in")]
    if not HAS_DNA:
        argv.append("--no-reference")
    assert main(argv) == 0

    data = json.loads((out / "test.json").read_text())
    assert data["device"] == "cpu" and data["machine"]["cpus_available"] >= 1
    assert data["machine"]["torch"] and data["date"]
    (geom,) = data["geometries"]
    assert geom["name"] == "tiny" and geom["geometry"]["shape_zyx"] == [24, 64, 64]
    engine = geom["engine"]
    assert engine["runs"] == 1 and engine["failed"] == 0
    assert set(engine["stages_s"]) >= {"read", "preprocess", "z_localiser", "write", "total"}
    assert engine["peak_rss_bytes"] > 10e6  # a Python process with torch: tens of MB at least
    assert data["weights"]["trained"] is False
    names = [t["name"] for t in data["targets"]]
    assert len(names) == 3 and all(t["met"] is None for t in data["targets"])  # no median/large geometry here
    if HAS_DNA:
        ref = geom["reference"]
        assert ref["windows"] >= 1 and ref["timed_windows"] == 1 and ref["peak_rss_bytes"] > 10e6
        # the ratio is stored to two decimals: allow that rounding, whatever the ratio's size
        assert geom["ratio"] == pytest.approx(ref["total_s"] / engine["total_s"], rel=0.01, abs=0.005)

    md = (out / "test.md").read_text()
    assert md.startswith("# KidneyTumorSeg benchmark (cpu)")
    assert "| tiny | 64x64x24 at 4.00x4.00x6.00 mm |" in md
    for header in ("## Summary", "## Targets", "## Engine: wall time per stage"):
        assert header in md
    # every table row has as many cells as its header
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    tables, current = [], []
    for ln in md.splitlines() + [""]:
        if ln.startswith("|"):
            current.append(ln.count("|"))
        elif current:
            tables.append(current)
            current = []
    assert rows and all(len(set(t)) == 1 for t in tables)


def test_peak_memory_is_the_childs_own(tmp_path):
    # On Linux a child's ru_maxrss starts at the parent's high-water mark; the harness must not report it.
    from benchmarks.measure import run_python_module

    ballast = np.ones(40_000_000)  # 320 MB held by this (parent) process
    m = run_python_module("json.tool", ["--help"], tmp_path / "child.log", timeout_s=120)
    assert m.returncode == 0
    assert m.peak_rss_bytes < 150e6 < ballast.nbytes
    if m.peak_source == "vmhwm":
        assert m.peak_rss_bytes > 1e6


def test_targets_are_marked_met_or_not():
    geoms = {
        "median": {"engine": {"total_s": 10.0}, "ratio": 25.0},
        "large": {"engine": {"peak_rss_bytes": int(3.5e9)}},
    }
    from benchmarks.run import evaluate_targets

    t = {x["name"]: x["met"] for x in evaluate_targets(geoms, "cpu")}
    assert t == {
        "median geometry: engine total time": True,
        "median geometry: reference / engine": True,
        "large geometry: engine peak memory": False,
    }
    assert report.TARGETS["median_time_s"] == 20.0
