"""The engine: a CT volume in, kidney and tumour labels on the CT's own grid out.

It only composes the stages (each a plain function elsewhere): input checks -> localiser grid ->
z-localiser -> xy-localiser -> kidney boxes -> segmenter windows on a canvas around the boxes ->
stitching -> post-processing (per side, the region the xy-localiser also marked; a region bone encases
hands its side to the next; a kept region cut by the canvas's top or bottom grows its boxes and the
segmenter runs again, at most twice; one running into a side face is warned about) -> labels back
onto the input grid -> sides and measurements.
Each run has its own :class:`~.run_context.RunContext` (progress, cancel, warnings, clock, device),
so a GPU that ran out of memory in one run is tried again in the next.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import contrast, localisation, patches, plausibility, postprocess, preprocess, resampling
from .checks import check_ct_volume
from .device import autocast, free_cuda_memory, is_out_of_memory, resolve_device
from .measure import side_measurements
from .run_context import Progress, RunContext
from .volume import Volume, mask_box
from .weights import Bundle, load_bundle, networks_from_bundle

log = logging.getLogger("KidneyTumorSeg")

NO_KIDNEY = "No kidney was found in this scan; the result is empty."
GPU_FULL = "GPU out of memory: the run continued on the CPU."
DISCARDED = {
    "bone": ("A region of {ml:.0f} mL that bone surrounds was labelled as kidney and discarded: "
             "a kidney is never encased in bone (check the scan covers the abdomen)."),
    "no_fat": ("A region of {ml:.0f} mL with almost no fat around it was labelled as kidney and discarded: "
               "a kidney lies in its perirenal fat (check the scan covers the abdomen)."),
}
GROW_MM = 40.0  # how far a box grows past a kidney pole cut by the segmented slices (a third of a kidney)
GROW_ROUNDS = 2  # at most this many regrowths: bounded time on a scan where something keeps reaching
AT_EDGE = ("The region on the patient's {side} ({ml:.0f} mL, {tumour:.0f} % of it tumour) runs on sideways beyond "
           "the part of the scan that was segmented, as a large tumour does and so does a liver or spleen "
           "labelled in the place of a missing, low or displaced kidney: check that it is a kidney before "
           "trusting its size.")


@dataclass
class SegmentationResult:
    labels: Volume  # uint8 0/1/2 on the input grid
    structures: dict[str, np.ndarray]  # kidney_right, tumour_left, ... on the input grid
    report: dict = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not bool(self.structures)


@dataclass
class KidneysFound:
    """What the localisers found, on the localiser grid: one box per kidney, and the body's midline."""

    grid: Volume  # the localiser grid, in HU
    boxes: list = field(default_factory=list)  # localisation.Box, (z, y, x) indices of ``grid``
    midline_mm: float | None = None  # LPS x
    mask: np.ndarray | None = None  # the xy-localiser's kidney mask on ``grid`` (None before it ran)
    discarded: list = field(default_factory=list)  # segmented regions that failed the plausibility check
    at_edge: list = field(default_factory=list)  # kept regions that run on past the segmenter's canvas

    def z_range_mm(self) -> list[float] | None:
        """The boxes' lowest and highest slice positions (LPS z, mm), None without a box."""
        if not self.boxes:
            return None
        k0, k1 = min(b.lo[0] for b in self.boxes), max(b.hi[0] for b in self.boxes) - 1
        return [round(self.grid.origin[2] + k * self.grid.spacing[2], 1) for k in (k0, k1)]


def _midline_index(found: KidneysFound, grid: Volume) -> float:
    """The body's midline as an x index of ``grid``; the grid's middle when no midline was found."""
    x = _x_index(found.midline_mm, grid)
    return 0.5 * (grid.array.shape[2] - 1) if x is None else x


def _x_index(x_mm: float | None, grid: Volume) -> float | None:
    """An LPS x (mm) as a (fractional) x index of a canonical grid, None passing through."""
    return None if x_mm is None else (x_mm - grid.origin[0]) / grid.spacing[0]


class Pipeline:
    """Runs the three networks of a weights bundle on one device."""

    def __init__(self, bundle: Bundle, device: str = "auto", allow_non_ct: bool = False, batch_size: int = 16,
                 mirror_x: bool | None = None):
        self.bundle = bundle
        self.config = bundle.config
        self.allow_non_ct = allow_non_ct
        self.batch_size = batch_size
        self.mirror_x = self.config.segmenter.mirror_x if mirror_x is None else bool(mirror_x)
        self.nets = networks_from_bundle(bundle)
        self.configured_device = resolve_device(device)
        self._place_networks(self.configured_device)
        self._reused_windows: dict | None = None

    @classmethod
    def from_weights(cls, weights=None, device: str = "auto", **kwargs) -> Pipeline:
        """``weights``: a Bundle, a file path, or None for the bundled weights."""
        bundle = weights if isinstance(weights, Bundle) else load_bundle(weights)
        return cls(bundle, device=device, **kwargs)

    @contextmanager
    def segmenter_outputs_reused(self):
        """Within this block, a run over a scan and boxes already segmented reuses the segmenter's
        stitched probabilities instead of running it again: evaluating several post-processing
        settings on one scan costs one segmentation per distinct set of boxes. Only for settings that
        leave those outputs unchanged (``config.REUSABLE_SEGMENTER_SETTINGS``); every set of boxes
        stays in memory until the block ends, so keep a block to one scan."""
        self._reused_windows = {}
        try:
            yield
        finally:
            self._reused_windows = None

    # --- devices --------------------------------------------------------------------------------
    @property
    def device(self):
        """Where the networks are: the configured device, or the CPU after a run that ran out of GPU
        memory (until the next run, which starts on the configured device again)."""
        return self._networks_on

    @device.setter
    def device(self, device) -> None:
        # Runs start on ``device`` from the next run on; the networks move there when it starts.
        import torch

        self.configured_device = torch.device(device)

    def _place_networks(self, device) -> None:
        for net in self.nets.values():
            net.to(device)
        self._networks_on = device

    def _new_run(self, progress: Progress | None = None, cancel=None) -> RunContext:
        """A fresh run on the configured device."""
        if self._networks_on != self.configured_device:
            self._place_networks(self.configured_device)
        return RunContext(self.configured_device, progress, cancel)

    # --- network calls, falling back to the CPU for the rest of a run when the GPU is full --------
    def _call(self, name: str, batch: np.ndarray, device) -> np.ndarray:
        import torch

        with torch.inference_mode(), autocast(device):
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
            return torch.sigmoid(self.nets[name](x).float()).cpu().numpy()

    def _forward(self, ctx: RunContext, name: str, batch: np.ndarray) -> np.ndarray:
        try:
            return self._call(name, batch, ctx.device)
        except RuntimeError as err:
            if ctx.device.type != "cuda" or not is_out_of_memory(err):
                raise
        log.warning("The GPU ran out of memory; continuing on the CPU, which is slower.")
        ctx.warnings.append(GPU_FULL)
        ctx.device = resolve_device("cpu")
        self._place_networks(ctx.device)
        free_cuda_memory()  # the weights have left the GPU: give their memory back too
        return self._call(name, batch, ctx.device)

    # --- stages ---------------------------------------------------------------------------------
    def _localiser_grid(self, ctx: RunContext, volume: Volume) -> tuple[Volume, np.ndarray]:
        """The whole scan on the localisers' canonical grid: in HU, and in the networks' window."""
        spacing = self.config.localiser_grid.spacing_mm
        origin, size = resampling.canonical_box(volume, spacing)
        grid = resampling.resample_box_chunked(volume, origin, size, spacing)
        image = preprocess.normalise_hu(grid.array, self.config.preprocess)
        ctx.clock.lap("preprocess")
        return grid, image

    def _locate_kidneys(self, ctx: RunContext, grid: Volume, image: np.ndarray) -> KidneysFound:
        """z-localiser, then xy-localiser on the slices it chose: one box per kidney."""
        cfg = self.config
        ctx.progress(0.1, "Finding the kidneys' slices")
        zprobs = self._z_probabilities(ctx, image)
        slices = localisation.candidate_slices(zprobs, grid.spacing[2], cfg.z_localiser)
        ctx.clock.lap("z_localiser")
        found = KidneysFound(grid, [], postprocess.body_midline_x(grid))
        if slices.any():
            ctx.progress(0.25, "Finding the kidneys in the slices")
            found.mask = mask = self._xy_mask(ctx, image, slices)
            candidates = localisation.kidney_candidates(mask, zprobs, grid.spacing, cfg.xy_localiser)
            found.boxes = localisation.choose_kidney_boxes(candidates, _x_index(found.midline_mm, grid))
            ctx.clock.lap("xy_localiser")
        return found

    def _z_probabilities(self, ctx: RunContext, loc: np.ndarray) -> np.ndarray:
        c = self.config.z_localiser.context_slices
        nz = loc.shape[0]
        probs = np.zeros(nz, np.float32)
        for a, b in ctx.batches(nz, self.batch_size):
            idx = np.clip(np.arange(a, b)[:, None] + np.arange(-c, c + 1)[None, :], 0, nz - 1)
            probs[a:b] = self._forward(ctx, "z_localiser", loc[idx]).reshape(-1)
        return probs

    def _xy_mask(self, ctx: RunContext, loc: np.ndarray, slices: np.ndarray) -> np.ndarray:
        """The xy-localiser's kidney mask on the chosen slices (``slices``: bool per slice)."""
        mask = np.zeros(loc.shape, bool)
        thr = self.config.xy_localiser.threshold
        ks = np.flatnonzero(slices)
        for a, b in ctx.batches(ks.size, self.batch_size):
            out = self._forward(ctx, "xy_localiser", loc[ks[a:b], None])
            mask[ks[a:b]] = out[:, 0] >= thr
        return mask

    def _segment_kidneys(self, ctx: RunContext, volume: Volume, found: KidneysFound) -> Volume:
        """Labels (0/1/2) on the input grid: segmenter windows around the boxes, post-processing on
        the canvas, and the result brought back onto the scan's grid (empty without a box)."""
        if not found.boxes:
            return volume.with_array(np.zeros(volume.array.shape, np.uint8))
        ctx.progress(0.4, f"Segmenting {len(found.boxes)} kidney region(s)")
        for grow in range(GROW_ROUNDS + 1):
            probs, canvas = self._segment_boxes(ctx, volume, found.grid, found.boxes)
            ctx.check_cancel()
            canvas_labels, found.discarded = self._labels_on_canvas(probs, canvas, found)
            grown = self._grown_boxes(canvas_labels, canvas, volume, found) if grow < GROW_ROUNDS else None
            if not grown:
                break
            found.boxes = grown
            probs = canvas = canvas_labels = None  # the next round's arrays need the room
            ctx.progress(0.4, "A kidney reaches past the segmented slices: segmenting further")
        for region in found.discarded:
            ctx.warn(DISCARDED[region["reason"]].format(ml=region["ml"]))
        found.at_edge = self._regions_at_edge(canvas_labels, canvas, volume, found)
        for region in found.at_edge:
            ctx.warn(AT_EDGE.format(side=region["side"], ml=region["ml"], tumour=100 * region["tumour_share"]))
        ctx.clock.lap("postprocess")
        ctx.progress(0.9, "Bringing the labels back onto the scan's grid")
        labels = self._back_to_input(canvas_labels, canvas, volume)
        ctx.clock.lap("resample_back")
        return volume.with_array(labels)

    def _labels_on_canvas(self, probs: np.ndarray, canvas: Volume, found: KidneysFound) -> tuple[np.ndarray, list]:
        """Labels (0/1/2) on the canvas and the chosen regions discarded as implausible (encased in
        bone, or with no fat around them); a discarded region hands its side to the next best one,
        which is judged in turn."""
        cfg = postprocess.PostprocessConfig.from_model(self.config)
        midline, support = _x_index(found.midline_mm, canvas), self._localiser_support(found, canvas)
        rules = plausibility.PlausibilityConfig(min_fat_fraction=self.config.segmenter.min_rim_fat)
        exclude, discarded = None, []
        while True:
            labels = postprocess.labels_from_probabilities(
                probs[0], probs[1], canvas.voxel_volume_ml, cfg, midline, support, exclude)
            failed, more = plausibility.implausible_regions(labels, canvas.array, canvas.spacing,
                                                            canvas.voxel_volume_ml, rules)
            if not more:
                return labels, discarded
            discarded += more
            exclude = failed if exclude is None else exclude | failed

    @staticmethod
    def _regions_at_open_faces(labels: np.ndarray, canvas: Volume, volume: Volume, found: KidneysFound,
                               axes: str) -> list[dict]:
        """Kept regions touching a face of the canvas along ``axes`` ("z", "xy") behind which the scan
        goes on, each with its side (LPS: the patient's right at low x)."""
        open_faces = {f: v for f, v in resampling.faces_inside(canvas, volume).items() if f[0] in axes}
        regions = plausibility.regions_reaching_faces(labels, open_faces, canvas.voxel_volume_ml)
        midline = _midline_index(found, canvas)
        for region in regions:
            region["side"] = "right" if region.pop("x_index") < midline else "left"
        return regions

    @staticmethod
    def _grown_boxes(labels: np.ndarray, canvas: Volume, volume: Volume, found: KidneysFound) -> list | None:
        """The boxes, those on the side of a kept region that reaches the canvas's top or bottom
        while the scan goes on extended by GROW_MM that way (the z-localiser's slices ended inside a
        pole); None when no region does or no box can grow."""
        regions = Pipeline._regions_at_open_faces(labels, canvas, volume, found, "z")
        if not regions:
            return None
        grid = found.grid
        step = int(np.ceil(GROW_MM / grid.spacing[2]))
        grid_mid = _midline_index(found, grid)
        boxes, changed = list(found.boxes), False
        for region in regions:
            for i, box in enumerate(boxes):
                if ("right" if box.centre[2] < grid_mid else "left") != region["side"]:
                    continue
                lo, hi = list(box.lo), list(box.hi)
                if "z0" in region["faces"]:
                    lo[0] = max(0, lo[0] - step)
                if "z1" in region["faces"]:
                    hi[0] = min(grid.array.shape[0], hi[0] + step)
                if (tuple(lo), tuple(hi)) != (box.lo, box.hi):
                    boxes[i], changed = localisation.Box(tuple(lo), tuple(hi)), True
        return boxes if changed else None

    @staticmethod
    def _regions_at_edge(labels: np.ndarray, canvas: Volume, volume: Volume, found: KidneysFound) -> list[dict]:
        """Kept regions touching a side face (x or y) of the canvas behind which the scan goes on, each
        with its side. The top and bottom faces do not count: the z-localiser's slices can end inside
        a kidney's pole (15 true kidneys of the painted phantoms touch them), while sideways the box
        holds all the xy-localiser marked."""
        return Pipeline._regions_at_open_faces(labels, canvas, volume, found, "xy")

    @staticmethod
    def _localiser_support(found: KidneysFound, canvas: Volume) -> np.ndarray | None:
        """The xy-localiser's kidney mask on the segmenter's canvas (nearest neighbour): the second
        network's vote that post-processing ranks the segmented regions by."""
        if found.mask is None:
            return None
        mask = found.grid.with_array(found.mask.astype(np.uint8))
        return resampling.resample_onto(mask, canvas, "nearest").array > 0

    def _segmenter_probabilities(self, batch: np.ndarray, ctx: RunContext | None = None) -> np.ndarray:
        """The segmenter's probabilities for a batch of windows; with ``mirror_x``, the mean of each
        window's and its left-right mirror's (test-time augmentation with the one mirror the
        networks were trained with: a mirrored kidney is still a plausible kidney). Twice the
        segmenter's time; the gain is measured on validation cases before a bundle turns it on.
        Without ``ctx`` the batch is a run of its own."""
        ctx = ctx or self._new_run()
        if not self.mirror_x:
            return self._forward(ctx, "segmenter", batch)
        # Two calls rather than one of twice the batch: the peak memory stays that of one call,
        # which is what memory.estimate_run_bytes budgets for.
        plain = self._forward(ctx, "segmenter", batch)
        mirrored = self._forward(ctx, "segmenter", batch[..., ::-1])
        return 0.5 * (plain + mirrored[..., ::-1])

    def _segment_boxes(self, ctx: RunContext, volume: Volume, loc_grid: Volume, boxes):
        """Probabilities (2, z, y, x) on a canvas around the boxes, and the canvas geometry: the fine
        look, joined by the coarse one where ``context_scale`` (and its gate) asks for it."""
        cfg = self.config.segmenter
        spacing = np.asarray(cfg.spacing_mm, dtype=float)
        probs, canvas = self._look(ctx, volume, loc_grid, boxes, spacing, (0.4, 0.3 if cfg.second_look else 0.45))
        if not cfg.second_look:
            return probs, canvas
        gated = cfg.context_gate_ml > 0
        seeds = patches.context_seeds(self._region(probs), canvas.voxel_volume_ml, cfg.context_gate_ml) if gated else None
        if gated and seeds is None:
            return probs, canvas
        wide, wide_canvas = self._look(ctx, volume, loc_grid, boxes, spacing * cfg.context_scale, (0.7, 0.15))
        how, fine_looked = cfg.context_fusion, None
        if how == "widen":
            probs, canvas, fine_looked = self._widened(volume, probs, canvas, wide_canvas)
            how = "mean"
            if seeds is not None:
                grown = np.zeros(fine_looked.shape, bool)
                grown[fine_looked] = seeds.ravel()  # the fine canvas is one block of the grown one
                seeds = grown
        fused = patches.fuse_scales(probs, canvas, wide, wide_canvas, how, fine_looked)
        if seeds is not None:
            fused = patches.gate_fusion(probs, fused, self._region(fused), seeds)
        return fused, canvas

    def _look(self, ctx: RunContext, volume: Volume, loc_grid: Volume, boxes, spacing: np.ndarray, span):
        """One look's stitched probabilities and canvas. Within ``segmenter_outputs_reused`` a scan's
        boxes are segmented once per spacing; the gate and the fusion, which depend on the
        thresholds a sweep varies, are applied afresh on every run."""
        key = (id(volume), volume.array.shape, tuple((b.lo, b.hi) for b in boxes), tuple(float(s) for s in spacing))
        if self._reused_windows is not None and key in self._reused_windows:
            return self._reused_windows[key]
        looked = self._segment_windows(ctx, volume, loc_grid, boxes, spacing, span)
        if self._reused_windows is not None:
            self._reused_windows[key] = looked
        return looked

    def _region(self, probs: np.ndarray) -> np.ndarray:
        """The kidney-with-tumour region of stitched probabilities at this bundle's thresholds."""
        return postprocess.region_mask(probs[0], probs[1], postprocess.PostprocessConfig.from_model(self.config))

    def _scan_on_canvas(self, volume: Volume, origin, size_xyz, spacing) -> Volume:
        """The scan resampled onto a segmenter canvas (slab by slab: no whole-scan float32 copy), and
        past its head and foot ends what ``beyond_scan`` says the segmenter sees there."""
        return resampling.resample_box_chunked(volume, origin, tuple(size_xyz), tuple(spacing),
                                               beyond_scan=self.config.segmenter.beyond_scan)

    def _widened(self, volume: Volume, probs: np.ndarray, canvas: Volume, wide_canvas: Volume):
        """The fine canvas grown on its own lattice to cover the coarse canvas too: the scan resampled
        there, the fine probabilities placed where they were (0 beyond), and where the fine windows
        looked."""
        sp = np.asarray(canvas.spacing, float)
        (lo_f, hi_f), (lo_w, hi_w) = canvas.physical_bounds(), wide_canvas.physical_bounds()
        lo, hi = np.minimum(lo_f, lo_w), np.maximum(hi_f, hi_w)
        lo_i = np.floor((lo - canvas.origin) / sp + 1e-6).astype(int)
        hi_i = np.ceil((hi - canvas.origin) / sp - 1e-6).astype(int)
        origin = canvas.origin + lo_i * sp
        grown = self._scan_on_canvas(volume, origin, hi_i - lo_i + 1, sp)
        at = (-lo_i)[::-1]
        place = tuple(slice(a, a + n) for a, n in zip(at, canvas.array.shape))
        out = np.zeros((probs.shape[0], *grown.array.shape), np.float32)
        out[(slice(None), *place)] = probs
        looked = np.zeros(grown.array.shape, bool)
        looked[place] = True
        return out, grown, looked

    def _segment_windows(self, ctx: RunContext, volume: Volume, loc_grid: Volume, boxes, seg_sp: np.ndarray,
                         span: tuple[float, float] = (0.4, 0.45)):
        """The segmenter run window by window over a canvas around the boxes at ``seg_sp`` (x, y, z
        mm), and stitched; progress runs from ``span[0]`` over ``span[1]`` of the run."""
        cfg = self.config.segmenter
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
        canvas = self._scan_on_canvas(volume, origin, (hi_c - lo_c)[::-1], seg_sp)
        canvas_img = preprocess.normalise_hu(canvas.array, self.config.preprocess)
        ctx.clock.lap("preprocess")
        stitcher = patches.Stitcher(2, canvas_img.shape, patch)
        local = [tuple(np.asarray(s) - lo_c) for s in starts]
        bs = 2  # a batch of 1 sends small-channel 3D convolutions to a slow CPU kernel
        for i, (a, b) in enumerate(ctx.batches(len(local), bs)):
            batch = np.stack([patches.extract(canvas_img, s, patch)[None] for s in local[a:b]])
            pred = self._segmenter_probabilities(batch, ctx)
            ctx.clock.lap("segmenter")
            for s, p in zip(local[a:b], pred):
                stitcher.add(s, p)
            ctx.clock.lap("stitching")
            ctx.progress(span[0] + span[1] * min(1.0, (i + 1) * bs / max(1, len(local))),
                         f"Segmenting window {b} of {len(local)}")
        probs = stitcher.result()
        ctx.clock.lap("stitching")
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
        sl = mask_box(arr, (1, 1, 1))  # (z, y, x); nonzero voxels, without a whole-scan copy
        if sl is None:
            return {}, {}
        crop = labels.sub_volume([s.start for s in sl[::-1]], [s.stop for s in sl[::-1]])
        parts = postprocess.split_sides(crop, midline_x)
        sides = side_measurements(parts, crop)
        structures = {}
        for key in list(parts):
            full = np.zeros(arr.shape, bool)
            full[sl] = parts.pop(key)
            structures[key] = full
        return structures, sides

    def _findings(self, ctx: RunContext, volume: Volume, labels: Volume, found: KidneysFound):
        """Structures per side, their measurements and the contrast phase; warns when the result is
        empty or the phase makes it unreliable."""
        structures, sides = self._structures_and_sides(labels, found.midline_mm)
        ctx.clock.lap("postprocess")
        if not structures:
            ctx.warn(NO_KIDNEY)
        phase = contrast.contrast_phase(volume, labels.array) if structures else None
        ctx.clock.lap("contrast")  # seconds on a large scan: it belongs in the reported total
        unreliable = contrast.warning_for(phase)
        if unreliable:
            ctx.warn(unreliable)
        return structures, sides, phase

    def _report(self, ctx: RunContext, found: KidneysFound, sides: dict, kidney_found: bool, phase) -> dict:
        report = {
            "sides": sides,
            "kidney_found": kidney_found,  # an empty result says so in the report
            "z_range_mm": found.z_range_mm(),
            "kidney_boxes": len(found.boxes),
            "discarded_regions": list(found.discarded),
            "regions_at_edge": list(found.at_edge),
            "contrast": phase,
            "timings_s": dict(ctx.clock.times),
            "warnings": list(ctx.warnings),
            "device": str(ctx.device),
            "test_time_mirroring": self.mirror_x,
            "weights": self.bundle.header.get("provenance", {}).get("name", str(self.bundle.path or "seeded")),
        }
        report["timings_s"]["total"] = round(sum(report["timings_s"].values()), 4)
        return report

    # --- the whole job --------------------------------------------------------------------------
    def run(self, volume: Volume, progress: Progress | None = None, cancel=None, source=None) -> SegmentationResult:
        """Segment ``volume``; ``source`` (a path or a name) is named in input messages when given."""
        ctx = self._new_run(progress, cancel)
        ctx.warnings += check_ct_volume(volume, allow_non_ct=self.allow_non_ct, source=source)
        ctx.progress(0.0, "Preparing the image")
        grid, image = self._localiser_grid(ctx, volume)
        found = self._locate_kidneys(ctx, grid, image)
        labels = self._segment_kidneys(ctx, volume, found)
        structures, sides, phase = self._findings(ctx, volume, labels, found)
        report = self._report(ctx, found, sides, bool(structures), phase)
        ctx.progress(1.0, "Done")
        return SegmentationResult(labels, structures, report)
