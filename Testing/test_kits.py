"""KiTS dataset reader: KiTS19/21/23 layouts, the I-P-L geometry, cyst mapping, clear errors for
broken cases while iteration continues, deterministic case splits."""

from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.io import write_volume
from KidneyTumorSegLib.kits import KitsCaseError, KitsDataset, split_cases
from KidneyTumorSegLib.volume import Volume

IPL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # KiTS19: i inferior, j posterior, k left


def labels_volume(seed: int, with_cyst=False) -> Volume:
    """A small (x, y, z)-stored label map with KiTS19's direction and a blob per label."""
    rng = np.random.default_rng(seed)
    a = np.zeros((20, 18, 12), np.uint8)  # array axes: k (x), j (y), i (z)
    a[3:9, 4:10, 2:8] = 1
    a[5:7, 5:8, 3:5] = 2
    if with_cyst:
        a[12:15, 10:13, 6:9] = 3
    a[rng.integers(0, 20), 0, 0] = 0
    return Volume(a, (2.5, 0.8, 0.8), (float(seed), -3.0, 40.0), IPL)


def write_case(root, cid, layout, seed, with_cyst=False, image=True, seg_override=None):
    lab = labels_volume(seed, with_cyst)
    folder = root / cid
    folder.mkdir(parents=True, exist_ok=True)
    seg = {"kits19": "segmentation.nii.gz", "kits21": "aggregated_MAJ_seg.nii.gz",
           "kits23": "segmentation.nii.gz"}[layout]
    write_volume(seg_override if seg_override is not None else lab, folder / seg)
    if layout == "kits23":
        (folder / "instances").mkdir(exist_ok=True)
    ct = lab.with_array((lab.array.astype(np.int16) * 100 - 50))
    if image:
        write_volume(ct, folder / "imaging.nii.gz")
    return ct, lab


def test_kits19_round_trip_keeps_ipl_geometry(tmp_path):
    ct, lab = write_case(tmp_path, "case_00000", "kits19", 0)
    write_case(tmp_path, "case_00001", "kits19", 1)
    ds = KitsDataset(tmp_path)
    assert ds.case_ids == ["case_00000", "case_00001"] and len(ds) == 2
    assert ds[0].layout == "kits19" and ds[0].case_id == "case_00000"
    ct2, lab2 = ds.load("case_00000")
    np.testing.assert_array_equal(lab2.array, lab.array)
    np.testing.assert_array_equal(ct2.array, ct.array)
    np.testing.assert_allclose(lab2.direction, IPL)
    assert lab2.same_grid(lab) and ct2.same_grid(lab)
    assert lab2.array.dtype == np.uint8 and set(np.unique(lab2.array)) == {0, 1, 2}
    ct3, lab3 = ds[1].load()
    assert ct3.same_grid(lab3)


@pytest.mark.parametrize("layout", ["kits21", "kits23"])
@pytest.mark.parametrize("cyst_as,value", [("kidney", 1), ("tumour", 2), ("background", 0)])
def test_kits21_and_kits23_naming_and_cyst_mapping(tmp_path, layout, cyst_as, value):
    _, lab = write_case(tmp_path, "case_00007", layout, 3, with_cyst=True)
    ds = KitsDataset(tmp_path, cyst_as=cyst_as)
    assert ds[0].layout == layout
    _, got = ds.load("case_00007")
    cyst = lab.array == 3
    assert cyst.any()
    assert np.all(got.array[cyst] == value)
    np.testing.assert_array_equal(got.array[~cyst], lab.array[~cyst])
    assert got.array.max() <= 2
    # explicit layout finds the same files; the wrong one finds nothing
    assert KitsDataset(tmp_path, layout=layout).case_ids == ["case_00007"]
    other = "kits21" if layout != "kits21" else "kits19"
    with pytest.raises(InputError):
        KitsDataset(tmp_path, layout=other)


def test_broken_cases_reported_clearly_and_iteration_continues(tmp_path):
    write_case(tmp_path, "case_00000", "kits19", 0)
    write_case(tmp_path, "case_00001", "kits19", 1)
    # truncated image
    img = tmp_path / "case_00001" / "imaging.nii.gz"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    # grid mismatch: the segmentation's spacing differs from the image's
    lab = labels_volume(2)
    shifted = Volume(lab.array, (2.5, 0.9, 0.8), lab.origin, lab.direction)
    write_case(tmp_path, "case_00002", "kits19", 2, seg_override=shifted)
    # missing image
    write_case(tmp_path, "case_00003", "kits19", 3, image=False)
    # size mismatch
    write_case(tmp_path, "case_00004", "kits19", 4,
               seg_override=Volume(np.zeros((20, 18, 11), np.uint8), (2.5, 0.8, 0.8), (4.0, -3.0, 40.0), IPL))
    write_case(tmp_path, "case_00005", "kits19", 5)
    ds = KitsDataset(tmp_path)
    got = [cid for cid, ct, lab in ds.iter_cases()]
    assert got == ["case_00000", "case_00005"]
    errs = dict(ds.errors)
    assert set(errs) == {"case_00001", "case_00002", "case_00003", "case_00004"}
    for cid, msg in errs.items():
        assert cid in msg and msg.endswith(".") and "\n" not in msg
    assert "could not be read" in errs["case_00001"]
    assert "grid" in errs["case_00002"]
    assert "imaging.nii.gz" in errs["case_00003"]
    assert "size" in errs["case_00004"]
    with pytest.raises(KitsCaseError) as info:
        list(ds.iter_cases(on_error="raise"))
    assert isinstance(info.value, InputError) and "case_00001" in str(info.value)
    # labels only: the image is not required
    ds2 = KitsDataset(tmp_path, require_images=False)
    ct, lab = ds2.load("case_00003")
    assert ct is None and lab.array.max() == 2


def test_bad_label_values_and_empty_folder(tmp_path):
    lab = labels_volume(0)
    bad = lab.with_array(np.where(lab.array == 2, 7, lab.array).astype(np.uint8))
    write_case(tmp_path / "a", "case_00000", "kits19", 0, seg_override=bad)
    with pytest.raises(KitsCaseError, match="case_00000"):
        KitsDataset(tmp_path / "a").load("case_00000")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no KiTS cases"):
        KitsDataset(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        KitsDataset(tmp_path / "missing")


def test_split_cases_is_deterministic_and_disjoint():
    ids = [f"case_{i:05d}" for i in range(50)]
    tr, va = split_cases(ids, 0.2, seed=0)
    assert len(va) == 10 and len(tr) == 40
    assert not set(tr) & set(va) and set(tr) | set(va) == set(ids)
    tr2, va2 = split_cases(list(reversed(ids)), 0.2, seed=0)
    assert (tr, va) == (tr2, va2)
    assert split_cases(ids, 0.2, seed=1)[1] != va
    assert split_cases(ids[:3], 0.1)[1] and split_cases(ids[:3], 0.0)[1] == []


@pytest.mark.needs_kits
def test_real_kits19_labels_read_with_their_geometry(kits19_dir):
    ds = KitsDataset(kits19_dir, require_images=False)
    assert len(ds) >= 1 and ds.case_ids[0] == "case_00000"
    cid = "case_00070" if "case_00070" in ds.case_ids else ds.case_ids[0]
    ct, lab = ds.load(cid)
    assert ct is None
    np.testing.assert_allclose(lab.direction, IPL)
    assert set(np.unique(lab.array)) <= {0, 1, 2} and (lab.array == 1).any()
    # the slice axis is the last array axis (i), the one with the largest spacing in this case
    assert lab.array.shape[0] == 512 and lab.array.shape[1] == 512
