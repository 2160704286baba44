"""The .seg.nrrd writer and reader, checked against slicerio and Slicer's own segmentation reader."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from KidneyTumorSegLib.segfile import (
    kits_labels,
    mask_fingerprint,
    pack_layers,
    read_seg_nrrd,
    write_seg_nrrd,
)
from KidneyTumorSegLib.terminology import (
    ANATOMIC_CONTEXT,
    FINGERPRINT_TAG,
    SEGMENTATION_CONTEXT,
    STRUCTURE_KEYS,
    STRUCTURE_TAG,
    STRUCTURES,
    parse_terminology_tag,
    structure,
)
from KidneyTumorSegLib.volume import Volume

try:  # Testing/ may be a package or a plain folder of test files
    from .mrml_fixtures import box_structures, oblique_volume
except ImportError:
    from mrml_fixtures import box_structures, oblique_volume

slicerio = pytest.importorskip("slicerio")


def _header(path) -> dict[str, str]:
    data = open(path, "rb").read()
    text = data[: data.index(b"\n\n")].decode()
    out = {}
    for line in text.splitlines()[1:]:
        if line.startswith("#"):
            continue
        key, sep, value = line.partition(":=")
        if not sep:
            key, _, value = line.partition(": ")
        out[key] = value
    return out


@pytest.fixture
def grid() -> Volume:
    return oblique_volume()


# --- terminology ----------------------------------------------------------------------------------
def test_terminology_tags_are_exactly_the_design_strings():
    assert structure("kidney_right").terminology == (
        "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
        "~SCT^64033007^Kidney~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^"
    )
    assert structure("kidney_left").terminology.split("~")[3] == "SCT^7771000^Left"
    assert structure("tumour_left").terminology == (
        "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
        "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^64033007^Kidney~SCT^7771000^Left"
    )
    names = {k: STRUCTURES[k].name for k in STRUCTURE_KEYS}
    assert names == {
        "kidney_right": "Right kidney",
        "kidney_left": "Left kidney",
        "tumour_right": "Right kidney tumor",
        "tumour_left": "Left kidney tumor",
    }
    assert STRUCTURES["kidney_left"].rgb == (185, 102, 83)
    assert STRUCTURES["tumour_right"].rgb != STRUCTURES["kidney_right"].rgb


def test_terminology_tags_match_slicers_own_serialiser():
    slicer = pytest.importorskip("slicer")
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for key in STRUCTURE_KEYS:
        parsed = parse_terminology_tag(STRUCTURES[key].terminology)

        def parts(code):
            return (code.value, code.scheme, code.meaning) if code else ("", "", "")

        expected = logic.SerializeTerminologyEntry(
            SEGMENTATION_CONTEXT, *parts(parsed["category"]), *parts(parsed["type"]),
            *parts(parsed["type_modifier"]), ANATOMIC_CONTEXT, *parts(parsed["region"]),
            *parts(parsed["region_modifier"]),
        )
        assert STRUCTURES[key].terminology == expected
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(STRUCTURES[key].terminology, entry)
        if key.startswith("kidney"):
            assert entry.GetTypeObject().GetCodeValue() == "64033007"
            assert entry.GetTypeModifierObject().GetCodeMeaning() == key.split("_")[1].capitalize()
        else:
            assert entry.GetTypeObject().GetCodeValue() == "108369006"
            assert entry.GetRegionObject().GetCodeMeaning() == "Kidney"
            assert entry.GetRegionModifierObject().GetCodeMeaning() == key.split("_")[1].capitalize()


def test_parse_terminology_tag_rejects_malformed_tags():
    with pytest.raises(ValueError):
        parse_terminology_tag("a~b~c")
    with pytest.raises(ValueError):
        parse_terminology_tag("ctx~SCT^1~^^~^^~ctx~^^~^^")


# --- helpers --------------------------------------------------------------------------------------
def test_pack_layers_shares_a_layer_unless_masks_overlap():
    a = np.zeros((4, 5, 6), bool)
    b = np.zeros_like(a)
    c = np.zeros_like(a)
    a[0, 0, :3] = True
    b[1, 1, :3] = True
    c[0, 0, 2:] = True  # overlaps a at (0, 0, 2)
    layers, where = pack_layers([a, b, c])
    assert where == [(0, 1), (0, 2), (1, 1)]
    assert len(layers) == 2
    assert np.array_equal(layers[0] == 1, a) and np.array_equal(layers[0] == 2, b)
    assert np.array_equal(layers[1] == 1, c)


def test_fingerprint_follows_voxels_not_storage_box():
    m = np.zeros((10, 12, 14), bool)
    m[2:5, 3:7, 4:9] = True
    padded = np.zeros((20, 20, 20), bool)
    padded[5:15, 2:14, 1:15] = m
    # same voxels, stored in a box that starts at reference index (i, j, k) = (-1, -2, -5)
    assert mask_fingerprint(m) == mask_fingerprint(padded, offset_ijk=(-1, -2, -5))
    changed = m.copy()
    changed[4, 6, 8] = False
    assert mask_fingerprint(changed) != mask_fingerprint(m)
    moved = np.roll(m, 1, axis=2)
    assert mask_fingerprint(moved) != mask_fingerprint(m)
    assert mask_fingerprint(np.zeros_like(m)) == "0"


# --- writing and reading back ---------------------------------------------------------------------
def test_round_trip_keeps_masks_geometry_and_labels(tmp_path, grid):
    structures = box_structures(grid.array.shape)
    path = write_seg_nrrd(tmp_path / "out.seg.nrrd", structures, grid)
    assert path == tmp_path / "out.seg.nrrd"
    masks, labels = read_seg_nrrd(path)
    assert set(masks) == set(structures)
    for key, mask in structures.items():
        assert np.array_equal(masks[key], mask), key
    assert labels.same_grid(grid)
    assert np.array_equal(labels.array, kits_labels(structures, grid).array)
    assert set(np.unique(labels.array)) == {0, 1, 2}
    header = _header(path)
    assert header["space"] == "left-posterior-superior"
    assert header["dimension"] == "3"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"


def test_slicerio_reads_names_colours_terminology_and_geometry(tmp_path, grid):
    structures = box_structures(grid.array.shape)
    path = write_seg_nrrd(tmp_path / "out.seg.nrrd", structures, grid)
    seg = slicerio.read_segmentation(str(path))
    assert np.allclose(seg["ijkToLPS"], grid.index_to_physical_matrix())
    by_id = {s["id"]: s for s in seg["segments"]}
    assert list(by_id) == ["kidney_right", "kidney_left", "tumour_right"]  # catalogue order
    for key, s in by_id.items():
        entry = STRUCTURES[key]
        assert s["name"] == entry.name
        assert np.allclose(s["color"], entry.color, atol=1e-5)
        term = s["terminology"]
        assert term["contextName"] == SEGMENTATION_CONTEXT
        parsed = parse_terminology_tag(entry.terminology)
        assert term["type"] == [parsed["type"].scheme, parsed["type"].value, parsed["type"].meaning]
        side = "Right" if key.endswith("right") else "Left"
        if entry.kind == "kidney":
            assert term["typeModifier"][2] == side
        else:
            assert term["anatomicRegion"][2] == "Kidney" and term["anatomicRegionModifier"][2] == side
        assert s["tags"][STRUCTURE_TAG] == key
        # voxels: slicerio indexes (i, j, k); ours are (k, j, i)
        voxels = seg["voxels"]
        mask = (voxels == s["labelValue"]).transpose(2, 1, 0)
        assert np.array_equal(mask, structures[key]), key
        i0, i1, j0, j1, k0, k1 = s["extent"]
        idx = np.argwhere(structures[key])
        assert (k0, j0, i0) == tuple(idx.min(0)) and (k1, j1, i1) == tuple(idx.max(0))


def test_slicers_segmentation_reader_opens_the_file(tmp_path, grid):
    slicer = pytest.importorskip("slicer")
    structures = box_structures(grid.array.shape)
    path = write_seg_nrrd(tmp_path / "out.seg.nrrd", structures, grid)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node)
    seg = node.GetSegmentation()
    assert [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())] == [
        "kidney_right", "kidney_left", "tumour_right"
    ]
    assert seg.GetNumberOfLayers() == 1
    for key in structures:
        segment = seg.GetSegment(key)
        assert segment.GetName() == STRUCTURES[key].name
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value := _ref()) and str(value) == (
            STRUCTURES[key].terminology
        )
        assert np.allclose(segment.GetColor(), STRUCTURES[key].color, atol=1e-5)
    # The reference geometry Slicer derives is the CT's grid in RAS.
    geometry = seg.GetConversionParameter("Reference image geometry").split(";")
    m = np.array([float(v) for v in geometry[:16]]).reshape(4, 4)
    expected = grid.index_to_physical_matrix()
    expected[:2, :] *= -1
    assert np.allclose(m, expected, atol=1e-6)
    # voxels through Slicer's own labelmap: each segment's binary labelmap on the CT grid
    image = slicer.vtkOrientedImageData()
    for key, mask in structures.items():
        assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(node, key, image, False)
        from vtk.util import numpy_support

        e = image.GetExtent()
        arr = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
            e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1
        )
        full = np.zeros(grid.array.shape, bool)
        full[e[4] : e[5] + 1, e[2] : e[3] + 1, e[0] : e[1] + 1] = arr == seg.GetSegment(key).GetLabelValue()
        assert np.array_equal(full, mask), key


def _ref():
    import vtk

    return vtk.reference("")


def test_overlapping_structures_are_written_as_layers(tmp_path, grid):
    slicer = pytest.importorskip("slicer")
    structures = box_structures(grid.array.shape)
    other = np.zeros(grid.array.shape, bool)
    other[:, :, : grid.array.shape[2] // 2] = True  # overlaps the right kidney and tumour
    structures["liver guess"] = other
    path = write_seg_nrrd(tmp_path / "layers.seg.nrrd", structures, grid)
    header = _header(path)
    assert header["dimension"] == "4"
    assert header["kinds"] == "list domain domain domain"
    seg = slicerio.read_segmentation(str(path))
    assert seg["voxels"].shape[0] == 2  # two layers
    assert {s["id"]: s["layer"] for s in seg["segments"]}["liver guess"] == 1
    masks, labels = read_seg_nrrd(path)
    for key, mask in structures.items():
        assert np.array_equal(masks[key], mask), key
    # only our structures make the KiTS labels
    assert np.array_equal(labels.array, kits_labels(box_structures(grid.array.shape), grid).array)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    assert node.GetSegmentation().GetNumberOfSegments() == 4
    assert node.GetSegmentation().GetNumberOfLayers() == 2


def test_empty_structures_are_skipped_and_all_empty_is_still_a_valid_file(tmp_path, grid):
    slicer = pytest.importorskip("slicer")
    structures = box_structures(grid.array.shape)
    structures["tumour_left"] = np.zeros(grid.array.shape, bool)
    masks, _ = read_seg_nrrd(write_seg_nrrd(tmp_path / "a.seg.nrrd", structures, grid))
    assert "tumour_left" not in masks and len(masks) == 3

    path = write_seg_nrrd(tmp_path / "empty.seg.nrrd", {"kidney_left": np.zeros(grid.array.shape, bool)}, grid)
    masks, labels = read_seg_nrrd(path)
    assert masks == {} and labels.same_grid(grid) and not labels.array.any()
    assert slicerio.read_segmentation(str(path))["segments"] == []
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    assert node.GetSegmentation().GetNumberOfSegments() == 0


def test_failed_write_leaves_existing_file_and_no_temporaries(tmp_path, grid, monkeypatch):
    target = tmp_path / "out.seg.nrrd"
    target.write_bytes(b"previous result")
    bad = {"kidney_right": np.zeros((3, 3, 3), bool)}
    with pytest.raises(ValueError, match="shape"):
        write_seg_nrrd(target, bad, grid)
    assert target.read_bytes() == b"previous result"

    def disk_full(self, data):  # fail in the middle of writing the voxel data
        raise OSError("disk full")

    monkeypatch.setattr(gzip.GzipFile, "write", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_seg_nrrd(target, box_structures(grid.array.shape), grid)
    assert target.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == ["out.seg.nrrd"]


def test_reads_a_file_slicer_cropped_back_onto_the_reference_grid(tmp_path, grid):
    """Slicer may save only the segments' bounding box; the reader restores the CT grid."""
    slicer = pytest.importorskip("slicer")
    structures = box_structures(grid.array.shape)
    src = write_seg_nrrd(tmp_path / "full.seg.nrrd", structures, grid)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(src))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node)
    storage.SetCropToMinimumExtent(True)
    cropped = tmp_path / "cropped.seg.nrrd"
    storage.SetFileName(str(cropped))
    assert storage.WriteData(node)
    header = _header(cropped)
    sizes = [int(v) for v in header["sizes"].split()]
    assert sizes != list(grid.size_xyz)  # Slicer really cropped it
    assert header["Segmentation_ReferenceImageExtentOffset"] != "0 0 0"
    masks, labels = read_seg_nrrd(cropped)
    assert labels.same_grid(grid, tol=1e-4)
    for key, mask in structures.items():
        assert np.array_equal(masks[key], mask), key
    # fingerprints stored by the writer survive Slicer's save
    seg = slicerio.read_segmentation(str(cropped))
    for s in seg["segments"]:
        assert s["tags"][FINGERPRINT_TAG] == mask_fingerprint(structures[s["id"]])


def test_read_errors_are_one_sentence(tmp_path):
    from KidneyTumorSegLib.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        read_seg_nrrd(tmp_path / "missing.seg.nrrd")
    bad = tmp_path / "bad.seg.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: unsigned char\n\n" + gzip.compress(b"x"))
    with pytest.raises(InputError):
        read_seg_nrrd(bad)
