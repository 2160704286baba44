"""Where training cases come from, and the cache of each case on the networks' working grids.

A case is resampled ONCE onto the two canonical grids the networks work on (``to_canonical``
geometry: identity direction): the localiser grid (``cfg.localiser_grid.spacing_mm``, the whole
scan, for the slice networks) and the segmenter grid (``cfg.segmenter.spacing_mm``, cropped to the
kidneys plus the reach of a rotated patch). The CT is trilinear and normalised with
``normalise_hu``; labels are nearest. The arrays stay in memory (image float16, labels uint8) and,
with a cache folder, on disk as ``.npy`` keyed by everything that determines them, so a second run
starts at once.

Sources:
- ``KitsSource``: a KiTS-layout folder with real images (``kits.KitsDataset``);
- ``PhantomSource``: CT phantoms built around label maps (KiTS19 masks) and procedural anatomies.
  A phantom is generated directly on a grid at working resolution (never at the mask's full
  512 x 512 x N), the segmenter's phantom on the kidneys' z-range only, so building one costs a
  fraction of a second to a few seconds.
Several ``variants`` of one mask (different phantom seeds) share one split group, so the
train/validation split stays at case level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ModelConfig, PreprocessConfig
from ..errors import InputError
from ..preprocess import AIR_HU, canonical_box, normalise_hu, resample_box
from ..volume import Volume

log = logging.getLogger("KidneyTumorSeg")
CACHE_VERSION = 1
VARIANT_SEP = "~v"


@dataclass
class CaseArrays:
    """One case on one canonical grid: normalised image and labels, both (z, y, x)."""

    image: np.ndarray  # float16, HU window mapped onto [0, 1]
    labels: np.ndarray  # uint8, 0 / 1 / 2
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float]  # (x, y, z) mm of array[0, 0, 0]


@dataclass
class CachedCase:
    case_id: str
    localiser: CaseArrays
    segmenter: CaseArrays


def split_group(case_id: str) -> str:
    """The case a variant belongs to: the unit of the train/validation split."""
    return case_id.split(VARIANT_SEP)[0]


def with_variants(base_ids: Iterable[str], variants: int) -> list[str]:
    """Each id followed by the ids of its other phantom variants (``case~v1``, ...)."""
    return [f"{b}{VARIANT_SEP}{v}" if v else b for b in base_ids for v in range(max(1, int(variants)))]


def _parallel_map(fn, jobs: list, workers: int):
    """``fn`` over ``jobs`` in order, in ``workers`` processes when there is more than one job."""
    if workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(fn, jobs)
    else:
        yield from map(fn, jobs)


def stable_seed(*parts) -> int:
    """A seed from strings and ints that is the same on every machine and Python run."""
    return zlib.crc32(json.dumps([str(p) for p in parts]).encode()) & 0x7FFFFFFF


def segmenter_margin_zyx(cfg: ModelConfig) -> tuple[int, int, int]:
    """Voxels kept around the kidneys: half a patch in z, half a rotated patch's diagonal in y, x."""
    px, py, pz = cfg.segmenter.patch_size_xyz
    half_diag = int(math.ceil(math.hypot(px, py) / 2.0)) + 4
    return (pz // 2 + 4, half_diag, half_diag)


def _is_canonical(volume: Volume, spacing) -> bool:
    return np.allclose(volume.direction, np.eye(3)) and np.allclose(volume.spacing, spacing, rtol=1e-4)


def grid_arrays(
    ct: Volume,
    labels: Volume,
    spacing_mm,
    pre: PreprocessConfig,
    crop_margin_zyx=None,
) -> CaseArrays:
    """``ct`` and ``labels`` (same grid) on the canonical grid at ``spacing_mm``, optionally cropped.

    ``crop_margin_zyx``: keep only the kidneys' bounding box grown by this many voxels (clipped to
    the scan). A case without kidney is kept whole.
    """
    if not ct.same_grid(labels):
        raise InputError("The CT and its labels do not share one voxel grid.")
    spacing = tuple(float(s) for s in spacing_mm)
    if _is_canonical(ct, spacing):
        ct_arr, lab_arr, origin = ct.array, labels.array, ct.origin
    else:
        origin, size = canonical_box(ct, spacing)
        ct_arr = resample_box(ct, origin, size, spacing, "linear", AIR_HU).array
        lab_arr = resample_box(labels, origin, size, spacing, "nearest", 0, np.uint8).array
    image = normalise_hu(ct_arr, pre).astype(np.float16)
    lab = np.asarray(lab_arr).astype(np.uint8, copy=False)
    origin = np.asarray(origin, dtype=np.float64)
    if crop_margin_zyx is not None and (lab > 0).any():
        nz = np.nonzero(lab > 0)
        lo = [max(0, int(a.min()) - m) for a, m in zip(nz, crop_margin_zyx)]
        hi = [min(n, int(a.max()) + 1 + m) for a, n, m in zip(nz, lab.shape, crop_margin_zyx)]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        image, lab = image[sl], lab[sl]
        origin = origin + np.asarray(spacing) * np.asarray(lo[::-1], dtype=np.float64)
    return CaseArrays(
        np.ascontiguousarray(image), np.ascontiguousarray(lab), spacing, tuple(float(o) for o in origin)
    )


def prepare_case(case_id: str, ct: Volume, labels: Volume, cfg: ModelConfig) -> CachedCase:
    """A CT and its labels on any grid, resampled once onto both working grids."""
    return CachedCase(
        case_id,
        grid_arrays(ct, labels, cfg.localiser_grid.spacing_mm, cfg.preprocess),
        grid_arrays(ct, labels, cfg.segmenter.spacing_mm, cfg.preprocess, segmenter_margin_zyx(cfg)),
    )


# --- sources -----------------------------------------------------------------------------------
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
    scipy only). ``write_label_pack`` stores the first step, so ``PackedPhantomSource`` can run the
    second on a machine without SimpleITK or the original masks.
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
        found = {p.parent.name: p for p in sorted(folder.glob("case_*/segmentation.nii.gz"))}
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

    def _parse(self, case_id: str) -> tuple[str, int]:
        base, _, variant = case_id.partition(VARIANT_SEP)
        return base, int(variant or 0)

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
        base, variant = self._parse(case_id)
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
        base, variant = self._parse(case_id)
        loc_labels, seg_labels = self.label_grids(base, cfg)
        return self.phantoms_on(case_id, loc_labels, seg_labels, stable_seed(self.seed, base, variant), cfg)

    def label_grids(self, base: str, cfg: ModelConfig) -> tuple[Volume, Volume]:
        """The case's labels on the localiser grid (whole scan) and the segmenter grid (the
        kidneys' neighbourhood, the reach of a rotated patch), both canonical."""
        if base in self.masks:
            from ..io import read_volume

            mask = read_volume(self.masks[base])
            return _label_grids(mask.with_array(np.asarray(mask.array).astype(np.uint8)), cfg)
        if not base.startswith("proc_"):
            raise InputError(f"The phantom source has no case {base}.")
        from ..phantoms import procedural_labels

        spacing = tuple(cfg.segmenter.spacing_mm)
        shape_zyx = tuple(max(8, int(round(f / s))) for f, s in zip(self.procedural_fov_mm[::-1], spacing[::-1]))
        labels = procedural_labels(stable_seed(self.seed, base, 0), shape_zyx, spacing)
        return _label_grids(labels.with_array(np.asarray(labels.array).astype(np.uint8)), cfg)

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


def _label_grids(mask: Volume, cfg: ModelConfig) -> tuple[Volume, Volume]:
    """``mask`` resampled by nearest straight onto the two working grids (never handled at its full
    resolution): the whole scan at the localiser spacing, the kidneys' box grown by the patch reach
    at the segmenter spacing."""
    loc_sp = tuple(cfg.localiser_grid.spacing_mm)
    origin, size = canonical_box(mask, loc_sp)
    loc_labels = resample_box(mask, origin, size, loc_sp, "nearest", 0, np.uint8)
    seg_sp = np.asarray(cfg.segmenter.spacing_mm, dtype=np.float64)
    lo, hi = mask.physical_bounds()
    nz = np.nonzero(loc_labels.array > 0)
    if nz[0].size:  # the kidneys' box (from the coarse grid) grown by the patch reach
        idx_lo = np.array([a.min() for a in nz][::-1], dtype=np.float64)
        idx_hi = np.array([a.max() for a in nz][::-1], dtype=np.float64)
        margin = np.asarray(segmenter_margin_zyx(cfg)[::-1]) * seg_sp + 2 * np.asarray(loc_sp)
        lo = np.maximum(lo, np.asarray(loc_labels.origin) + idx_lo * loc_sp - margin)
        hi = np.minimum(hi, np.asarray(loc_labels.origin) + idx_hi * loc_sp + margin)
    size = tuple(int(s) for s in np.maximum(1, np.floor((hi - lo) / seg_sp + 1e-6).astype(int) + 1))
    seg_labels = resample_box(mask, lo, size, tuple(seg_sp), "nearest", 0, np.uint8)
    return loc_labels, seg_labels


# --- label packs -------------------------------------------------------------------------------
PACK_VERSION = 1
_PACK_GRIDS = ("localiser", "segmenter")


def _grids_signature(cfg: ModelConfig) -> dict:
    return {
        "localiser_spacing": list(cfg.localiser_grid.spacing_mm),
        "segmenter_spacing": list(cfg.segmenter.spacing_mm),
        "segmenter_margin": list(segmenter_margin_zyx(cfg)),
    }


def _pack_one(args) -> tuple[str, str | None]:
    source, base, cfg, folder = args
    try:
        grids = source.label_grids(base, cfg)
    except Exception as err:  # one broken mask must not stop the pack
        return base, f"{type(err).__name__}: {err}"
    arrays = {}
    for name, vol in zip(_PACK_GRIDS, grids):
        arrays[f"{name}_labels"] = np.ascontiguousarray(vol.array, dtype=np.uint8)
        arrays[f"{name}_origin"] = np.asarray(vol.origin, dtype=np.float64)
        arrays[f"{name}_spacing"] = np.asarray(vol.spacing, dtype=np.float64)
    tmp = Path(folder) / f".{base}.npz"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(Path(folder) / f"{base}.npz")
    return base, None


def write_label_pack(source: PhantomSource, cfg: ModelConfig, folder, workers: int = 0) -> dict[str, str]:
    """Every label map of ``source`` on ``cfg``'s two working grids, one compressed ``.npz`` per
    case plus ``pack.json``; returns ``{case: error}`` for maps that could not be read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(source, base, cfg, str(folder)) for base in source.base_ids()]
    done = list(_parallel_map(_pack_one, jobs, workers))
    errors = {base: err for base, err in done if err}
    meta = {
        "version": PACK_VERSION,
        "grids": _grids_signature(cfg),
        "cases": [base for base, err in done if not err],
        "source": source.describe(),
    }
    (folder / "pack.json").write_text(json.dumps(meta, indent=1))
    return errors


class PackedPhantomSource(PhantomSource):
    """Phantoms around the label maps of a pack written by ``write_label_pack``.

    Needs neither the original masks nor SimpleITK: the labels already lie on the canonical working
    grids, so building a case is phantom generation alone. The pack's grids must be ``cfg``'s.
    """

    kind = "phantom-pack"

    def __init__(self, folder, seed: int = 0, variants: int = 1, phantom_config=None, slice_thickness_mm=None,
                 acquisition_pixel_mm=None, localiser_only: bool = False):
        super().__init__(None, 0, seed, variants, phantom_config=phantom_config, slice_thickness_mm=slice_thickness_mm,
                         acquisition_pixel_mm=acquisition_pixel_mm, localiser_only=localiser_only)
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "pack.json").read_text())
        except (OSError, ValueError):
            raise InputError(f"{self.folder} is not a label pack (no readable pack.json).") from None
        if self.meta.get("version") != PACK_VERSION:
            raise InputError(f"The label pack {self.folder} has version {self.meta.get('version')}, not {PACK_VERSION}.")
        self._bases = list(self.meta["cases"])

    def check_grids(self, cfg: ModelConfig) -> None:
        if self.meta["grids"] != _grids_signature(cfg):
            raise InputError(f"The label pack {self.folder} was made for other working grids than this configuration's.")

    def base_ids(self) -> list[str]:
        return list(self._bases)

    def signature(self, case_id: str) -> dict:
        base, variant = self._parse(case_id)
        path = self.folder / f"{base}.npz"
        sig = {"kind": self.kind, "case": base, "variant": variant, "seed": self.seed,
               "pack": str(self.folder.resolve()), "bytes": path.stat().st_size if path.exists() else -1}
        sig.update(self._phantom_signature())
        return sig

    def label_grids(self, base: str, cfg: ModelConfig) -> tuple[Volume, Volume]:
        if base not in self._bases:
            raise InputError(f"The label pack {self.folder} has no case {base}.")
        self.check_grids(cfg)
        with np.load(self.folder / f"{base}.npz", allow_pickle=False) as data:
            return tuple(
                Volume(data[f"{g}_labels"], tuple(data[f"{g}_spacing"]), tuple(data[f"{g}_origin"]), np.eye(3))
                for g in _PACK_GRIDS
            )

    def describe(self) -> dict:
        d = super().describe()
        d.update({"kind": self.kind, "pack": str(self.folder), "masks": self._bases,
                  "mask_folders": self.meta.get("source", {}).get("mask_folders", [])})
        return d


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


# --- cache -------------------------------------------------------------------------------------
_PARTS = ("localiser", "segmenter")


def cache_key(source: CaseSource, case_id: str, cfg: ModelConfig) -> str:
    what = {
        "version": CACHE_VERSION,
        "source": source.signature(case_id),
        "preprocess": cfg.to_dict()["preprocess"],
        "localiser_spacing": list(cfg.localiser_grid.spacing_mm),
        "segmenter_spacing": list(cfg.segmenter.spacing_mm),
        "segmenter_margin": list(segmenter_margin_zyx(cfg)),
    }
    digest = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in case_id)
    return f"{safe}-{digest}"


def save_cached(folder: Path, case: CachedCase) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"case_id": case.case_id}
    for part in _PARTS:
        arrays: CaseArrays = getattr(case, part)
        np.save(folder / f"{part}_image.npy", arrays.image)
        np.save(folder / f"{part}_labels.npy", arrays.labels)
        meta[part] = {"spacing": list(arrays.spacing), "origin": list(arrays.origin)}
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(folder / "meta.json")  # written last: a folder without it is incomplete


def load_cached(folder: Path) -> CachedCase | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        parts = {}
        for part in _PARTS:
            image = np.load(folder / f"{part}_image.npy", allow_pickle=False)
            labels = np.load(folder / f"{part}_labels.npy", allow_pickle=False)
            parts[part] = CaseArrays(image, labels, tuple(meta[part]["spacing"]), tuple(meta[part]["origin"]))
        return CachedCase(meta["case_id"], parts["localiser"], parts["segmenter"])
    except (OSError, ValueError, KeyError):
        return None


def _build_one(args) -> tuple[str, CachedCase | None, str | None]:
    source, case_id, cfg, cache_dir = args
    folder = Path(cache_dir) / cache_key(source, case_id, cfg) if cache_dir else None
    if folder is not None:
        cached = load_cached(folder)
        if cached is not None:
            return case_id, cached, None
    try:
        case = source.build(case_id, cfg)
    except Exception as err:  # one broken case must not stop a training run
        return case_id, None, f"{type(err).__name__}: {err}"
    if folder is not None:
        save_cached(folder, case)
    return case_id, case, None


def load_cases(
    source: CaseSource,
    case_ids: Iterable[str],
    cfg: ModelConfig,
    cache_dir=None,
    workers: int = 0,
    progress: Callable[[float, str], None] | None = None,
) -> tuple[list[CachedCase], dict[str, str]]:
    """Build (or read from the cache) every case; returns the cases and ``{case_id: error}``.

    ``workers`` > 0 builds cases in that many processes (phantom generation is CPU-bound).
    """
    ids = list(case_ids)
    jobs = [(source, cid, cfg, str(cache_dir) if cache_dir else None) for cid in ids]
    results: dict[str, CachedCase] = {}
    errors: dict[str, str] = {}

    def collect(i, item):
        cid, case, err = item
        if case is None:
            errors[cid] = err or "unknown error"
            log.warning("skipping training case %s: %s", cid, err)
        else:
            results[cid] = case
        if progress:
            progress((i + 1) / max(1, len(ids)), f"preparing cases {i + 1}/{len(ids)}")

    for i, item in enumerate(_parallel_map(_build_one, jobs, workers)):
        collect(i, item)
    return [results[c] for c in ids if c in results], errors


# --- split -------------------------------------------------------------------------------------
def split_ids(case_ids: list[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Case-level split: the variants of one case always fall on the same side.

    Uses ``kits.split_cases`` on the groups (the project's one split rule); a seeded shuffle
    stands in where that module is absent.
    """
    groups = sorted({split_group(c) for c in case_ids})
    try:
        from ..kits import split_cases
    except ImportError:  # pragma: no cover - kits.py is part of the library
        split_cases = None
    if split_cases is not None:
        train_g, val_g = split_cases(groups, val_fraction=val_fraction, seed=seed)
    else:
        order = list(np.random.default_rng(seed).permutation(len(groups)))
        n_val = max(1, int(round(val_fraction * len(groups)))) if len(groups) > 1 else 0
        val_g = [groups[i] for i in order[:n_val]]
        train_g = [groups[i] for i in order[n_val:]]
    train_set, val_set = set(train_g), set(val_g)
    return [c for c in case_ids if split_group(c) in train_set], [c for c in case_ids if split_group(c) in val_set]
