"""Scanner variants of the real labelled CTs: what another scanner or protocol would have shown.

    python scripts/scanner_variants.py OUT_DIR [--scans ../shared/data/real_ct] [--names totalseg_s0009]

For each named scan, writes ``OUT_DIR/<scan>_<variant>/{ct,labels}.nii.gz`` (+ its ``labels.json``):

- ``slice3mm``, ``slice5mm``: re-acquired with thicker slices (a Gaussian slice profile of the new
  thickness, then sampled at that interval);
- ``pixel2.5mm``: coarser pixels (the in-plane point-spread of 2.5 mm pixels, then sampled);
- ``noise25``: 25 HU of extra white noise (a low-dose acquisition).

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


def variants(image: sitk.Image, labels: sitk.Image, seed: int = 0):
    """(name, ct, labels) for every variant of one scan."""
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
        for variant, ct, lab in variants(image, labels):
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
