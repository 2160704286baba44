"""Synthetic CT phantoms: labels untouched, grids preserved, HU per tissue, anatomy placement,
reproducibility, KiTS layout output, CLI hooks.  Volumes are small so that the file runs in seconds."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from scipy import ndimage as ndi

from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.io import read_volume
from KidneyTumorSegLib.kits import write_kits_case
from KidneyTumorSegLib.phantoms import (
    KITS19_DIRECTION,
    PHASES,
    TISSUE_NAMES,
    PhantomConfig,
    make_phantom,
    procedural_labels,
)
from KidneyTumorSegLib.phantoms import tissues as ts
from KidneyTumorSegLib.phantoms.intensity import tissue_range
from KidneyTumorSegLib.volume import Volume

SHAPE = (48, 96, 96)  # z, y, x voxels
SPACING = (4.0, 4.0, 6.0)  # 384 x 384 x 288 mm: a whole abdomen at low resolution
QUIET = PhantomConfig(scanner=False, dtype="float32")


def small_labels(seed=1, direction=None, **kw) -> Volume:
    return procedural_labels(seed, shape_zyx=SHAPE, spacing_xyz=SPACING, direction=direction, **kw)


@pytest.fixture(scope="module")
def labels():
    lab = small_labels(1, n_kidneys=2)
    assert set(np.unique(lab.array)) == {0, 1, 2}
    return lab


@pytest.fixture(scope="module")
def quiet_phantoms(labels):
    return {ph: make_phantom(labels, 11, PhantomConfig(phase=ph, scanner=False, dtype="float32")) for ph in PHASES}


def physical_points(vol: Volume, mask: np.ndarray) -> np.ndarray:
    kji = np.argwhere(mask)
    return vol.index_to_physical(kji[:, ::-1].astype(float))


def check_renal_tissues(tmap, lab):
    """Labelled voxels carry kidney/tumour tissues; parenchyma and tumour appear nowhere else (urine
    in the renal pelvis and ureters may lie outside the labels)."""
    assert np.all(np.isin(tmap[lab > 0], ts.KIDNEY_TISSUES + ts.TUMOUR_TISSUES))
    exclusive = (ts.CORTEX, ts.MEDULLA, ts.SINUS_FAT) + ts.TUMOUR_TISSUES
    assert not np.any(np.isin(tmap[lab == 0], exclusive))


def test_ct_on_label_grid_and_labels_untouched(labels):
    before = labels.array.copy()
    ct, info = make_phantom(labels, 3)
    assert ct.same_grid(labels) and ct.array.shape == labels.array.shape
    assert ct.array.dtype == np.int16
    np.testing.assert_array_equal(labels.array, before)
    assert info["phase"] in PHASES and info["seed"] == 3
    assert set(TISSUE_NAMES) <= set(info["tissues"])
    # every labelled voxel is rendered as kidney or tumour tissue, and nothing else is
    tmap = info["tissue_map"]
    check_renal_tissues(tmap, labels.array)
    np.testing.assert_array_equal(np.isin(tmap, ts.TUMOUR_TISSUES), labels.array == 2)
    # air outside the body
    outside = tmap == ts.AIR
    assert outside.mean() > 0.05
    assert abs(float(np.median(ct.array[outside])) + 1000) < 30


def test_same_seed_same_array_other_seed_differs(labels):
    a, _ = make_phantom(labels, 5)
    b, _ = make_phantom(labels, 5)
    c, _ = make_phantom(labels, 6)
    np.testing.assert_array_equal(a.array, b.array)
    assert np.mean(a.array != c.array) > 0.5
    np.testing.assert_array_equal(small_labels(4).array, small_labels(4).array)
    assert not np.array_equal(small_labels(4).array, small_labels(5).array)


@pytest.mark.parametrize("phase", PHASES)
def test_hu_per_tissue_within_intended_ranges(quiet_phantoms, phase):
    ct, info = quiet_phantoms[phase]
    assert info["phase"] == phase
    tmap = info["tissue_map"]
    gain, offset = info["gain"], info["offset"]
    checked = 0
    for name in ("fat", "muscle", "liver", "spleen", "aorta", "vein", "kidney_cortex", "cancellous_bone",
                 "bowel_fluid", "gallbladder"):
        m = ndi.binary_erosion(tmap == TISSUE_NAMES.index(name))
        if m.sum() < 20:
            continue
        med = float(np.median(ct.array[m]))
        lo, hi = tissue_range(name, phase, 1.3)
        lo, hi = sorted((lo * gain + offset, hi * gain + offset))
        assert lo - 15 <= med <= hi + 15, (name, med, (lo, hi))
        assert abs(med - info["tissues"][name]) < 30, (name, med, info["tissues"][name])
        checked += 1
    assert checked >= 6
    hu = info["tissues"]
    # absolute sanity against real contrast CT
    assert -160 < hu["fat"] < -40 and 20 < hu["muscle"] < 110
    assert hu["lung"] < -650 and hu["cortical_bone"] > 350 and hu["air"] == -1000
    if phase == "corticomedullary":
        assert hu["kidney_cortex"] - hu["kidney_medulla"] > 40
        assert hu["aorta"] > 180
    if phase == "nephrographic":
        assert abs(hu["kidney_cortex"] - hu["kidney_medulla"]) < 30
    if phase == "excretory":
        assert hu["collecting_system"] > 250


def test_scanner_noise_amplitude_and_texture(labels):
    ct, info = make_phantom(labels, 21, PhantomConfig(dtype="float32", streak_prob=0.0))
    air = ndi.binary_erosion(info["tissue_map"] == ts.AIR, iterations=3)
    x = ct.array
    sd = float(x[air].std())
    assert 5.0 < sd < 40.0, sd
    # spatially correlated in-plane: neighbouring voxels share part of their noise
    both = air[:, :, 1:] & air[:, :, :-1]
    a = x[:, :, 1:][both] + 1000
    b = x[:, :, :-1][both] + 1000
    r = float(np.corrcoef(a, b)[0, 1])
    assert 0.1 < r < 0.98, r


def test_anatomy_placed_around_kidneys(quiet_phantoms, labels):
    ct, info = quiet_phantoms["nephrographic"]
    tmap = info["tissue_map"]
    kid = physical_points(labels, labels.array > 0)
    comp, n = ndi.label(labels.array > 0)
    cents = sorted((physical_points(labels, comp == i).mean(0) for i in range(1, n + 1)), key=lambda p: p[0])
    right, left = cents[0], cents[-1]
    mid = 0.5 * (right[0] + left[0])
    zlo, zhi = kid[:, 2].min(), kid[:, 2].max()
    bone = physical_points(labels, np.isin(tmap, (ts.CANCELLOUS, ts.CORTICAL)))
    spine = bone[(bone[:, 2] > zlo) & (bone[:, 2] < zhi) & (np.abs(bone[:, 0] - mid) < 40)]
    assert len(spine) > 20
    assert right[0] < np.median(spine[:, 0]) < left[0]
    assert np.median(spine[:, 1]) > min(right[1], left[1]) - 20  # not in front of the kidneys
    liver = physical_points(labels, tmap == ts.LIVER).mean(0)
    spleen = physical_points(labels, tmap == ts.SPLEEN).mean(0)
    assert liver[0] < mid < spleen[0]  # LPS: patient right is -x
    assert liver[2] > right[2]
    aorta = physical_points(labels, tmap == ts.AORTA)
    ivc = physical_points(labels, tmap == ts.VEIN)
    at = lambda p: p[np.abs(p[:, 2] - right[2]) < 30]  # noqa: E731
    assert np.median(at(aorta)[:, 0]) > np.median(at(ivc)[:, 0])
    # the body encloses the kidneys with a margin
    near = ndi.binary_dilation(labels.array > 0, iterations=3)
    assert not np.any(tmap[near] == ts.AIR)


def test_geometry_preserved_for_flipped_and_oblique_grids():
    lab = small_labels(2)
    # same physical labels stored flipped along two axes: the anatomy is the same physical anatomy
    flip = np.diag([-1.0, 1.0, -1.0])
    nx, _, nz = lab.size_xyz
    origin = lab.index_to_physical([nx - 1, 0, nz - 1])
    lab_f = Volume(np.ascontiguousarray(lab.array[::-1, :, ::-1]), lab.spacing, origin, flip)
    ct_a, ia = make_phantom(lab, 9, QUIET)
    ct_b, ib = make_phantom(lab_f, 9, QUIET)
    assert ct_b.same_grid(lab_f)
    same = ib["tissue_map"][::-1, :, ::-1] == ia["tissue_map"]
    assert same[lab.array == 0].mean() > 0.999
    # an oblique grid (rotated 20 degrees about z and 10 about x)
    t, u = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(u), -np.sin(u)], [0, np.sin(u), np.cos(u)]])
    lab_o = small_labels(2, direction=rz @ rx)
    before = lab_o.array.copy()
    ct_o, io = make_phantom(lab_o, 9)
    assert ct_o.same_grid(lab_o)
    np.testing.assert_allclose(ct_o.direction, rz @ rx)
    np.testing.assert_array_equal(lab_o.array, before)
    check_renal_tissues(io["tissue_map"], lab_o.array)


def test_procedural_kidney_sizes_and_positions():
    seen_single = False
    for seed in range(12):
        lab = procedural_labels(seed, shape_zyx=(90, 200, 200), spacing_xyz=(2.0, 2.0, 3.0))
        comp, n = ndi.label(lab.array > 0)
        assert n >= 1 and (lab.array == 2).any()
        kid_sides = []
        for i in range(1, n + 1):
            p = physical_points(lab, comp == i)
            if len(p) * 12 / 1000 < 40:  # fragments, small separate tumour parts
                continue
            q = p - p.mean(0)
            _, vec = np.linalg.eigh(q.T @ q / len(q))
            length = np.ptp(q @ vec[:, -1])  # extent along the long axis
            assert 90 < length < 180, length  # 10-12 cm kidneys, longer with a polar tumour
            kid_sides.append(p.mean(0))
        if len(kid_sides) == 1:
            seen_single = True
        if len(kid_sides) == 2:
            a, b = sorted(kid_sides, key=lambda c: c[0])
            assert 110 < b[0] - a[0] < 175
        tumour = (lab.array == 2).sum() * 12.0  # mm^3
        d = 2 * (3 * tumour / (4 * np.pi)) ** (1 / 3)
        assert 8 < d < 130
    single = procedural_labels(3, shape_zyx=SHAPE, spacing_xyz=SPACING, n_kidneys=1, tumour=False)
    assert set(np.unique(single.array)) == {0, 1} and ndi.label(single.array > 0)[1] == 1
    ct, _ = make_phantom(single, 3, QUIET)
    assert ct.same_grid(single)
    del seen_single


def test_write_kits_case_round_trip_with_kits19_direction(tmp_path):
    from KidneyTumorSegLib.kits import KitsDataset

    lab = small_labels(7, direction=KITS19_DIRECTION)
    assert lab.array.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # (x, y, z) like the real files
    ct, _ = make_phantom(lab, 7)
    case = write_kits_case(tmp_path, "7", ct, lab)
    assert case.name == "case_00007"
    assert (case / "imaging.nii.gz").exists() and (case / "segmentation.nii.gz").exists()
    import SimpleITK as sitk

    img = sitk.ReadImage(str(case / "segmentation.nii.gz"))
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection()) == "IPL"
    ds = KitsDataset(tmp_path)
    ct2, lab2 = ds.load("case_00007")
    np.testing.assert_array_equal(ct2.array, ct.array)
    np.testing.assert_array_equal(lab2.array, lab.array)
    assert ct2.same_grid(ct) and lab2.same_grid(lab)


def test_labels_with_other_values_are_refused():
    lab = small_labels(1)
    bad = lab.with_array(np.where(lab.array == 2, 3, lab.array).astype(np.uint8))
    with pytest.raises(InputError):
        make_phantom(bad, 0)


def _tiny_kits(tmp_path, n=2):
    root = tmp_path / "src"
    for i in range(n):
        lab = small_labels(30 + i, direction=KITS19_DIRECTION)
        write_kits_case(root, str(i), lab.with_array(np.zeros(lab.array.shape, np.int16)), lab)
        (root / f"case_{i:05d}" / "imaging.nii.gz").unlink()  # labels only, like the shared KiTS19 folder
    return root


def test_cli_phantom_and_gallery_from_kits(tmp_path, capsys):
    from PIL import Image

    from KidneyTumorSegLib.kits import KitsDataset
    from KidneyTumorSegLib.phantoms.cli import add_gallery_parser, add_phantom_parser

    src = _tiny_kits(tmp_path)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_phantom_parser(sub)
    add_gallery_parser(sub)
    out = tmp_path / "out"
    args = parser.parse_args(["phantom", str(out), "--n", "2", "--seed", "4", "--from-kits", str(src)])
    assert args.func(args) == 0
    ds = KitsDataset(out)
    assert ds.case_ids == ["case_00000", "case_00001"]
    ct, lab = ds.load("case_00001")
    src_lab = read_volume(src / "case_00001" / "segmentation.nii.gz")
    np.testing.assert_array_equal(lab.array, src_lab.array)
    assert ct.same_grid(src_lab) and ct.array.min() >= -1024
    png = tmp_path / "g.png"
    args = parser.parse_args(["gallery", str(png), "--n", "2", "--from-kits", str(src)])
    assert args.func(args) == 0
    im = Image.open(png)
    assert im.size[0] > 300 and im.size[1] > 400
    assert str(png) in capsys.readouterr().out


@pytest.mark.needs_kits
def test_phantom_on_a_real_kits19_mask(kits19_dir):
    from KidneyTumorSegLib.kits import KitsDataset

    ds = KitsDataset(kits19_dir, require_images=False)
    cid = "case_00070" if "case_00070" in ds.case_ids else ds.case_ids[0]
    _, full = ds.load(cid)
    np.testing.assert_allclose(full.direction, KITS19_DIRECTION)
    # strided subsample keeps the geometry exact: every 4th voxel in-plane
    sub = Volume(np.ascontiguousarray(full.array[::4, ::4, :]),
                 (full.spacing[0], full.spacing[1] * 4, full.spacing[2] * 4), full.origin, full.direction)
    before = sub.array.copy()
    ct, info = make_phantom(sub, 0, QUIET)
    assert ct.same_grid(sub)
    np.testing.assert_array_equal(sub.array, before)
    tmap = info["tissue_map"]
    comp, n = ndi.label(sub.array > 0)
    sizes = ndi.sum(np.ones_like(comp), comp, range(1, n + 1))
    big = [i + 1 for i in np.argsort(sizes)[::-1][:2]]
    cents = sorted((physical_points(sub, comp == i).mean(0) for i in big), key=lambda p: p[0])
    right, left = cents
    mid = 0.5 * (right[0] + left[0])
    bone = physical_points(sub, np.isin(tmap, (ts.CANCELLOUS, ts.CORTICAL)))
    kid = physical_points(sub, sub.array > 0)
    spine = bone[(bone[:, 2] > kid[:, 2].min()) & (bone[:, 2] < kid[:, 2].max()) & (np.abs(bone[:, 0] - mid) < 40)]
    assert right[0] < np.median(spine[:, 0]) < left[0]
    liver = physical_points(sub, tmap == ts.LIVER)
    assert len(liver) > 100 and np.median(liver[:, 0]) < mid
    near = ndi.binary_dilation(sub.array > 0, iterations=2)
    assert not np.any(tmap[near] == ts.AIR)
