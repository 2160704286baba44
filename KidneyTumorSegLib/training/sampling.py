"""Drawing training samples from cached cases: 2D slices for the localisers, 3D patches for the
segmenter, each read through one random spatial transform (``transforms``).

- z-localiser: a stack of ``2 * context + 1`` neighbouring axial slices, target 1 when the centre
  slice shows kidney; positive and negative slices are drawn half and half, whatever their ratio in
  the scans (kidneys fill a fifth of an abdominal scan's slices or fewer).
- xy-localiser: one axial slice and its kidney mask; most slices are drawn from the kidneys'
  z-range (the slices the network sees at inference), some from anywhere, so it learns to stay
  silent on slices without kidney.
- segmenter: a ``cfg.segmenter.patch_size`` patch centred on a tumour voxel with probability
  ``tumour_fraction`` (when the case has a tumour), on a random voxel of the scan with probability
  ``random_fraction``, on a kidney voxel mirrored across the body's left-right middle with
  probability ``mirror_fraction`` (where the other kidney would lie: the other kidney, or an empty
  fossa when the case has one kidney; the place inference looks at when a localiser marks a kidney
  there), on a kidney voxel otherwise; the centre is jittered by up to a quarter patch
  so objects are seen off-centre too, as the sliding window shows them. Targets: channel 0 the
  kidney-with-tumour region (labels > 0), channel 1 the tumour (labels == 2). A share of patches
  is re-acquired with thick slices (``transforms.simulate_thick_slices``) before the intensity jitter.

Slices are read at a fixed size covering 512 mm (KiTS field of view) so they batch; outside the
scan reads air. Samplers are plain numpy and take the random generator from the caller, so a
worker, rank and epoch each get their own reproducible stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .transforms import (
    IDENTITY,
    AugmentConfig,
    draw_spatial,
    flip,
    intensity_jitter,
    read,
    sampling_coords,
    simulate_thick_slices,
)
from .working_grids import CachedCase, CaseArrays

KIND_TUMOUR, KIND_KIDNEY, KIND_RANDOM, KIND_MIRROR, KIND_POSITIVE, KIND_NEGATIVE, KIND_ANY = (
    "tumour",
    "kidney",
    "random",
    "mirror",
    "positive",
    "negative",
    "any",
)
BODY_THRESHOLD = 0.05  # normalised intensity above air (about -170 HU with the default window)


def body_middle_x_mm(arrays: CaseArrays, threshold: float = BODY_THRESHOLD) -> float:
    """World x (mm) of the body's left-right middle: the mean x of its voxels (denser than air).

    Read from the localiser grid, which holds the whole scan; the segmenter grid is cropped to the
    kidneys and would put the middle between them only when both are there."""
    counts = (arrays.image > threshold).sum(axis=(0, 1), dtype=np.int64)
    if not counts.any():
        return arrays.origin[0] + arrays.spacing[0] * 0.5 * (arrays.image.shape[2] - 1)
    x = float((counts * np.arange(counts.size)).sum() / counts.sum())
    return arrays.origin[0] + arrays.spacing[0] * x


def slice_size_px(spacing_xyz, fov_mm: float = 512.0, multiple: int = 32) -> tuple[int, int]:
    """(H, W) of localiser slices: ``fov_mm`` at the grid's spacing, rounded up to ``multiple``."""
    sx, sy = float(spacing_xyz[0]), float(spacing_xyz[1])
    h = int(math.ceil(fov_mm / sy / multiple)) * multiple
    w = int(math.ceil(fov_mm / sx / multiple)) * multiple
    return h, w


@dataclass
class Sample:
    image: np.ndarray  # float32, (C, ...) network input
    target: np.ndarray  # float32, () for the z-localiser, (C, ...) otherwise
    kind: str
    case_id: str


class _SliceSampler:
    def __init__(self, cases: list[CachedCase], size_hw, aug: AugmentConfig, context: int = 0):
        self.cases = [c for c in cases if c.localiser.image.shape[0] > 0]
        if not self.cases:
            raise ValueError("no cases to sample slices from")
        self.size_hw = tuple(size_hw)
        self.aug = aug
        self.context = int(context)
        self.kidney_slices = []
        for c in self.cases:
            has = (c.localiser.labels > 0).any(axis=(1, 2))
            self.kidney_slices.append((np.nonzero(has)[0], np.nonzero(~has)[0]))

    def _read(self, rng, arrays: CaseArrays, k: int, augment: bool):
        params = draw_spatial(rng, self.aug) if augment else IDENTITY
        _, ny, nx = arrays.image.shape
        cy, cx = ny / 2.0, nx / 2.0
        if augment and self.aug.enabled:  # shift the field of view by up to 10 %
            cy += rng.uniform(-0.1, 0.1) * self.size_hw[0]
            cx += rng.uniform(-0.1, 0.1) * self.size_hw[1]
        depth = 2 * self.context + 1
        coords = sampling_coords((k, cy, cx), (depth, *self.size_hw), params, arrays.spacing, scale_z=False)
        # Stacks of neighbours repeat the edge slice past the ends of the scan.
        coords[0] = np.clip(coords[0], 0, arrays.image.shape[0] - 1)
        image = flip(read(arrays.image, coords, 1, 0.0, np.float32), params)
        labels = flip(read(arrays.labels, coords[:, self.context], 0, 0), params, ndim=2)
        if augment:
            image = intensity_jitter(image, rng, self.aug)
        return image, labels


class ZSliceSampler(_SliceSampler):
    """Balanced kidney / no-kidney slice stacks for the z-localiser."""

    def __init__(self, cases, size_hw, aug, context: int = 1, positive_fraction: float = 0.5):
        super().__init__(cases, size_hw, aug, context)
        self.positive_fraction = positive_fraction
        self.with_pos = [i for i, (p, _) in enumerate(self.kidney_slices) if p.size]
        self.with_neg = [i for i, (_, n) in enumerate(self.kidney_slices) if n.size]

    def sample(self, rng: np.random.Generator, augment: bool = True) -> Sample:
        positive = bool(self.with_pos) and (rng.random() < self.positive_fraction or not self.with_neg)
        pool = self.with_pos if positive else self.with_neg
        i = pool[int(rng.integers(len(pool)))]
        slices = self.kidney_slices[i][0 if positive else 1]
        k = int(slices[int(rng.integers(slices.size))])
        image, labels = self._read(rng, self.cases[i].localiser, k, augment)
        target = np.float32((labels > 0).any())
        return Sample(image, np.asarray(target), KIND_POSITIVE if positive else KIND_NEGATIVE, self.cases[i].case_id)


class XYSliceSampler(_SliceSampler):
    """Axial slices and their kidney masks for the xy-localiser."""

    def __init__(self, cases, size_hw, aug, kidney_fraction: float = 0.8):
        super().__init__(cases, size_hw, aug, 0)
        self.kidney_fraction = kidney_fraction
        self.with_pos = [i for i, (p, _) in enumerate(self.kidney_slices) if p.size]

    def sample(self, rng: np.random.Generator, augment: bool = True) -> Sample:
        if rng.random() < self.kidney_fraction and self.with_pos:
            i = self.with_pos[int(rng.integers(len(self.with_pos)))]
            slices = self.kidney_slices[i][0]
            k = int(slices[int(rng.integers(slices.size))])
            kind = KIND_KIDNEY
        else:
            i = int(rng.integers(len(self.cases)))
            k = int(rng.integers(self.cases[i].localiser.image.shape[0]))
            kind = KIND_ANY
        image, labels = self._read(rng, self.cases[i].localiser, k, augment)
        return Sample(image, (labels > 0).astype(np.float32)[None], kind, self.cases[i].case_id)


class PatchSampler:
    """3D segmenter patches, tumour-rich, around the kidneys."""

    def __init__(
        self,
        cases: list[CachedCase],
        patch_zyx,
        aug: AugmentConfig,
        tumour_fraction: float = 0.5,
        random_fraction: float = 0.1,
        jitter: float = 0.25,
        mirror_fraction: float = 0.0,
    ):
        self.cases = list(cases)
        if not self.cases:
            raise ValueError("no cases to sample patches from")
        self.patch = tuple(int(p) for p in patch_zyx)
        self.aug = aug
        self.tumour_fraction = tumour_fraction
        self.random_fraction = random_fraction
        self.mirror_fraction = mirror_fraction
        self.jitter = jitter
        self.kidney_vox = []
        self.tumour_vox = []
        self.mirror_sum_x = []  # x index + its mirror's x index on the segmenter grid, per case (when used)
        for c in self.cases:
            seg = c.segmenter
            self.kidney_vox.append(np.argwhere(seg.labels > 0).astype(np.int32))
            self.tumour_vox.append(np.argwhere(seg.labels == 2).astype(np.int32))
            if mirror_fraction > 0:
                self.mirror_sum_x.append(2.0 * (body_middle_x_mm(c.localiser) - seg.origin[0]) / seg.spacing[0])

    def sample(self, rng: np.random.Generator, augment: bool = True) -> Sample:
        i = int(rng.integers(len(self.cases)))
        arrays = self.cases[i].segmenter
        r = rng.random()
        if r < self.random_fraction or not len(self.kidney_vox[i]):
            kind = KIND_RANDOM
            centre = np.array([rng.uniform(0, n - 1) for n in arrays.labels.shape])
        elif r < self.random_fraction + self.mirror_fraction:
            kind = KIND_MIRROR
            centre = self.kidney_vox[i][int(rng.integers(len(self.kidney_vox[i])))].astype(np.float64)
            centre[2] = np.clip(self.mirror_sum_x[i] - centre[2], 0, arrays.labels.shape[2] - 1)
        else:
            start = self.random_fraction + self.mirror_fraction
            tumour = r < start + self.tumour_fraction and len(self.tumour_vox[i])
            pool = self.tumour_vox[i] if tumour else self.kidney_vox[i]
            kind = KIND_TUMOUR if tumour else KIND_KIDNEY
            centre = pool[int(rng.integers(len(pool)))].astype(np.float64)
        if kind != KIND_RANDOM and augment and self.jitter > 0:
            centre += rng.uniform(-self.jitter, self.jitter, 3) * np.asarray(self.patch)
        params = draw_spatial(rng, self.aug) if augment else IDENTITY
        coords = sampling_coords(centre, self.patch, params, arrays.spacing)
        image = flip(read(arrays.image, coords, 1, 0.0, np.float32), params)
        labels = flip(read(arrays.labels, coords, 0, 0), params)
        if augment:
            image = simulate_thick_slices(image, rng, self.aug, arrays.spacing[2])
            image = intensity_jitter(image, rng, self.aug)
        target = np.stack([labels > 0, labels == 2]).astype(np.float32)
        return Sample(image[None], target, kind, self.cases[i].case_id)


def fixed_samples(sampler, n: int, seed: int) -> list[Sample]:
    """A reproducible, un-augmented sample set (the validation set of one network)."""
    rng = np.random.default_rng([seed, 7919])
    return [sampler.sample(rng, augment=False) for _ in range(n)]
