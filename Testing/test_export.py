"""Export for training: corrected segmentations -> KiTS cases (real MRML, real files), and fine-tuning on them."""

from __future__ import annotations

import json

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

from KidneyTumorSegLib import mrml  # noqa: E402
from KidneyTumorSegLib.export import ExportError, label_from_terminology  # noqa: E402
from KidneyTumorSegLib.io import read_volume, write_volume  # noqa: E402
from KidneyTumorSegLib.mrml import segments as seg_mod  # noqa: E402
from KidneyTumorSegLib.mrml.export import export_training_case  # noqa: E402
from KidneyTumorSegLib.terminology import STRUCTURES, TERMINOLOGY_TAG  # noqa: E402
from KidneyTumorSegLib.volume import Volume  # noqa: E402

GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
# A kidney tumour picked from Slicer's lists as a "Mass" of the kidney, and a kidney from another list.
MASS_OF_KIDNEY = (f"{GENERAL_ANATOMY}~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~^^~"
                  "Anatomic codes - DICOM master list~SCT^64033007^Kidney~^^")
KIDNEY_OTHER_LIST = (f"{GENERAL_ANATOMY}~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~^^~"
                     "Anatomic codes - DICOM master list~^^~^^")
LIVER_NEOPLASM = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered "
                  "Structure~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^")
TISSUE = f"{GENERAL_ANATOMY}~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~Anatomic codes - DICOM master list~^^~^^"


def test_terminology_decides_the_label_by_its_codes():
    for key, entry in STRUCTURES.items():
        assert label_from_terminology(entry.terminology) == entry.label, key
    assert label_from_terminology(KIDNEY_OTHER_LIST) == 1
    assert label_from_terminology(MASS_OF_KIDNEY) == 2
    renamed_meanings = STRUCTURES["tumour_left"].terminology.replace("Neoplasm", "Tumour").replace("Kidney", "Niere")
    assert label_from_terminology(renamed_meanings) == 2  # the codes count, not their wording
    for other in (LIVER_NEOPLASM, TISSUE, "", None, "not a terminology entry"):
        assert label_from_terminology(other) is None, other


# --- the scene side -------------------------------------------------------------------------------
@pytest.fixture
def corrected(mrml_scene):
    """A result on an oblique, anisotropic CT as an annotator leaves it: one kidney painted larger,
    one renamed, and a tumour the engine missed added by hand with Slicer's "Mass" terminology."""
    volume = oblique_volume()
    node = mrml.volume_to_node(volume, name="CT")
    structures = box_structures(volume.array.shape)
    seg_node = mrml.apply_result(node, structures, {"sides": {}, "weights": "test weights"})
    ours = mrml.our_segment_ids(seg_node)
    segmentation = seg_node.GetSegmentation()

    painted = structures["kidney_right"].copy()
    painted[2:5, 2:6, 2:5] = True
    image = seg_mod._layer_image(painted.astype(np.uint8), vtk_matrix(node))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, seg_node, ours["kidney_right"], slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )
    segmentation.GetSegment(ours["kidney_left"]).SetName("Niere links")
    missed = np.zeros(volume.array.shape, bool)
    missed[12:15, 16:20, 30:34] = True  # inside the left kidney
    added = add_user_segment(seg_node, node, missed, name="Tumour I found")
    segmentation.GetSegment(added).SetTag(TERMINOLOGY_TAG, MASS_OF_KIDNEY)

    expected = np.zeros(volume.array.shape, np.uint8)
    expected[painted | structures["kidney_left"]] = 1
    expected[structures["tumour_right"] | missed] = 2
    return volume, node, seg_node, expected


def _cases(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_export_writes_the_corrected_voxels_on_the_ct_grid_and_changes_nothing(corrected, mrml_scene, tmp_path):
    volume, node, seg_node, expected = corrected
    before = node_state(mrml_scene)
    n_nodes = mrml_scene.GetNumberOfNodes()
    voxels_before = slicer.util.arrayFromVolume(node).copy()

    case = export_training_case(seg_node, node, tmp_path / "cases")

    assert case == tmp_path / "cases" / "case_00000"
    assert sorted(p.name for p in case.iterdir()) == ["imaging.nii.gz", "provenance.json", "segmentation.nii.gz"]
    labels, ct = read_volume(case / "segmentation.nii.gz"), read_volume(case / "imaging.nii.gz")
    assert ct.same_grid(volume, tol=1e-4) and labels.same_grid(volume, tol=1e-4)
    assert np.array_equal(ct.array, volume.array)
    assert labels.array.dtype == np.uint8 and np.array_equal(labels.array, expected)

    provenance = json.loads((case / "provenance.json").read_text())
    by_name = {s["name"]: s for s in provenance["segments"]}
    assert set(by_name) == {"Right kidney", "Niere links", "Right kidney tumor", "Tumour I found"}
    assert {n: s["label"] for n, s in by_name.items()} == {
        "Right kidney": 1, "Niere links": 1, "Right kidney tumor": 2, "Tumour I found": 2}
    assert all(s["mapped_by"] == "terminology" for s in by_name.values())
    assert provenance["edited_since_computed"] == ["Right kidney"]
    assert provenance["source"]["volume"] == "CT" and provenance["computed_with"] == {"weights": "test weights"}
    assert provenance["voxels"] == {"kidney": int((expected == 1).sum()), "tumour": int((expected == 2).sum())}

    assert mrml_scene.GetNumberOfNodes() == n_nodes
    assert node_state(mrml_scene) == before, "export must not modify any node"
    assert np.array_equal(slicer.util.arrayFromVolume(node), voxels_before)


def test_cases_are_numbered_and_never_overwritten(corrected, tmp_path):
    _, node, seg_node, _ = corrected
    out = tmp_path / "cases"
    (out / "case_00041").mkdir(parents=True)
    (out / "case_00041" / "segmentation.nii.gz").write_bytes(b"the annotator's earlier work")
    assert export_training_case(seg_node, node, out).name == "case_00042"
    assert export_training_case(seg_node, node, out, case_id="7").name == "case_00007"
    with pytest.raises(ExportError, match="already exists"):
        export_training_case(seg_node, node, out, case_id="case_00041")
    assert (out / "case_00041" / "segmentation.nii.gz").read_bytes() == b"the annotator's earlier work"
    assert _cases(out) == ["case_00007", "case_00041", "case_00042"]  # no staging folder left behind


def test_a_segment_that_maps_to_no_label_is_one_sentence_and_writes_nothing(corrected, tmp_path):
    volume, node, seg_node, _ = corrected
    notes = np.zeros(volume.array.shape, bool)
    notes[1:3, 1:3, 1:3] = True
    add_user_segment(seg_node, node, notes, name="My notes")  # Slicer's default terminology: Tissue
    with pytest.raises(ExportError) as err:
        export_training_case(seg_node, node, tmp_path / "cases")
    message = str(err.value)
    assert "'My notes'" in message and "'Tissue'" in message and message.count(". ") == 0
    assert _cases(tmp_path / "cases") == []


# --- the command line ------------------------------------------------------------------------------
def _save_with_slicer(seg_node, path):
    storage = seg_node.CreateDefaultStorageNode()
    slicer.mrmlScene.AddNode(storage)
    seg_node.SetAndObserveTransformNodeID(None)
    seg_node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.WriteData(seg_node)
    return path


def test_cli_export_round_trip_of_a_file_saved_by_slicer(corrected, tmp_path, capsys):
    from KidneyTumorSegLib.cli import main

    volume, node, seg_node, expected = corrected
    seg_path = _save_with_slicer(seg_node, tmp_path / "corrected.seg.nrrd")
    ct_path = write_volume(volume, tmp_path / "ct.nrrd")
    out = tmp_path / "cases"

    assert main(["export", str(seg_path), "--reference", str(ct_path), "--out", str(out)]) == 0
    labels = read_volume(out / "case_00000" / "segmentation.nii.gz")
    assert labels.same_grid(volume, tol=1e-4) and np.array_equal(labels.array, expected)
    assert np.array_equal(read_volume(out / "case_00000" / "imaging.nii.gz").array, volume.array)
    assert "case_00000" in capsys.readouterr().out

    # the same segmentation on a cropped CT: Slicer's voxels are carried over by position
    k0, j0, i0 = 4, 6, 10
    cropped = Volume(volume.array[k0:, j0:, i0:].copy(), volume.spacing,
                     tuple(volume.index_to_physical((i0, j0, k0))), volume.direction)
    crop_path = write_volume(cropped, tmp_path / "cropped.nii.gz")
    assert main(["export", str(seg_path), "--reference", str(crop_path), "--out", str(out), "--case-id", "9"]) == 0
    assert np.array_equal(read_volume(out / "case_00009" / "segmentation.nii.gz").array, expected[k0:, j0:, i0:])
    capsys.readouterr()

    code = main(["export", str(seg_path), "--reference", str(ct_path), "--out", str(out), "--case-id", "9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("Error: The case case_00009 already exists") and "\n" not in err
    assert np.array_equal(read_volume(out / "case_00009" / "segmentation.nii.gz").array, expected[k0:, j0:, i0:])


def test_cli_export_refuses_an_unmappable_segment_and_a_missing_reference(corrected, tmp_path, capsys):
    from KidneyTumorSegLib.cli import main

    volume, node, seg_node, _ = corrected
    liver = np.zeros(volume.array.shape, bool)
    liver[1:4, 30:38, 2:10] = True
    seg_node.GetSegmentation().GetSegment(add_user_segment(seg_node, node, liver, name="Liver lesion")).SetTag(
        TERMINOLOGY_TAG, LIVER_NEOPLASM)
    seg_path = _save_with_slicer(seg_node, tmp_path / "with_liver.seg.nrrd")
    ct_path = write_volume(volume, tmp_path / "ct.nrrd")
    out = tmp_path / "cases"
    assert main(["export", str(seg_path), "--reference", str(ct_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "The segment 'Liver lesion' cannot be mapped to a KiTS label" in err and "Traceback" not in err
    assert main(["export", str(seg_path), "--reference", str(tmp_path / "nope.nrrd"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _cases(out) == []


# --- the loop closes: fine-tuning on exported cases ------------------------------------------------
def test_finetuning_starts_from_the_bundle_on_exported_cases(mrml_scene, tmp_path):
    import torch

    from KidneyTumorSegLib.cli import main
    from KidneyTumorSegLib.config import ModelConfig
    from KidneyTumorSegLib.training.evaluate import procedural_phantom
    from KidneyTumorSegLib.weights import build_networks, load_bundle, save_bundle, seeded_bundle

    out = tmp_path / "cases"
    for seed in (1, 2):
        ct, truth = procedural_phantom(0, seed=seed, grid_mm=(4.0, 4.0, 6.0))
        node = mrml.volume_to_node(ct.with_array(np.round(ct.array).astype(np.int16)), name=f"CT {seed}")
        seg_node = mrml.apply_result(node, {"kidney_right": truth.array == 1, "tumour_right": truth.array == 2},
                                     closed_surface=False)
        export_training_case(seg_node, node, out)
    assert _cases(out) == ["case_00000", "case_00001"]

    start = seeded_bundle(ModelConfig.tiny(), seed=11)
    save_bundle(tmp_path / "start.safetensors", ModelConfig.tiny(), start.state_dicts)
    run = tmp_path / "run"
    torch.manual_seed(0)
    code = main(["train", "--data", str(out), "--finetune-from", str(tmp_path / "start.safetensors"),
                 "--out", str(run), "--networks", "seg", "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "seg=2", "--val-samples", "2", "--val-fraction", "0.5", "--device", "cpu",
                 "--threads", "1", "--progress", "none"])
    assert code == 0
    tuned = load_bundle(run / "bundle.safetensors")
    assert tuned.config == ModelConfig.tiny()  # the bundle's shapes, no --config needed
    for name in ("z_localiser", "xy_localiser"):  # not trained: taken from the bundle as they were
        for key, value in start.state_dicts[name].items():
            torch.testing.assert_close(tuned.state_dicts[name][key], value)

    def distance(a, b):
        return sum(float((a[k].float() - b[k].float()).norm()) for k in a if a[k].is_floating_point())

    scratch = build_networks(ModelConfig.tiny())["segmenter"].state_dict()
    moved = distance(tuned.state_dicts["segmenter"], start.state_dicts["segmenter"])
    assert 0 < moved < distance(tuned.state_dicts["segmenter"], scratch)
    provenance = tuned.header["provenance"]
    assert provenance["networks"]["segmenter"].startswith("fine-tuned in this run from")
    assert sorted(provenance["split"]["train"] + provenance["split"]["val"]) == ["case_00000", "case_00001"]

    wrong = main(["train", "--data", str(out), "--finetune-from", str(tmp_path / "start.safetensors"),
                  "--config", "compact", "--out", str(tmp_path / "run2"), "--progress", "none"])
    assert wrong == 2
