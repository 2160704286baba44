"""The geometry variants of ``scripts/scanner_variants.py`` do what their names say, checked on
small images whose answer is known: a tilted storage keeps every structure where it was, a turned
body moves a structure by the stated rotation, and a cut keeps the physically lower or upper half."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from scanner_variants import (  # noqa: E402
    _rotation,
    cut_at_kidney_middle,
    resized_body,
    tilted_storage,
    turned_body,
    variants,
)

SPACING = (2.0, 2.0, 2.5)


def _image_with_ball(centre_mm, direction=None, size=(48, 48, 40), radius_mm=8.0):
    """A -1000 HU image holding a 200 HU ball (label 2) at the physical point ``centre_mm``."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(SPACING)
    image.SetOrigin((-40.0, -30.0, 100.0))
    if direction is not None:
        image.SetDirection(tuple(np.asarray(direction, float).flatten()))
    k, j, i = np.indices(size[::-1])
    index = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    m = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(SPACING)
    points = index @ m.T + np.asarray(image.GetOrigin())
    inside = (np.linalg.norm(points - np.asarray(centre_mm), axis=1) <= radius_mm).reshape(size[::-1])
    array = np.where(inside, 200.0, -1000.0).astype(np.float32)
    ct = sitk.GetImageFromArray(array)
    ct.CopyInformation(image)
    labels = sitk.GetImageFromArray(np.where(inside, 2, 0).astype(np.uint8))
    labels.CopyInformation(image)
    return ct, labels


def _centroid_mm(labels: sitk.Image, value: int = 2) -> np.ndarray:
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(labels) == value)
    index = np.stack([i, j, k], axis=1).astype(float)
    m = np.asarray(labels.GetDirection()).reshape(3, 3) @ np.diag(labels.GetSpacing())
    return (index @ m.T + np.asarray(labels.GetOrigin())).mean(axis=0)


def test_rotation_turns_the_stated_way():
    """15 degrees about L-R takes +y (posterior) towards +z (superior): a right-handed turn."""
    r = _rotation(0, 90.0)
    assert np.allclose(r @ [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    assert np.allclose(_rotation(2, 90.0) @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])


def test_tilted_storage_moves_nothing_in_the_body():
    ball = (10.0, 20.0, 150.0)
    ct, labels = _image_with_ball(ball)
    tilted_ct, tilted_labels = tilted_storage(ct, labels, 15.0)
    direction = np.asarray(tilted_ct.GetDirection()).reshape(3, 3)
    assert np.degrees(np.arccos(direction[2, 2])) == pytest.approx(15.0, abs=1e-6)
    assert np.allclose(_centroid_mm(tilted_labels), ball, atol=1.0)
    # the ball in the middle of the scan is kept whole (only the tilted ends are trimmed)
    ml = lambda lab: (sitk.GetArrayViewFromImage(lab) == 2).sum() * np.prod(lab.GetSpacing())  # noqa: E731
    assert ml(tilted_labels) == pytest.approx(ml(labels), rel=0.1)
    assert float(sitk.GetArrayViewFromImage(tilted_ct).max()) == pytest.approx(200.0, abs=1.0)
    # a tilted acquisition's ends are tilted planes inside the scan's slab, not wedges of air: every
    # kept slice reads the scan (-1000 HU here, -1024 outside) all along its middle column, and the
    # slab is as thick as the scan's 97.5 mm allows once its 94 mm depth is tilted 15 degrees
    array = sitk.GetArrayFromImage(tilted_ct)  # (k, j, i)
    footprint = array[:, :, array.shape[2] // 2]
    rows = np.flatnonzero((footprint > -1010).all(axis=0))  # the j rows over the scan in every slice
    assert rows.size > 0.8 * 94 / SPACING[1]  # (an untrimmed tilted grid: its end slices are mostly air)
    thickness = tilted_ct.GetSize()[2] * SPACING[2]
    expected = 97.5 * np.cos(np.radians(15)) - 94 * np.sin(np.radians(15))  # about 70 mm
    assert expected - 2 * SPACING[2] <= thickness <= expected + 2 * SPACING[2]


@pytest.mark.parametrize("axis, degrees", [(0, 15.0), (2, 20.0)])
def test_turned_body_moves_a_structure_by_the_rotation(axis, degrees):
    size = (48, 48, 80)
    ct, _ = _image_with_ball((0.0, 0.0, 0.0), size=size)
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in ct.GetSize()]))
    offset = np.array([0.0, 25.0, 0.0]) if axis == 0 else np.array([25.0, 0.0, 0.0])
    ct, labels = _image_with_ball(centre + offset, size=size)
    turned_ct, turned = turned_body(ct, labels, axis=axis, degrees=degrees)
    expected = centre + _rotation(axis, degrees) @ offset
    assert np.allclose(_centroid_mm(turned), expected, atol=1.5)  # nearest-neighbour labels on 2.5 mm slices
    assert turned_ct.GetSize() == turned.GetSize() and turned.GetSpacing() == labels.GetSpacing()
    if axis == 2:  # a turn about the head-foot axis keeps every slice
        assert turned.GetSize() == labels.GetSize() and turned.GetOrigin() == labels.GetOrigin()
    else:  # a turn about L-R drops the slices it tips out of the scan at its ends
        assert turned.GetSize()[2] < labels.GetSize()[2]
        array = sitk.GetArrayFromImage(turned_ct)  # (z, y, x); outside the old scan reads -1024
        assert (array[:, array.shape[1] // 2] > -1010).all()  # every kept slice is the scan's across its middle
        assert (array[:, [0, -1]] < -1010).any()  # while its front and back edges may reach beyond it


@pytest.mark.parametrize("head_first", [True, False])
def test_cut_keeps_the_physically_lower_or_upper_half(head_first):
    """Whichever way the slice index runs, ``keep_below`` keeps the slices nearer the feet."""
    direction = np.diag([1.0, 1.0, 1.0 if head_first else -1.0])
    ct, _ = _image_with_ball((0.0, 0.0, 0.0), direction=direction)
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in ct.GetSize()]))
    ct, labels = _image_with_ball(centre, direction=direction)
    z_all = _centroid_mm(labels)[2]
    lower_ct, lower = cut_at_kidney_middle(ct, labels, [2], keep_below=True)
    upper_ct, upper = cut_at_kidney_middle(ct, labels, [2], keep_below=False)
    assert _centroid_mm(lower)[2] < z_all - 2.0 < z_all + 2.0 < _centroid_mm(upper)[2]
    assert lower.GetSize()[2] + upper.GetSize()[2] == labels.GetSize()[2]
    assert lower_ct.GetSize() == lower.GetSize() and upper_ct.GetSize() == upper.GetSize()


@pytest.mark.parametrize("factor", [0.85, 1.15])
def test_resized_body_scales_distances_from_the_centre(factor):
    """A ball 25 mm off the scan's centre ends up 25 * factor mm off it, with factor**3 its volume,
    and the centre itself stays put."""
    ct, _ = _image_with_ball((0.0, 0.0, 0.0))
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in ct.GetSize()]))
    offset = np.array([25.0, -10.0, 5.0])
    ct, labels = _image_with_ball(centre + offset)
    ct = sitk.Cast(ct, sitk.sitkInt16)  # as scans are stored; main() rounds every variant's CT
    big_ct, big = resized_body(ct, labels, factor)
    assert big_ct.GetPixelID() == sitk.sitkFloat32 and sitk.Round(big_ct).GetSize() == ct.GetSize()
    assert np.allclose(_centroid_mm(big), centre + factor * (_centroid_mm(labels) - centre), atol=1e-6)
    assert np.allclose(big.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in big.GetSize()]), centre)
    voxel_ml = np.prod(big.GetSpacing()) / 1000.0
    before = (sitk.GetArrayViewFromImage(labels) == 2).sum() * np.prod(labels.GetSpacing()) / 1000.0
    assert (sitk.GetArrayViewFromImage(big) == 2).sum() * voxel_ml == pytest.approx(before * factor**3)
    assert big_ct.GetSpacing() == big.GetSpacing() and big_ct.GetOrigin() == big.GetOrigin()
    assert (sitk.GetArrayFromImage(big_ct) == sitk.GetArrayFromImage(ct)).all()


def test_no_cut_without_kidney_labels():
    ct, labels = _image_with_ball((0.0, 0.0, 150.0))
    assert cut_at_kidney_middle(ct, labels, [7], keep_below=True) is None
    names = [name for name, _, _ in variants(ct, labels)]
    assert "oblique15" in names and "from_kidney_middle" not in names
    assert {"from_kidney_middle", "to_kidney_middle", "oblique15_from_kidney_middle", "oblique15_to_kidney_middle"} <= {
        n for n, _, _ in variants(ct, labels, kidney_ids=[2])}
