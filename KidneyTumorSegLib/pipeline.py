"""The engine: a CT volume in, kidney and tumour labels on the CT's own grid out.

It only composes the stages (each a plain function elsewhere): input checks -> localiser grid ->
z-localiser -> xy-localiser -> kidney boxes -> segmenter windows on a canvas around the boxes ->
stitching -> post-processing -> labels back onto the input grid -> sides and measurements.
Progress goes through a callback; cancellation through an event checked between batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import contrast, localisation, patches, postprocess, preprocess, resampling
from .checks import check_ct_volume
from .device import autocast, free_cuda_memory, is_out_of_memory, resolve_device
from .errors import Cancelled
from .measure import side_measurements
from .volume import Volume
from .weights import Bundle, load_bundle, networks_from_bundle

log = logging.getLogger("KidneyTumorSeg")
Progress = Callable[[float, str], None]

NO_KIDNEY = "No kidney was found in this scan; the result is empty."


@dataclass
class SegmentationResult:
    labels: Volume  # uint8 0/1/2 on the input grid
    structures: dict[str, np.ndarray]  # kidney_right, tumour_left, ... on the input grid
    report: dict = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not bool(self.structures)


def _x_index(x_mm: float | None, grid: Volume) -> float | None:
    """An LPS x (mm) as a (fractional) x index of a canonical grid, None passing through."""
    return None if x_mm is None else (x_mm - grid.origin[0]) / grid.spacing[0]


class _Clock:
    """Wall time per stage, for the report and the benchmarks."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(self.times.get(name, 0.0) + now - self._t0, 4)
        self._t0 = now


class Pipeline:
    """Runs the three networks of a weights bundle on one device."""

    def __init__(self, bundle: Bundle, device: str = "auto", allow_non_ct: bool = False, batch_size: int = 16,
                 mirror_x: bool | None = None):
        self.bundle = bundle
        self.config = bundle.config
        self.device = resolve_device(device)
        self.allow_non_ct = allow_non_ct
        self.batch_size = batch_size
        self.mirror_x = self.config.segmenter.mirror_x if mirror_x is None else bool(mirror_x)
        self.nets = networks_from_bundle(bundle)
        for net in self.nets.values():
            net.to(self.device)

    @classmethod
    def from_weights(cls, weights=None, device: str = "auto", **kwargs) -> Pipeline:
        """``weights``: a Bundle, a file path, or None for the bundled weights."""
        bundle = weights if isinstance(weights, Bundle) else load_bundle(weights)
        return cls(bundle, device=device, **kwargs)

    # --- network calls with CUDA out-of-memory fallback -----------------------------------------
    def _forward(self, name: str, batch: np.ndarray) -> np.ndarray:
        import torch

        for attempt in range(2):
            try:
                with torch.inference_mode(), autocast(self.device):
                    x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
                    return torch.sigmoid(self.nets[name](x).float()).cpu().numpy()
            except RuntimeError as err:
                if attempt == 0 and self.device.type == "cuda" and is_out_of_memory(err):
                    log.warning("The GPU ran out of memory; continuing on the CPU, which is slower.")
                    self._warnings.append("GPU out of memory: the run continued on the CPU.")
                    free_cuda_memory()
                    self.device = resolve_device("cpu")
                    for net in self.nets.values():
                        net.to(self.device)
                    continue
                raise
        raise AssertionError("unreachable")

    def _batches(self, n: int, size: int):
        for start in range(0, n, size):
            self._check_cancel()
            yield start, min(n, start + size)

    def _check_cancel(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("The segmentation was cancelled; nothing was written.")

    # --- stages ---------------------------------------------------------------------------------
    def _z_probabilities(self, loc: np.ndarray) -> np.ndarray:
        c = self.config.z_localiser.context_slices
        nz = loc.shape[0]
        probs = np.zeros(nz, np.float32)
        for a, b in self._batches(nz, self.batch_size):
            idx = np.clip(np.arange(a, b)[:, None] + np.arange(-c, c + 1)[None, :], 0, nz - 1)
            probs[a:b] = self._forward("z_localiser", loc[idx]).reshape(-1)
        return probs

    def _xy_mask(self, loc: np.ndarray, slices: np.ndarray) -> np.ndarray:
        """The xy-localiser's kidney mask on the chosen slices (``slices``: bool per slice)."""
        mask = np.zeros(loc.shape, bool)
        thr = self.config.xy_localiser.threshold
        ks = np.flatnonzero(slices)
        for a, b in self._batches(ks.size, self.batch_size):
            out = self._forward("xy_localiser", loc[ks[a:b], None])
            mask[ks[a:b]] = out[:, 0] >= thr
        return mask

    def _segmenter_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """The segmenter's probabilities for a batch of windows; with ``mirror_x``, the mean of each
        window's and its left-right mirror's (test-time augmentation with the one mirror the
        networks were trained with: a mirrored kidney is still a plausible kidney). Twice the
        segmenter's time; the gain is measured on validation cases before a bundle turns it on."""
        if not self.mirror_x:
            return self._forward("segmenter", batch)
        # Two calls rather than one of twice the batch: the peak memory stays that of one call,
        # which is what memory.estimate_run_bytes budgets for.
        plain = self._forward("segmenter", batch)
        mirrored = self._forward("segmenter", batch[..., ::-1])
        return 0.5 * (plain + mirrored[..., ::-1])

    def _segment_boxes(self, volume: Volume, loc_grid: Volume, boxes, progress: Progress):
        """Probabilities (2, z, y, x) on a canvas around the boxes, and the canvas geometry."""
        cfg = self.config.segmenter
        seg_sp = np.asarray(cfg.spacing_mm, dtype=float)
        patch = tuple(cfg.patch_size_xyz[::-1])
        # Express every box on a segmenter grid anchored at the first box's physical corner.
        phys = [b.to_physical(loc_grid.spacing, loc_grid.origin) for b in boxes]
        anchor = np.min([lo for lo, _ in phys], axis=0)
        seg_boxes = []
        for lo, hi in phys:
            lo_i = np.floor((lo - anchor) / seg_sp).astype(int)[::-1]
            hi_i = np.ceil((hi - anchor) / seg_sp).astype(int)[::-1] + 1
            seg_boxes.append(localisation.Box(tuple(lo_i), tuple(hi_i)))
        starts = patches.plan_windows(seg_boxes, patch, cfg.overlap)
        lo_c = np.min(starts, axis=0)
        hi_c = np.max(starts, axis=0) + np.asarray(patch)
        origin = anchor + lo_c[::-1] * seg_sp
        # slab by slab on extracted regions: no whole-scan float32 copy
        canvas = resampling.resample_box_chunked(volume, origin, tuple((hi_c - lo_c)[::-1]), tuple(seg_sp))
        canvas_img = preprocess.normalise_hu(canvas.array, self.config.preprocess)
        self._clock.lap("preprocess")
        stitcher = patches.Stitcher(2, canvas_img.shape, patch)
        local = [tuple(np.asarray(s) - lo_c) for s in starts]
        bs = 2  # a batch of 1 sends small-channel 3D convolutions to a slow CPU kernel
        for i, (a, b) in enumerate(self._batches(len(local), bs)):
            batch = np.stack([patches.extract(canvas_img, s, patch)[None] for s in local[a:b]])
            pred = self._segmenter_probabilities(batch)
            self._clock.lap("segmenter")
            for s, p in zip(local[a:b], pred):
                stitcher.add(s, p)
            self._clock.lap("stitching")
            progress(0.4 + 0.45 * (i + 1) * bs / max(1, len(local)), f"Segmenting window {b} of {len(local)}")
        probs = stitcher.result()
        self._clock.lap("stitching")
        return probs, canvas

    def _back_to_input(self, labels: np.ndarray, canvas: Volume, volume: Volume) -> np.ndarray:
        """Region and tumour masks resampled (trilinear, threshold 0.5) onto the input grid.

        Only the input voxels under the canvas are resampled, one slab at a time, which keeps this
        cheap and bounded on big scans.
        """
        out = np.zeros(volume.array.shape, np.uint8)
        lo, hi = resampling.index_box_under(canvas, volume)
        return resampling.masks_onto_grid([(1, labels > 0), (2, labels == 2)], canvas, volume, out, lo, hi)

    def _structures_and_sides(self, labels: Volume, midline_x: float | None):
        """Per-side structures and their measurements, computed on the labels' bounding box only.

        Only the labels' bounding box is split and measured; the masks are then placed on the full
        input grid one at a time, which keeps memory bounded on big scans.
        """
        arr = labels.array
        if midline_x is None:  # the fallback split_sides would use, taken on the whole grid
            lo_b, hi_b = labels.physical_bounds()
            midline_x = float((lo_b[0] + hi_b[0]) / 2.0)
        nonzero = [np.flatnonzero(arr.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        if nonzero[0].size == 0:
            return {}, {}
        sl = tuple(slice(max(0, int(n[0]) - 1), int(n[-1]) + 2) for n in nonzero)
        start_ijk = np.array([sl[2].start, sl[1].start, sl[0].start], float)
        crop = Volume(arr[sl], labels.spacing, labels.index_to_physical(start_ijk), labels.direction)
        parts = postprocess.split_sides(crop, midline_x)
        sides = side_measurements(parts, crop)
        structures = {}
        for key in list(parts):
            full = np.zeros(arr.shape, bool)
            full[sl] = parts.pop(key)
            structures[key] = full
        return structures, sides

    # --- the whole job --------------------------------------------------------------------------
    def run(self, volume: Volume, progress: Progress | None = None, cancel=None, source=None) -> SegmentationResult:
        """Segment ``volume``; ``source`` (a path or a name) is named in input messages when given."""
        progress = progress or (lambda f, m: None)
        self._cancel = cancel
        self._warnings: list[str] = []
        self._clock = _Clock()
        cfg = self.config
        self._warnings += check_ct_volume(volume, allow_non_ct=self.allow_non_ct, source=source)
        progress(0.0, "Preparing the image")

        loc_sp = cfg.localiser_grid.spacing_mm
        loc_origin, loc_size = resampling.canonical_box(volume, loc_sp)
        loc_hu = resampling.resample_box_chunked(volume, loc_origin, loc_size, loc_sp)
        loc = preprocess.normalise_hu(loc_hu.array, cfg.preprocess)
        self._clock.lap("preprocess")
        progress(0.1, "Finding the kidneys' slices")

        zprobs = self._z_probabilities(loc)
        slices = localisation.candidate_slices(zprobs, loc_hu.spacing[2], cfg.z_localiser)
        self._clock.lap("z_localiser")
        midline_mm = postprocess.body_midline_x(loc_hu)
        boxes = []
        if slices.any():
            progress(0.25, "Finding the kidneys in the slices")
            mask = self._xy_mask(loc, slices)
            candidates = localisation.kidney_candidates(mask, zprobs, loc_hu.spacing, cfg.xy_localiser)
            boxes = localisation.choose_kidney_boxes(candidates, _x_index(midline_mm, loc_hu))
            self._clock.lap("xy_localiser")
        zr = (min(b.lo[0] for b in boxes), max(b.hi[0] for b in boxes)) if boxes else None
        labels = None
        if boxes:
            progress(0.4, f"Segmenting {len(boxes)} kidney region(s)")
            probs, canvas = self._segment_boxes(volume, loc_hu, boxes, progress)
            self._check_cancel()
            canvas_labels = postprocess.labels_from_probabilities(
                probs[0],
                probs[1],
                canvas.voxel_volume_ml,
                postprocess.PostprocessConfig(
                    kidney_threshold=cfg.segmenter.kidney_threshold,
                    tumour_threshold=cfg.segmenter.tumour_threshold,
                    min_kidney_ml=cfg.xy_localiser.min_component_ml,
                    min_tumour_ml=cfg.segmenter.min_tumour_ml,
                ),
                _x_index(midline_mm, canvas),
            )
            self._clock.lap("postprocess")
            progress(0.9, "Bringing the labels back onto the scan's grid")
            labels = self._back_to_input(canvas_labels, canvas, volume)
            self._clock.lap("resample_back")
        if labels is None:
            labels = np.zeros(volume.array.shape, np.uint8)
        result_labels = volume.with_array(labels)
        structures, sides = self._structures_and_sides(result_labels, midline_mm)
        self._clock.lap("postprocess")
        if not structures:
            self._warnings.append(NO_KIDNEY)
            log.warning(NO_KIDNEY)
        phase = contrast.contrast_phase(volume, labels) if structures else None
        unreliable = contrast.warning_for(phase)
        if unreliable:
            self._warnings.append(unreliable)
            log.warning(unreliable)
        report = {
            "sides": sides,
            "kidney_found": bool(structures),  # an empty result says so in the report
            "z_range_mm": None
            if zr is None
            else [round(loc_hu.origin[2] + k * loc_hu.spacing[2], 1) for k in (zr[0], zr[1] - 1)],
            "kidney_boxes": len(boxes),
            "contrast": phase,
            "timings_s": dict(self._clock.times),
            "warnings": list(self._warnings),
            "device": str(self.device),
            "test_time_mirroring": self.mirror_x,
            "weights": self.bundle.header.get("provenance", {}).get("name", str(self.bundle.path or "seeded")),
        }
        report["timings_s"]["total"] = round(sum(report["timings_s"].values()), 4)
        progress(1.0, "Done")
        return SegmentationResult(result_labels, structures, report)
