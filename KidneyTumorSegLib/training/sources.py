"""Where training cases come from: each source lists case ids and builds a case's arrays on the
two working grids (``working_grids``).

- ``KitsSource``: a KiTS-layout folder with real images (``kits.KitsDataset``);
- ``PhantomSource``: CT phantoms built around label maps (KiTS19 masks) and procedural anatomies.
  A phantom is generated directly on a grid at working resolution (never at the mask's full
  512 x 512 x N), the segmenter's phantom on the kidneys' z-range only, so building one costs a
  fraction of a second to a few seconds. Several ``variants`` of one mask (different phantom
  seeds) share one split group (``split``), so the train/validation split stays at case level;
- ``MultiSource``: several sources as one.
``label_pack.PackedPhantomSource`` is a ``PhantomSource`` whose label maps were resampled beforehand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import InputError
from ..kits import SEG_FILES
from ..volume import Volume
from .seeds import stable_seed
from .split import variant_of, with_variants
from .working_grids import (
    CachedCase,
    CaseArrays,
    grid_arrays,
    mask_on_grids,
    prepare_case,
    segmenter_margin_zyx,
)


class CaseSource:
    """A list of case ids and a way to build each case's cached arrays."""

    kind = "source"

    def case_ids(self) -> list[str]:
        raise NotImplementedError

    def signature(self, case_id: str) -> dict:
        """Everything (besides the configuration) that determines the case's arrays."""
        raise NotImplementedError

    def build(self, case_id: str, cfg: ModelConfig) -> CachedCase:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind}


class KitsSource(CaseSource):
    """A KiTS-layout folder with images (``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``)."""

    kind = "kits"

    def __init__(self, root, case_ids: Iterable[str] | None = None):
        from ..kits import KitsDataset

        self.root = Path(root)
        self.dataset = KitsDataset(self.root, require_images=True)
        ids = list(self.dataset.case_ids)
        if case_ids is not None:
            wanted = set(case_ids)
            ids = [c for c in ids if c in wanted]
        self._ids = ids

    def case_ids(self) -> list[str]:
        return list(self._ids)

    def signature(self, case_id: str) -> dict:
        return {"kind": self.kind, "root": str(self.root.resolve()), "case": case_id}

    def build(self, case_id: str, cfg: ModelConfig) -> CachedCase:
        ct, labels = self.dataset.load(case_id)
        if ct is None:
            raise InputError(f"The case {case_id} in {self.root} has no CT image.")
        return prepare_case(case_id, ct, labels, cfg)

    def describe(self) -> dict:
        return {"kind": self.kind, "root": str(self.root), "cases": len(self._ids)}


class PhantomSource(CaseSource):
    """CT phantoms around label maps (``masks``: case id -> label file) and procedural anatomies.

    ``variants`` phantoms (different textures, contrast and noise) are made of each mask; the
    procedural cases are ``proc_0000`` ... Every phantom is seeded from (seed, case, variant), so a
    case is the same on every machine. ``slice_thickness_mm`` (lo, hi): the simulated acquisition's
    slice thickness is drawn from this range whatever the working grid, so the networks see thin-
    and thick-slice scans resampled onto their grid (None: it follows the grid).
    ``acquisition_pixel_mm`` (lo, hi): the simulated acquisition's pixel size; a scan with pixels
    finer than the working grid is averaged onto it, which divides its noise by (grid / pixel), so
    the phantom's noise is scaled by min(1, pixel / grid) (None: full scanner noise on every grid).

    A case is built in two steps: its label maps on the two working grids (``label_grids``; the
    only step that resamples, with SimpleITK), then one phantom on each (``phantoms_on``: numpy and
    scipy only). ``label_pack.write_label_pack`` stores the first step, so ``PackedPhantomSource``
    can run the second on a machine without SimpleITK or the original masks.
    """

    kind = "phantoms"

    def __init__(
        self,
        masks: dict[str, str | Path] | None = None,
        procedural: int = 0,
        seed: int = 0,
        variants: int = 1,
        procedural_fov_mm=(320.0, 320.0, 240.0),
        phantom_config=None,
        slice_thickness_mm: tuple[float, float] | None = None,
        acquisition_pixel_mm: tuple[float, float] | None = None,
        localiser_only: bool = False,
    ):
        self.masks = {k: Path(v) for k, v in (masks or {}).items()}
        self.localiser_only = bool(localiser_only)  # no segmenter phantom (training the localisers alone)
        self.procedural = int(procedural)
        self.seed = int(seed)
        self.variants = max(1, int(variants))
        self.procedural_fov_mm = tuple(float(v) for v in procedural_fov_mm)
        self.phantom_config = phantom_config
        self.slice_thickness_mm = None if slice_thickness_mm is None else tuple(float(v) for v in slice_thickness_mm)
        self.acquisition_pixel_mm = None if acquisition_pixel_mm is None else tuple(float(v) for v in acquisition_pixel_mm)

    @staticmethod
    def masks_in(folder, case_ids: Iterable[str] | None = None) -> dict[str, Path]:
        """``case_XXXXX/segmentation.nii.gz`` files of a KiTS-layout folder (optionally some cases)."""
        folder = Path(folder)
        found = {p.parent.name: p for p in sorted(folder.glob(f"case_*/{SEG_FILES['kits19']}"))}
        if case_ids is not None:
            wanted = list(case_ids)
            missing = [c for c in wanted if c not in found]
            if missing:
                raise InputError(f"The mask folder {folder} has no segmentation for {missing[0]}.")
            found = {c: found[c] for c in wanted}
        return found

    def base_ids(self) -> list[str]:
        """One id per label map: the masks, then the procedural anatomies."""
        return list(self.masks) + [f"proc_{i:04d}" for i in range(self.procedural)]

    def case_ids(self) -> list[str]:
        return with_variants(self.base_ids(), self.variants)

    def _phantom_signature(self) -> dict:
        sig = {}
        if self.phantom_config is not None:
            sig["phantom_config"] = repr(self.phantom_config)
        if self.slice_thickness_mm is not None:
            sig["slice_thickness_mm"] = list(self.slice_thickness_mm)
        if self.acquisition_pixel_mm is not None:
            sig["acquisition_pixel_mm"] = list(self.acquisition_pixel_mm)
        if self.localiser_only:
            sig["localiser_only"] = True
        return sig

    def signature(self, case_id: str) -> dict:
        base, variant = variant_of(case_id)
        sig = {"kind": self.kind, "case": base, "variant": variant, "seed": self.seed}
        if base in self.masks:
            path = self.masks[base]
            sig["mask"] = str(path.resolve())
            sig["mask_bytes"] = path.stat().st_size if path.exists() else -1
        else:
            sig["fov_mm"] = list(self.procedural_fov_mm)
        sig.update(self._phantom_signature())
        return sig

    def build(self, case_id: str, cfg: ModelConfig) -> CachedCase:
        base, variant = variant_of(case_id)
        loc_labels, seg_labels = self.label_grids(base, cfg)
        return self.phantoms_on(case_id, loc_labels, seg_labels, stable_seed(self.seed, base, variant), cfg)

    def label_grids(self, base: str, cfg: ModelConfig) -> tuple[Volume, Volume]:
        """The case's labels on the localiser grid (whole scan) and the segmenter grid (the
        kidneys' neighbourhood, the reach of a rotated patch), both canonical."""
        if base in self.masks:
            from ..io import read_volume

            mask = read_volume(self.masks[base])
            return mask_on_grids(mask.with_array(np.asarray(mask.array).astype(np.uint8)), cfg)
        if not base.startswith("proc_"):
            raise InputError(f"The phantom source has no case {base}.")
        from ..phantoms import procedural_labels

        spacing = tuple(cfg.segmenter.spacing_mm)
        shape_zyx = tuple(max(8, int(round(f / s))) for f, s in zip(self.procedural_fov_mm[::-1], spacing[::-1]))
        labels = procedural_labels(stable_seed(self.seed, base, 0), shape_zyx, spacing)
        return mask_on_grids(labels.with_array(np.asarray(labels.array).astype(np.uint8)), cfg)

    def phantoms_on(self, case_id: str, loc_labels: Volume, seg_labels: Volume, seed: int, cfg) -> CachedCase:
        """One phantom on each working grid (same seed: the same patient, scanner and phase)."""
        loc_sp, seg_sp = tuple(cfg.localiser_grid.spacing_mm), tuple(cfg.segmenter.spacing_mm)
        localiser = grid_arrays(self._phantom(loc_labels, seed), loc_labels, loc_sp, cfg.preprocess)
        if self.localiser_only:  # an empty segmenter grid: the patch sampler is never built
            empty = CaseArrays(np.zeros((0, 0, 0), np.float16), np.zeros((0, 0, 0), np.uint8), seg_sp, seg_labels.origin)
            return CachedCase(case_id, localiser, empty)
        segmenter = grid_arrays(
            self._phantom(seg_labels, seed), seg_labels, seg_sp, cfg.preprocess, segmenter_margin_zyx(cfg)
        )
        return CachedCase(case_id, localiser, segmenter)

    def _phantom(self, labels: Volume, seed: int):
        """A phantom on ``labels``' grid; its coarse anatomy grid is no finer than the grid needs."""
        from ..phantoms import PhantomConfig, make_phantom

        config = self.phantom_config
        if config is None:
            work = max(1.6, 1.25 * min(labels.spacing[0], labels.spacing[1]))
            config = PhantomConfig(work_spacing_mm=work, tissue_map=False, slice_thickness_mm=self.slice_thickness_mm)
        if self.acquisition_pixel_mm is not None:
            pixel = np.random.default_rng([int(seed), 4099]).uniform(*self.acquisition_pixel_mm)
            factor = min(1.0, pixel / min(labels.spacing[0], labels.spacing[1]))
            lo, hi = config.noise_sd_range
            config = dataclasses.replace(config, noise_sd_range=(lo * factor, hi * factor))
        ct, _info = make_phantom(labels, seed, config)
        return ct

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "masks": sorted(self.masks),
            "mask_folders": sorted({str(p.parent.parent) for p in self.masks.values()}),
            "procedural": self.procedural,
            "variants": self.variants,
            "seed": self.seed,
            "slice_thickness_mm": None if self.slice_thickness_mm is None else list(self.slice_thickness_mm),
            "acquisition_pixel_mm": None if self.acquisition_pixel_mm is None else list(self.acquisition_pixel_mm),
        }


class MultiSource(CaseSource):
    """Several sources as one; case ids must be unique across them."""

    kind = "multi"

    def __init__(self, sources: list[CaseSource]):
        self.sources = list(sources)
        self._owner: dict[str, CaseSource] = {}
        for src in self.sources:
            for cid in src.case_ids():
                if cid in self._owner:
                    raise InputError(f"The case id {cid} appears in two training sources.")
                self._owner[cid] = src

    def case_ids(self) -> list[str]:
        return list(self._owner)

    def signature(self, case_id: str) -> dict:
        return self._owner[case_id].signature(case_id)

    def build(self, case_id: str, cfg: ModelConfig) -> CachedCase:
        return self._owner[case_id].build(case_id, cfg)

    def describe(self) -> dict:
        return {"kind": self.kind, "sources": [s.describe() for s in self.sources]}
