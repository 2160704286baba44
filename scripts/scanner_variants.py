"""Scanner variants of the real labelled CTs: what another scanner or protocol would have shown.

    python scripts/scanner_variants.py OUT_DIR [--scans ../shared/data/real_ct] [--names totalseg_s0009]

For each named scan, writes ``OUT_DIR/<scan>_<variant>/{ct,labels}.nii.gz`` (+ its ``labels.json``):

- ``slice3mm``, ``slice5mm``: re-acquired with thicker slices (a Gaussian slice profile of the new
  thickness, then sampled at that interval);
- ``pixel2.5mm``: coarser pixels (the in-plane point-spread of 2.5 mm pixels, then sampled);
- ``noise25``: 25 HU of extra white noise (a low-dose acquisition);
- ``oblique15``: the same body acquired on slices tilted 15 degrees about the left-right axis (a
  gantry tilt, as the file's direction matrix records it), the tilted slab inside the scan's own
  (its ends are tilted planes): only the storage and the ends change;
- ``pitch15``, ``roll20``: the body itself turned in an axis-aligned scan, 15 degrees about the
  left-right axis (a trunk lying inclined; the slices the turn tips out of the scan are dropped) or
  20 degrees about the head-foot axis (a patient lying turned on the table);
- ``body0.85``, ``body1.15``: a smaller or a larger patient, every structure 15 % smaller or larger
  in every direction about the scan's centre (the same voxels on a grid 0.85 or 1.15 times as fine;
  kidneys of 8.5-10 cm or 13-15 cm, a child's or a tall adult's; the training bodies' size varied by
  about 8 % per axis);
- ``from_kidney_middle``, ``to_kidney_middle``: the field of view starts, or ends, halfway down
  the kidneys (a pelvis scan that catches their lower halves, an upper-abdomen scan their upper
  halves); only for scans with kidney labels. ``oblique15_from_kidney_middle`` and
  ``oblique15_to_kidney_middle``: the same, acquired on tilted slices (a tilted end through the kidneys).

Labels follow by nearest neighbour. ``evaluate --scans OUT_DIR`` then measures robustness to each
change on the same anatomy. The variants are derived patient data: write them outside the project
(they must never be committed) and delete them when done.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from KidneyTumorSegLib.labelled_scans import named_kidney_ids
from KidneyTumorSegLib.training.evaluate import cut_at_kidneys_middle
from KidneyTumorSegLib.volume import Volume

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "real_ct"


def reacquire(image: sitk.Image, labels: sitk.Image, spacing) -> tuple[sitk.Image, sitk.Image]:
    """``image`` as sampled at ``spacing`` (x, y, z mm) by a scanner whose point spread matches it."""
    old = np.asarray(image.GetSpacing(), float)
    new = np.asarray(spacing, float)
    # the extra blur that turns the old sampling's resolution into the new one (FWHM = spacing)
    sigma = [float(np.sqrt(max(n * n - o * o, 0.0)) / 2.355) for o, n in zip(old, new)]
    smooth = sitk.Cast(image, sitk.sitkFloat32)
    if max(sigma) > 0:
        smooth = sitk.SmoothingRecursiveGaussian(smooth, [max(s, 1e-3) for s in sigma])
    size = [max(1, int(round(n * o / s))) for n, o, s in zip(image.GetSize(), old, new)]
    ct = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), tuple(new),
                       image.GetDirection(), -1024.0, sitk.sitkFloat32)
    lab = sitk.Resample(labels, size, sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(), tuple(new),
                        image.GetDirection(), 0, labels.GetPixelID())
    return ct, lab


def variants(image: sitk.Image, labels: sitk.Image, seed: int = 0, kidney_ids=()):
    """(name, ct, labels) for every variant of one scan (the cut ones need ``kidney_ids``)."""
    sx, sy, sz = image.GetSpacing()
    for thickness in (3.0, 5.0):
        if thickness > sz:
            yield (f"slice{thickness:g}mm", *reacquire(image, labels, (sx, sy, thickness)))
    if 2.5 > sx:
        yield ("pixel2.5mm", *reacquire(image, labels, (2.5, 2.5, sz)))
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    hu += np.random.default_rng(seed).normal(0.0, 25.0, hu.shape).astype(np.float32)
    noisy = sitk.GetImageFromArray(hu)
    noisy.CopyInformation(image)
    yield ("noise25", noisy, labels)
    yield ("oblique15", *tilted_storage(image, labels, 15.0))
    yield ("pitch15", *turned_body(image, labels, axis=0, degrees=15.0))
    yield ("roll20", *turned_body(image, labels, axis=2, degrees=20.0))
    for factor in (0.85, 1.15):
        yield (f"body{factor:g}", *resized_body(image, labels, factor))
    if kidney_ids:
        for part in ("from_kidney_middle", "to_kidney_middle"):
            cut = cut_at_kidney_middle(image, labels, kidney_ids, keep_below=part == "from_kidney_middle")
            if cut is not None:
                yield (part, *cut)
                yield (f"oblique15_{part}", *tilted_storage(*cut, 15.0))


def _rotation(axis: int, degrees: float) -> np.ndarray:
    """The 3 x 3 right-handed rotation by ``degrees`` about physical axis ``axis`` (0 = L-R, 1 = P-A, 2 = S-I)."""
    return Rotation.from_rotvec(np.deg2rad(degrees) * np.eye(3)[axis]).as_matrix()


def _centre(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))


def tilted_storage(image: sitk.Image, labels: sitk.Image, degrees: float):
    """The same body acquired on slices tilted by ``degrees`` about the L-R axis (a gantry tilt):
    a tilted grid holding the scan's width, keeping only the tilted slices that lie wholly inside
    the scan's own slab (its ends are tilted planes, as a tilted acquisition's are, not wedges of
    air); sideways the corners outside the scan are air. For axial scans (k the slice axis), as
    every scan here is."""
    direction = _rotation(0, degrees) @ np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), float)
    corners = np.array([image.TransformIndexToPhysicalPoint([int(c * (n - 1)) for c, n in zip(bits, image.GetSize())])
                        for bits in np.ndindex(2, 2, 2)])
    local = (corners - corners[0]) @ direction  # corner coordinates along the new grid's axes (mm)
    low, high = local.min(axis=0), local.max(axis=0)
    size = [int(np.ceil((h - lo) / s)) + 1 for lo, h, s in zip(low, high, spacing)]
    origin = corners[0] + direction @ low
    # a tilted slice is kept when every point of it over the scan's footprint lies between the
    # scan's first and last slices (the old slice index is affine along the slice: a lattice of
    # points along it and across finds its extremes)
    # the scan's continuous (i, j, k) index of a physical point: the inverse of its index-to-LPS map
    to_old = np.linalg.inv(np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing()))
    n_old = np.asarray(image.GetSize(), float)
    ii, jj, kk = np.meshgrid(np.linspace(0, size[0] - 1, 9), np.linspace(0, size[1] - 1, 400), np.arange(size[2]),
                             indexing="ij")
    pts = origin + (np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1) * spacing) @ direction.T
    ijk = ((pts - np.asarray(image.GetOrigin())) @ to_old.T).reshape(*ii.shape, 3)
    over = np.all((ijk[..., :2] >= 0) & (ijk[..., :2] <= n_old[:2] - 1), axis=-1)  # over the scan's footprint
    k_old = np.where(over, ijk[..., 2], np.nan)
    with np.errstate(invalid="ignore"):
        inside = over.any(axis=(0, 1)) & (np.nanmin(k_old, axis=(0, 1), initial=np.inf) >= 0) \
            & (np.nanmax(k_old, axis=(0, 1), initial=-np.inf) <= n_old[2] - 1)
    keep = np.flatnonzero(inside).tolist()
    if not keep:
        raise ValueError(f"no slice tilted {degrees} degrees lies wholly inside this scan")
    origin = origin + direction[:, 2] * spacing[2] * keep[0]
    size[2] = keep[-1] - keep[0] + 1
    grid = sitk.Image(size, sitk.sitkUInt8)  # the tilted grid, as a reference to resample onto
    grid.SetOrigin(tuple(float(c) for c in origin))
    grid.SetSpacing(tuple(spacing))
    grid.SetDirection(tuple(direction.flatten()))
    ct = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    lab = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return ct, lab


def turned_body(image: sitk.Image, labels: sitk.Image, axis: int, degrees: float):
    """The body turned by ``degrees`` about physical axis ``axis`` through the scan's centre, on the
    scan's own grid (its slices axial). A turn about a horizontal axis tips the first and last
    slices partly out of the scan, leaving wedges of air at its ends that no scanner makes: those
    slices are dropped (a turn about the head-foot axis drops none)."""
    turn = sitk.AffineTransform(3)
    turn.SetCenter(tuple(_centre(image)))
    turn.SetMatrix(tuple(_rotation(axis, -degrees).flatten()))  # Resample maps output points to input points
    ct = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), image, turn, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    lab = sitk.Resample(labels, labels, turn, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    if axis == 2:
        return ct, lab
    # a slice d mm from the centre samples the old scan up to |d| cos + (half its other extent) sin
    # from the centre along z: keep the slices where that stays inside the old scan's slices
    a = np.deg2rad(abs(degrees))
    extent = np.asarray(image.GetSpacing()) * (np.asarray(image.GetSize()) - 1)
    other = 1 if axis == 0 else 0
    limit = (extent[2] / 2 - extent[other] / 2 * np.sin(a)) / np.cos(a)
    d = (np.arange(image.GetSize()[2]) - (image.GetSize()[2] - 1) / 2.0) * image.GetSpacing()[2]
    keep = np.flatnonzero(np.abs(d) <= limit + 1e-6)
    if keep.size == 0:
        raise ValueError(f"a turn of {degrees} degrees tips every slice of this scan out of it")
    start, stop = int(keep[0]), int(keep[-1]) + 1
    return ct[:, :, start:stop], lab[:, :, start:stop]


def resized_body(image: sitk.Image, labels: sitk.Image, factor: float):
    """The same voxels with every physical distance from the scan's centre times ``factor``: a body
    ``factor`` times the size, scanned with pixels and slices ``factor`` times as large (so the
    scanner's resolution relative to the anatomy is unchanged)."""
    centre = _centre(image)
    origin = centre + factor * (np.asarray(image.GetOrigin()) - centre)
    resized = []
    for picture in (sitk.Cast(image, sitk.sitkFloat32), labels):  # float like every variant's CT
        copy = sitk.Image(picture)
        copy.SetSpacing(tuple(factor * np.asarray(picture.GetSpacing(), float)))
        copy.SetOrigin(tuple(float(c) for c in origin))
        resized.append(copy)
    return resized[0], resized[1]


def cut_at_kidney_middle(image: sitk.Image, labels: sitk.Image, kidney_ids, keep_below: bool):
    """The scan's slices below (or above) the middle of its kidneys' head-foot extent, cut as
    ``evaluate --cut-field`` cuts phantoms; None when the scan has no kidney labels or its slices
    are not axial."""
    if not np.isin(sitk.GetArrayViewFromImage(labels), list(kidney_ids)).any():
        return None
    try:
        ct, lab = cut_at_kidneys_middle(Volume.from_sitk(image), Volume.from_sitk(labels),
                                        "below" if keep_below else "above", kidney_ids)
    except ValueError:  # oblique or non-axial slices
        return None
    return sitk.Cast(ct.to_sitk(), sitk.sitkFloat32), lab.to_sitk()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--scans", default=str(DATA))
    p.add_argument("--names", default="totalseg_s0009", help="comma-separated scan folders")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if REPO in out.parents or out == REPO:
        print("Write the variants outside the project: they are derived patient data.", file=sys.stderr)
        return 2
    for name in args.names.split(","):
        case = Path(args.scans) / name
        if not (case / "ct.nii.gz").exists() or not (case / "labels.nii.gz").exists():
            print(f"{case} has no ct.nii.gz and labels.nii.gz.", file=sys.stderr)
            return 2
        image = sitk.ReadImage(str(case / "ct.nii.gz"))
        labels = sitk.ReadImage(str(case / "labels.nii.gz"))
        for variant, ct, lab in variants(image, labels, kidney_ids=named_kidney_ids(case)):
            d = out / f"{name}_{variant}"
            d.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.Cast(sitk.Round(ct), sitk.sitkInt16), str(d / "ct.nii.gz"))
            sitk.WriteImage(lab, str(d / "labels.nii.gz"))
            if (case / "labels.json").exists():
                shutil.copy(case / "labels.json", d / "labels.json")
            print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
