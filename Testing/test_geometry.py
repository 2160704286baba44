"""Geometry: reading honours direction cosines; results land exactly on the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib import preprocess, resampling
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.io import read_volume, write_volume
from KidneyTumorSegLib.volume import Volume


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


OBLIQUE_FLIPPED = rotation(2, 20) @ rotation(0, 10) @ np.diag([-1.0, 1.0, -1.0])


def test_index_physical_round_trip_matches_simpleitk():
    vol = Volume(np.zeros((5, 6, 7), np.int16), (0.7, 0.8, 3.0), (10.0, -20.0, 5.0), OBLIQUE_FLIPPED)
    img = vol.to_sitk()
    ijk = np.array([[1, 2, 3], [6, 5, 4], [0, 0, 0]], float)
    ours = vol.index_to_physical(ijk)
    theirs = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in ijk])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(vol.physical_to_index(ours), ijk, atol=1e-9)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_file_round_trip_keeps_array_and_geometry(tmp_path, suffix):
    rng = np.random.default_rng(1)
    arr = rng.integers(-1000, 1000, (6, 7, 8)).astype(np.int16)
    vol = Volume(arr, (0.7, 0.8, 3.0), (10.0, -20.0, 5.0), OBLIQUE_FLIPPED)
    back = read_volume(write_volume(vol, tmp_path / f"v{suffix}"))
    np.testing.assert_array_equal(back.array, arr)
    assert back.same_grid(vol, tol=1e-5)


def test_kits19_style_ipl_orientation_is_honoured(tmp_path):
    """KiTS19 stores (z, y, x) arrays with I-P-L axes: array axis 0 must still be read as z."""
    # Build the image a KiTS19 reader sees: i runs inferior, j posterior, k left.
    direction = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], float)  # columns: i->-z, j->+y, k->+x
    arr = np.zeros((4, 5, 6), np.uint8)  # numpy (k, j, i)
    arr[3, 0, 0] = 1  # k=3 (left-most), j=0, i=0 (most superior)
    vol = Volume(arr, (2.0, 0.8, 0.8), (0.0, 0.0, 0.0), direction)
    back = read_volume(write_volume(vol, tmp_path / "seg.nii.gz"))
    canon = resampling.to_canonical(back, (0.8, 0.8, 2.0), "nearest", 0)
    # In canonical LPS the marker is at the greatest x (left), least y, greatest z (superior).
    z, y, x = np.argwhere(canon.array == 1)[0]
    assert x == canon.array.shape[2] - 1 and y == 0 and z == canon.array.shape[0] - 1


def test_resample_onto_lands_exactly_on_an_oblique_anisotropic_grid():
    ref = Volume(np.zeros((12, 20, 18), np.int16), (0.9, 0.7, 3.5), (3.0, -4.0, 10.0), OBLIQUE_FLIPPED)
    # A ball in physical space, drawn on the reference grid directly (the truth) ...
    k, j, i = np.meshgrid(*[np.arange(n) for n in ref.array.shape], indexing="ij")
    pts = ref.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3).astype(float))
    centre = ref.index_to_physical(np.array([9.0, 10.0, 6.0]))
    dist = np.linalg.norm(pts - centre, axis=1).reshape(ref.array.shape)
    truth = dist <= 9.0
    # ... and the same ball drawn on a fine canonical grid, then brought back.
    canon = resampling.to_canonical(ref, (0.5, 0.5, 0.5), "nearest", 0)
    k2, j2, i2 = np.meshgrid(*[np.arange(n) for n in canon.array.shape], indexing="ij")
    pts2 = canon.index_to_physical(np.stack([i2, j2, k2], -1).reshape(-1, 3).astype(float))
    fine = (np.linalg.norm(pts2 - centre, axis=1) <= 9.0).reshape(canon.array.shape)
    back = resampling.resample_onto(canon.with_array(fine.astype(np.float32)), ref, "linear")
    assert back.same_grid(ref)
    wrong = (back.array >= 0.5) != truth
    assert truth.sum() > 50
    # Disagreement only within the fine grid's resolution of the surface: any shift of the
    # output grid (a 3.5 mm slice, a flipped axis) would misplace voxels far from it.
    assert np.all(np.abs(dist[wrong] - 9.0) <= 0.5)


def test_normalise_hu_clips_at_350_and_maps_to_unit_range():
    from KidneyTumorSegLib.config import PreprocessConfig

    cfg = PreprocessConfig(hu_min=-200, hu_max=350)
    out = preprocess.normalise_hu(np.array([-1000, -200, 75, 350, 3000], np.float32), cfg)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-6)


def test_reader_refuses_2d_and_4d_images(tmp_path):
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(tmp_path / "flat.nrrd"))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "flat.nrrd")
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), str(tmp_path / "four.nii.gz"))
    with pytest.raises(InputError, match="4 dimensions"):
        read_volume(tmp_path / "four.nii.gz")


def test_reader_errors_are_one_sentence(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    for path in (tmp_path / "missing.nrrd", tmp_path / "junk.nii.gz"):
        with pytest.raises(InputError) as info:
            read_volume(path)
        msg = str(info.value)
        assert str(path) in msg and msg.endswith(".") and "\n" not in msg


def test_written_files_get_the_users_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = write_volume(Volume(np.zeros((2, 3, 4), np.int16)), tmp_path / "v.nrrd")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644
