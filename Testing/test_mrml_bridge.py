"""The MRML bridge against real MRML (slicer-core): volumes, segments, table, background runs."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import numpy as np
import pytest

try:  # Testing/ may be a package or a plain folder of test files
    from .mrml_fixtures import (  # noqa: F401
        add_user_segment,
        box_structures,
        mrml_env,
        mrml_scene,
        node_state,
        oblique_volume,
        vtk_matrix,
    )
except ImportError:
    from mrml_fixtures import (  # noqa: F401
        add_user_segment,
        box_structures,
        mrml_env,
        mrml_scene,
        node_state,
        oblique_volume,
        vtk_matrix,
    )

slicer = pytest.importorskip("slicer")
slicerio = pytest.importorskip("slicerio")

from KidneyTumorSegLib import mrml  # noqa: E402
from KidneyTumorSegLib.mrml import segments as seg_mod  # noqa: E402
from KidneyTumorSegLib.segfile import kits_labels, write_seg_nrrd  # noqa: E402
from KidneyTumorSegLib.terminology import (  # noqa: E402
    FINGERPRINT_TAG,
    STRUCTURE_TAG,
    STRUCTURES,
    TUMOUR_RGB,
    parse_terminology_tag,
)
from KidneyTumorSegLib.volume import Volume  # noqa: E402

REPORT = {
    "sides": {
        "right": {"kidney_without_tumour_ml": 12.34, "kidney_with_tumour_ml": 13.5, "tumour_ml": 1.16,
                  "tumour_diameter_mm": 17.3, "tumour_count": 1},
        "left": {"kidney_without_tumour_ml": 20.02, "kidney_with_tumour_ml": 20.02, "tumour_ml": 0.0,
                 "tumour_diameter_mm": 0.0, "tumour_count": 0},
    },
    "timings_s": {"total": 1.0},
    "warnings": [],
}


def segment_voxels(node, seg_id, shape) -> np.ndarray:
    mask, offset, _ = seg_mod._segment_mask_and_offset(node, seg_id)
    full = np.zeros(shape, bool)
    (i0, j0, k0), (nz, ny, nx) = offset, mask.shape
    full[k0 : k0 + nz, j0 : j0 + ny, i0 : i0 + nx] = mask
    return full


@pytest.fixture
def ct(mrml_scene):
    volume = oblique_volume()
    node = mrml.volume_to_node(volume, name="CT")
    return volume, node


# --- volumes --------------------------------------------------------------------------------------
def test_volume_node_round_trip_flips_lps_to_ras(mrml_scene):
    volume = oblique_volume()
    node = mrml.volume_to_node(volume, name="CT")
    # Known answer: the RAS position of any voxel is its LPS position with x and y negated.
    ijk = np.array([[0, 0, 0], [5, 7, 3], [47, 39, 23]], float)
    ras = (vtk_matrix(node) @ np.c_[ijk, np.ones(3)].T).T[:, :3]
    lps = volume.index_to_physical(ijk)
    assert np.allclose(ras, lps * [-1, -1, 1])
    assert np.allclose(node.GetSpacing(), volume.spacing)
    back = mrml.volume_from_node(node)
    assert back.same_grid(volume, tol=1e-9)
    assert back.array.dtype == volume.array.dtype and np.array_equal(back.array, volume.array)
    back.array[0, 0, 0] += 1  # a copy: the node's voxels stay as they were
    assert slicer.util.arrayFromVolume(node)[0, 0, 0] == volume.array[0, 0, 0]


def test_volume_from_a_node_made_by_slicer_util(mrml_scene):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    ijk_to_ras = np.array([[-0.5, 0, 0, 10.0], [0, -0.7, 0, 20.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]])
    node = slicer.util.addVolumeFromArray(arr, ijk_to_ras, "ct")
    volume = mrml.volume_from_node(node)
    # an LPS-aligned grid: identity directions, origin (-10, -20, -30) in LPS
    assert np.allclose(volume.direction, np.eye(3))
    assert np.allclose(volume.spacing, (0.5, 0.7, 3.0))
    assert np.allclose(volume.origin, (-10.0, -20.0, -30.0))
    assert np.array_equal(volume.array, arr)


def test_volume_from_node_refuses_what_is_not_a_ct_volume(mrml_scene):
    from KidneyTumorSegLib.errors import InputError

    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="holds no voxels"):
        mrml.volume_from_node(empty)
    model = mrml_scene.AddNewNodeByClass("vtkMRMLModelNode", "model")
    with pytest.raises(InputError, match="not a scalar"):
        mrml.volume_from_node(model)
    with pytest.raises(InputError):
        mrml.volume_from_node(None)


# --- segments -------------------------------------------------------------------------------------
def test_segments_have_the_volumes_geometry_and_the_exact_voxels(ct):
    volume, node = ct
    structures = box_structures(volume.array.shape)
    seg_node = mrml.apply_result(node, structures, REPORT)
    seg = seg_node.GetSegmentation()
    # reference geometry = the CT's IJK-to-RAS and extent
    geometry = [float(v) for v in seg.GetConversionParameter("Reference image geometry").split(";") if v]
    assert np.allclose(np.array(geometry[:16]).reshape(4, 4), vtk_matrix(node), atol=1e-9)
    nx, ny, nz = volume.size_xyz
    assert geometry[16:] == [0, nx - 1, 0, ny - 1, 0, nz - 1]
    assert seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole()) is node
    # every segment's labelmap lies on that grid
    for seg_id in mrml.our_segment_ids(seg_node).values():
        _, _, image_to_ras = seg_mod._segment_mask_and_offset(seg_node, seg_id)
        assert np.allclose(image_to_ras, vtk_matrix(node), atol=1e-9)
    # Slicer's own export onto the CT grid gives back the masks, voxel for voxel
    exported = mrml.export_structures(seg_node, node)
    assert set(exported) == set(structures)
    for key, mask in structures.items():
        assert np.array_equal(exported[key], mask), key
    labels = np.zeros(volume.array.shape, np.uint8)
    for key, mask in exported.items():
        labels[mask] = STRUCTURES[key].label
    assert np.array_equal(labels, kits_labels(structures, volume).array)


def test_segments_carry_names_colours_terminology_and_surfaces(ct):
    volume, node = ct
    seg_node = mrml.apply_result(node, box_structures(volume.array.shape), REPORT)
    seg = seg_node.GetSegmentation()
    ours = mrml.our_segment_ids(seg_node)
    assert list(ours) == ["kidney_right", "kidney_left", "tumour_right"]
    lo, hi = volume.physical_bounds()
    ras_lo, ras_hi = np.minimum(lo * [-1, -1, 1], hi * [-1, -1, 1]), np.maximum(lo * [-1, -1, 1], hi * [-1, -1, 1])
    for key, seg_id in ours.items():
        segment = seg.GetSegment(seg_id)
        assert segment.GetName() == STRUCTURES[key].name
        assert np.allclose(segment.GetColor(), STRUCTURES[key].color)
        tag = seg_mod.segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())
        assert tag == STRUCTURES[key].terminology
        assert seg_mod.segment_tag(segment, STRUCTURE_TAG) == key
        # closed surface for 3D: non-empty and where the CT is
        poly = seg_node.GetClosedSurfaceInternalRepresentation(seg_id)
        assert poly is not None and poly.GetNumberOfPoints() > 0 and poly.GetNumberOfCells() > 0
        b = poly.GetBounds()
        assert np.all(np.array(b[0::2]) >= ras_lo - 3) and np.all(np.array(b[1::2]) <= ras_hi + 3)
    assert seg_node.GetDisplayNode() is not None


def test_tumour_colour_is_slicers_tumor_colour(mrml_env):
    labels = mrml_env.scene.GetFirstNodeByName("Labels")
    assert labels is not None
    index = next(i for i in range(labels.GetNumberOfColors()) if labels.GetColorName(i) == "Tumor")
    rgba = [0.0] * 4
    labels.GetColor(index, rgba)
    assert np.allclose(np.array(rgba[:3]) * 255, TUMOUR_RGB, atol=1.0)


def test_terminology_survives_a_seg_nrrd_round_trip_written_by_slicer(ct, tmp_path):
    volume, node = ct
    seg_node = mrml.apply_result(node, box_structures(volume.array.shape), REPORT)
    storage = seg_node.CreateDefaultStorageNode()
    slicer.mrmlScene.AddNode(storage)
    seg_node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(tmp_path / "saved.seg.nrrd"))
    assert storage.WriteData(seg_node)
    saved = slicerio.read_segmentation(str(tmp_path / "saved.seg.nrrd"))
    by_id = {s["id"]: s for s in saved["segments"]}
    assert set(by_id) == {"kidney_right", "kidney_left", "tumour_right"}
    for key, s in by_id.items():
        parsed = parse_terminology_tag(STRUCTURES[key].terminology)
        term = s["terminology"]
        assert term["category"] == [parsed["category"].scheme, parsed["category"].value, parsed["category"].meaning]
        assert term["type"] == [parsed["type"].scheme, parsed["type"].value, parsed["type"].meaning]
        if key.startswith("kidney"):
            assert term["typeModifier"] == [parsed["type_modifier"].scheme, parsed["type_modifier"].value,
                                            parsed["type_modifier"].meaning]
        else:
            assert term["anatomicRegion"][1] == "64033007"
            assert term["anatomicRegionModifier"][2] == key.split("_")[1].capitalize()
        assert s["name"] == STRUCTURES[key].name
        assert s["tags"][STRUCTURE_TAG] == key


def test_input_volume_and_other_nodes_are_left_untouched(ct, mrml_scene):
    volume, node = ct
    other = mrml.volume_to_node(oblique_volume(seed=3), name="Other")
    before_arr = slicer.util.arrayFromVolume(node).copy()
    before_matrix = vtk_matrix(node)
    before_nodes = node_state(mrml_scene)
    image_mtime = node.GetImageData().GetMTime()
    seg_node = mrml.apply_result(node, box_structures(volume.array.shape), REPORT)
    after_nodes = node_state(mrml_scene)
    assert np.array_equal(slicer.util.arrayFromVolume(node), before_arr)
    assert np.allclose(vtk_matrix(node), before_matrix)
    assert node.GetImageData().GetMTime() == image_mtime
    for node_id, mtime in before_nodes.items():
        if node_id.startswith("vtkMRMLSubjectHierarchyNode"):
            continue  # the hierarchy gains the new items
        assert after_nodes.get(node_id) == mtime, f"{node_id} was modified"
    new = {n for n in after_nodes if n not in before_nodes}
    table = mrml.results_table_of(seg_node)
    display = seg_node.GetDisplayNode()
    assert new == {seg_node.GetID(), display.GetID(), table.GetID()}
    assert other.GetScene() is mrml_scene and np.array_equal(
        slicer.util.arrayFromVolume(other), oblique_volume(seed=3).array
    )


def test_rerun_replaces_our_segments_and_keeps_the_users(ct):
    volume, node = ct
    shape = volume.array.shape
    seg_node = mrml.apply_result(node, box_structures(shape), REPORT)
    ids_first = mrml.our_segment_ids(seg_node)
    note = np.zeros(shape, bool)
    note[2:6, 30:36, 30:40] = True
    user_id = add_user_segment(seg_node, node, note)
    # Slicer put the user's segment into the layer it shares with ours: removing ours must not
    # disturb the user's voxels in that shared labelmap.
    user_layer = seg_node.GetSegmentation().GetSegment(user_id).GetRepresentation("Binary labelmap")
    assert not mrml.segmentation_has_user_edits(seg_node)  # a new segment of the user's is not an edit

    second = {"kidney_left": np.roll(box_structures(shape)["kidney_left"], -2, axis=0)}
    same = mrml.apply_result(node, second, REPORT, segmentation_node=seg_node)
    assert same is seg_node
    seg = seg_node.GetSegmentation()
    assert mrml.our_segment_ids(seg_node) == {"kidney_left": ids_first["kidney_left"]}  # same ID kept
    assert mrml.user_segment_ids(seg_node) == [user_id]
    segment = seg.GetSegment(user_id)
    assert segment.GetName() == "My notes" and np.allclose(segment.GetColor(), (0.1, 0.2, 0.9))
    assert segment.GetRepresentation("Binary labelmap") is user_layer
    assert np.array_equal(segment_voxels(seg_node, user_id, shape), note)
    exported = mrml.export_structures(seg_node, node)
    assert np.array_equal(exported["kidney_left"], second["kidney_left"])
    assert np.array_equal(exported["My notes"], note)


def test_user_edits_of_our_segments_are_noticed(ct):
    volume, node = ct
    shape = volume.array.shape
    structures = box_structures(shape)
    seg_node = mrml.apply_result(node, structures, REPORT)
    assert mrml.user_edited_segments(seg_node) == []
    ours = mrml.our_segment_ids(seg_node)
    # paint one more voxel into the right kidney, the way Segment Editor effects write
    painted = structures["kidney_right"].copy()
    painted[0, 0, 0] = True
    image = seg_mod._layer_image(painted.astype(np.uint8), vtk_matrix(node))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, seg_node, ours["kidney_right"], slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )
    assert mrml.user_edited_segments(seg_node) == ["Right kidney"]
    assert mrml.segmentation_has_user_edits(seg_node)
    seg_node.GetSegmentation().RemoveSegment(ours["tumour_right"])
    assert mrml.user_edited_segments(seg_node) == ["Right kidney", "Right kidney tumor (deleted)"]
    # a fresh run resets the record
    mrml.apply_result(node, structures, REPORT, segmentation_node=seg_node)
    assert not mrml.segmentation_has_user_edits(seg_node)
    assert seg_mod.segment_tag(
        seg_node.GetSegmentation().GetSegment(mrml.our_segment_ids(seg_node)["kidney_right"]), FINGERPRINT_TAG
    )


def test_results_table_holds_the_report_values(ct):
    volume, node = ct
    seg_node = mrml.apply_result(node, box_structures(volume.array.shape), REPORT)
    table = mrml.results_table_of(seg_node)
    assert table is not None and table.IsA("vtkMRMLTableNode")
    rows = mrml.read_results_table(table)
    assert [r["Side"] for r in rows] == ["Right", "Left"]
    for row, side in zip(rows, ("right", "left")):
        src = REPORT["sides"][side]
        assert row["Kidney (without tumor) volume (mL)"] == src["kidney_without_tumour_ml"]
        assert row["Tumor volume (mL)"] == src["tumour_ml"]
        assert row["Tumor largest diameter (mm)"] == src["tumour_diameter_mm"]
        assert row["Kidney with tumor volume (mL)"] == src["kidney_with_tumour_ml"]
    assert table.GetColumnUnitLabel("Tumor volume (mL)") == "mL"
    assert mrml.stored_report(seg_node) == json.loads(json.dumps(REPORT))
    # a second run updates the same table, rows follow the new report
    only_left = {"sides": {"left": REPORT["sides"]["left"]}}
    mrml.apply_result(node, box_structures(volume.array.shape), only_left, segmentation_node=seg_node)
    assert mrml.results_table_of(seg_node) is table
    assert [r["Side"] for r in mrml.read_results_table(table)] == ["Left"]


def test_results_go_beside_the_ct_in_the_subject_hierarchy(ct, mrml_scene):
    volume, node = ct
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT abdomen")
    item = sh.GetItemByDataNode(node) or sh.CreateItem(study, node)
    sh.SetItemParent(item, study)
    seg_node = mrml.apply_result(node, box_structures(volume.array.shape), REPORT)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg_node)) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(mrml.results_table_of(seg_node))) == study


def test_segmentation_follows_the_volumes_transform(ct, mrml_scene):
    volume, node = ct
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    node.SetAndObserveTransformNodeID(transform.GetID())
    seg_node = mrml.apply_result(node, box_structures(volume.array.shape), REPORT)
    assert seg_node.GetParentTransformNode() is transform


def test_wrong_shape_is_refused_before_anything_changes(ct):
    from KidneyTumorSegLib.errors import InputError

    volume, node = ct
    seg_node = mrml.apply_result(node, box_structures(volume.array.shape), REPORT)
    before = mrml.export_structures(seg_node, node)
    with pytest.raises(InputError, match="shape"):
        mrml.apply_result(node, {"kidney_right": np.ones((2, 2, 2), bool)}, REPORT, segmentation_node=seg_node)
    after = mrml.export_structures(seg_node, node)
    assert set(after) == set(before) and all(np.array_equal(after[k], before[k]) for k in before)


# --- the engine, in process -----------------------------------------------------------------------
def _tiny_pipeline(path=None):
    """A real engine with small seeded networks whose localiser thresholds make it find something."""
    from KidneyTumorSegLib.config import ModelConfig
    from KidneyTumorSegLib.pipeline import Pipeline
    from KidneyTumorSegLib.weights import save_bundle, seeded_bundle

    cfg = ModelConfig.tiny()
    cfg.z_localiser.threshold = 0.0
    cfg.xy_localiser.threshold = 0.0
    bundle = seeded_bundle(cfg, seed=0)
    if path is not None:
        save_bundle(path, bundle.config, bundle.state_dicts, provenance={"kind": "test"})
        return path
    return Pipeline(bundle, device="cpu", allow_non_ct=True)


@pytest.fixture
def engine_ct(mrml_scene):
    volume = oblique_volume((40, 64, 64))
    return volume, mrml.volume_to_node(volume, name="CT")


def test_segment_volume_node_matches_the_engine_voxel_for_voxel(engine_ct):
    volume, node = engine_ct
    pipeline = _tiny_pipeline()
    expected = pipeline.run(volume)
    assert expected.structures, "the seeded engine should find something on this volume"
    before = slicer.util.arrayFromVolume(node).copy()
    progress = []
    seg_node = mrml.segment_volume_node(node, pipeline=pipeline, progress=lambda f, m: progress.append(f))
    assert progress and progress[-1] == 1.0
    assert np.array_equal(slicer.util.arrayFromVolume(node), before)
    exported = mrml.export_structures(seg_node, node)
    assert set(exported) == set(expected.structures)
    labels = np.zeros(volume.array.shape, np.uint8)
    for key, mask in exported.items():
        assert np.array_equal(mask, expected.structures[key]), key
        labels[mask] = STRUCTURES[key].label
    assert np.array_equal(labels, expected.labels.array)
    rows = mrml.read_results_table(mrml.results_table_of(seg_node))
    for row in rows:
        src = expected.report["sides"][row["Side"].lower()]
        assert row["Kidney (without tumor) volume (mL)"] == pytest.approx(src["kidney_without_tumour_ml"])
        assert row["Tumor volume (mL)"] == pytest.approx(src["tumour_ml"])
        assert row["Tumor largest diameter (mm)"] == pytest.approx(src["tumour_diameter_mm"])


# --- the engine in a background process -----------------------------------------------------------
STAND_IN_ENGINE = textwrap.dedent(
    '''
    """A stand-in for the CLI that follows its JSON-lines protocol, with known answers."""
    import argparse, json, sys, time
    from pathlib import Path
    import numpy as np
    from KidneyTumorSegLib.io import read_volume, write_volume
    from KidneyTumorSegLib.segfile import write_seg_nrrd

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("segment")
    s.add_argument("input"); s.add_argument("-o", "--output", required=True)
    s.add_argument("--labelmap"); s.add_argument("--report"); s.add_argument("--progress")
    s.add_argument("--device"); s.add_argument("--weights"); s.add_argument("--mode", default="ok")
    s.add_argument("--allow-non-ct", action="store_true"); s.add_argument("--no-mirror", action="store_true")
    s.add_argument("--threads", type=int); s.add_argument("--series")
    a = p.parse_args()

    def emit(**event):
        print(json.dumps(event), flush=True)

    if a.mode == "stubborn":  # a child that does not stop when asked
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        a.mode = "hang"
    if a.mode == "hang":
        emit(event="progress", fraction=0.05, message="Thinking")
        Path(a.output).with_suffix(".started").write_text("x")
        time.sleep(600)
    if a.mode == "error":
        emit(event="error", message="The weights file w.safetensors is truncated.")
        print("Error: The weights file w.safetensors is truncated.", file=sys.stderr)
        sys.exit(3)
    if a.mode == "crash":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: something broke", file=sys.stderr)
        sys.exit(1)
    volume = read_volume(a.input)
    emit(event="progress", fraction=0.0, message="Reading")
    print("a line that is not JSON", flush=True)
    arr = volume.array
    right = np.zeros(arr.shape, bool); right[:, :, : arr.shape[2] // 2] = True
    tumour = arr > 280
    kidney = (arr > 150) & ~tumour
    structures = {"kidney_right": kidney & right, "kidney_left": kidney & ~right,
                  "tumour_right": tumour & right, "tumour_left": tumour & ~right}
    emit(event="progress", fraction=0.5, message="Halfway")
    emit(event="warning", message="This is a stand-in engine.")
    labels = np.zeros(arr.shape, np.uint8); labels[kidney] = 1; labels[tumour] = 2
    write_seg_nrrd(a.output, structures, volume)
    write_volume(volume.with_array(labels), a.labelmap)
    report = {"sides": {"right": {"kidney_without_tumour_ml": 1.0, "tumour_ml": 2.0, "tumour_diameter_mm": 3.0},
                        "left": {"kidney_without_tumour_ml": 4.0, "tumour_ml": 5.0, "tumour_diameter_mm": 6.0}},
              "warnings": ["This is a stand-in engine."], "argv": sys.argv[1:]}
    Path(a.report).write_text(json.dumps(report))
    emit(event="progress", fraction=1.0, message="Done")
    emit(event="done", report=report, outputs={})
    '''
)


@pytest.fixture
def stand_in(tmp_path):
    pkg = tmp_path / "stand_in_engine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(STAND_IN_ENGINE)
    return {"cli_module": "stand_in_engine", "extra_pythonpath": [str(tmp_path)]}


def _expected_stand_in(volume: Volume) -> dict[str, np.ndarray]:
    arr = volume.array
    right = np.zeros(arr.shape, bool)
    right[:, :, : arr.shape[2] // 2] = True
    tumour = arr > 280
    kidney = (arr > 150) & ~tumour
    return {"kidney_right": kidney & right, "kidney_left": kidney & ~right,
            "tumour_right": tumour & right, "tumour_left": tumour & ~right}


def test_background_run_reports_progress_and_loads_the_result(ct, stand_in, mrml_scene):
    volume, node = ct
    seen = []
    job = mrml.BackgroundSegmentation(node, device="cpu", weights="/models/w.safetensors",
                                      on_progress=lambda f, m: seen.append((f, m)), **stand_in)
    assert job.poll() == "not started"
    job.start()
    temp = job.temp_dir
    assert temp.exists()
    polls = 0
    while job.poll() == "running":  # what the GUI's QTimer does
        polls += 1
        time.sleep(0.02)
    assert job.state == "done", job.error
    assert polls > 0
    assert seen == [(0.0, "Reading"), (0.5, "Halfway"), (1.0, "Done")]
    assert job.warnings == ["This is a stand-in engine."]
    assert not temp.exists()
    argv = job.report["argv"]
    assert argv[:2] == ["segment", str(temp / "input.nrrd")]
    for flag, value in (("--device", "cpu"), ("--weights", "/models/w.safetensors"), ("--progress", "json"),
                        ("-o", str(temp / "result.seg.nrrd")), ("--labelmap", str(temp / "result_labels.nrrd")),
                        ("--report", str(temp / "result.json"))):
        assert argv[argv.index(flag) + 1] == value
    seg_node = job.segmentation_node
    assert seg_node is not None and seg_node.IsA("vtkMRMLSegmentationNode")
    expected = {k: v for k, v in _expected_stand_in(volume).items() if v.any()}
    exported = mrml.export_structures(seg_node, node)
    assert set(exported) == set(expected)
    for key, mask in expected.items():
        assert np.array_equal(exported[key], mask), key
    rows = mrml.read_results_table(mrml.results_table_of(seg_node))
    assert [(r["Side"], r["Kidney (without tumor) volume (mL)"], r["Tumor largest diameter (mm)"]) for r in rows] == [
        ("Right", 1.0, 3.0), ("Left", 4.0, 6.0)
    ]
    assert np.array_equal(slicer.util.arrayFromVolume(node), volume.array)


def test_background_run_into_an_existing_segmentation_keeps_user_segments(ct, stand_in):
    volume, node = ct
    seg_node = mrml.new_segmentation_node(node, "Mine")
    note = np.zeros(volume.array.shape, bool)
    note[1:3, 1:3, 1:3] = True
    user_id = add_user_segment(seg_node, node, note)
    job = mrml.BackgroundSegmentation(node, seg_node, device="cpu", **stand_in).start()
    assert job.wait(timeout=120) == "done", job.error
    assert job.segmentation_node is seg_node
    assert mrml.user_segment_ids(seg_node) == [user_id]
    assert np.array_equal(segment_voxels(seg_node, user_id, volume.array.shape), note)


def test_background_error_is_one_sentence_and_changes_nothing(ct, stand_in, mrml_scene):
    volume, node = ct
    before = node_state(mrml_scene)
    job = mrml.BackgroundSegmentation(node, device="cpu", extra_args=["--mode", "error"], **stand_in).start()
    assert job.wait(timeout=120) == "error"
    assert job.error == "The weights file w.safetensors is truncated."
    assert job.returncode == 3
    assert job.segmentation_node is None
    assert node_state(mrml_scene) == before
    assert not job.temp_dir.exists()


def test_background_crash_reports_the_last_error_line(ct, stand_in):
    volume, node = ct
    job = mrml.BackgroundSegmentation(node, device="cpu", extra_args=["--mode", "crash"], **stand_in).start()
    assert job.wait(timeout=120) == "error"
    assert job.error == "RuntimeError: something broke"


def test_cancel_stops_the_process_and_removes_temporary_files(ct, stand_in, mrml_scene):
    volume, node = ct
    before = node_state(mrml_scene)
    job = mrml.BackgroundSegmentation(node, device="cpu", extra_args=["--mode", "hang"], **stand_in).start()
    started = job.temp_dir / "result.seg.started"
    t0 = time.monotonic()
    while not started.exists() and time.monotonic() - t0 < 60:
        assert job.poll() == "running"
        time.sleep(0.05)
    assert started.exists()
    job.poll()
    assert job.fraction == 0.05 and job.message == "Thinking"
    proc = job._proc
    job.cancel()  # returns at once: the GUI keeps polling while the child ends
    assert job.state in ("cancelling", "cancelled")
    while job.poll() == "cancelling":
        time.sleep(0.02)
    assert proc.poll() is not None  # the child is gone
    assert job.state == "cancelled" and job.poll() == "cancelled"
    assert not job.temp_dir.exists()
    assert node_state(mrml_scene) == before


def test_a_child_that_ignores_cancel_is_killed_after_the_grace_period(ct, stand_in):
    volume, node = ct
    job = mrml.BackgroundSegmentation(node, device="cpu", extra_args=["--mode", "stubborn"], **stand_in).start()
    started = job.temp_dir / "result.seg.started"
    while not started.exists() and job.poll() == "running":
        time.sleep(0.05)
    job.cancel(grace_s=0.3)
    polls_while_cancelling = 0
    while job.poll() == "cancelling":
        polls_while_cancelling += 1
        assert polls_while_cancelling < 3000, "the stubborn child was never killed"
        time.sleep(0.01)
    assert polls_while_cancelling > 0  # SIGTERM alone did not end it: poll() killed it, without blocking
    assert job.state == "cancelled" and job.returncode == -9
    assert not job.temp_dir.exists()


def test_background_run_passes_the_advanced_options_and_keeps_a_log(ct, stand_in):
    volume, node = ct
    job = mrml.BackgroundSegmentation(node, device="cpu", allow_non_ct=True, no_mirror=True, threads=3,
                                      series="1.2.840.99.7", **stand_in).start()
    assert job.wait(timeout=120) == "done", job.error
    argv = job.report["argv"]
    assert "--allow-non-ct" in argv and "--no-mirror" in argv
    assert argv[argv.index("--threads") + 1] == "3" and argv[argv.index("--series") + 1] == "1.2.840.99.7"
    log = list(job.log)
    assert log[0].startswith("$ ") and "segment" in log[0]
    events = [json.loads(line)["event"] for line in log[1:] if line.startswith("{")]
    assert events == ["progress", "progress", "warning", "progress", "done"]
    assert "a line that is not JSON" in log

    plain = mrml.BackgroundSegmentation(node, device="cpu", threads=0, series=" ", **stand_in)
    plain.temp_dir = job.temp_dir
    assert not {"--allow-non-ct", "--no-mirror", "--threads", "--series"} & set(plain.command(job.temp_dir / "x"))


def test_background_run_with_the_real_command_line(engine_ct, tmp_path):
    volume, node = engine_ct
    weights = _tiny_pipeline(tmp_path / "tiny.safetensors")
    job = mrml.BackgroundSegmentation(node, device="cpu", weights=weights, extra_args=["--allow-non-ct"])
    job.start()
    assert job.wait(timeout=300) == "done", job.error
    report = job.report
    assert report["sides"], "the seeded engine should find something on this volume"
    exported = mrml.export_structures(job.segmentation_node, node)
    voxel_ml = volume.voxel_volume_ml
    for side, values in report["sides"].items():
        kidney = exported.get(f"kidney_{side}", np.zeros(volume.array.shape, bool))
        tumour = exported.get(f"tumour_{side}", np.zeros(volume.array.shape, bool))
        assert kidney.sum() * voxel_ml == pytest.approx(values["kidney_without_tumour_ml"], abs=0.006)
        assert tumour.sum() * voxel_ml == pytest.approx(values["tumour_ml"], abs=0.006)
    rows = mrml.read_results_table(mrml.results_table_of(job.segmentation_node))
    assert {r["Side"].lower(): r["Kidney (without tumor) volume (mL)"] for r in rows} == {
        s: v["kidney_without_tumour_ml"] for s, v in report["sides"].items()
    }
    assert np.array_equal(slicer.util.arrayFromVolume(node), volume.array)


def test_python_executable_is_a_python(tmp_path):
    exe = mrml.python_executable()
    assert exe == sys.executable  # in a plain Python process it is this interpreter


def test_segment_file_from_the_engine_loads_like_the_in_process_result(ct, tmp_path):
    """The background path reads the .seg.nrrd back; the result must equal writing the masks directly."""
    from KidneyTumorSegLib.segfile import read_seg_nrrd

    volume, node = ct
    structures = box_structures(volume.array.shape)
    masks, grid = read_seg_nrrd(write_seg_nrrd(tmp_path / "r.seg.nrrd", structures, volume))
    a = mrml.apply_result(node, masks, REPORT, grid=grid)
    b = mrml.apply_result(node, structures, REPORT)
    ea, eb = mrml.export_structures(a, node), mrml.export_structures(b, node)
    assert set(ea) == set(eb) and all(np.array_equal(ea[k], eb[k]) for k in ea)


def test_cuda_probe_answers_what_torch_says_without_importing_it_here():
    import torch

    available, reason = mrml.CudaProbe().wait(timeout=120)
    assert available == torch.cuda.is_available()
    assert reason.endswith(".") and torch.__version__ in reason


@pytest.mark.skipif(sys.platform.startswith("win"), reason="uses a POSIX shell wrapper")
def test_cuda_probe_says_when_pytorch_is_missing(tmp_path):
    bare = tmp_path / "python-without-packages"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    bare.chmod(0o755)
    available, reason = mrml.CudaProbe(python=str(bare)).wait(timeout=60)
    assert available is False
    assert reason == "PyTorch is not installed yet; it is installed when you first press Apply."
