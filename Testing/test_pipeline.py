"""The engine's mechanics on deterministic inputs.

The networks here are real modules whose output heads are set by hand (weights 0, bias +-10), so
each stage's decision is known exactly: "kidney everywhere" or "no kidney anywhere". What is
checked is what the pipeline does with those decisions: grids, boxes, stitching, post-processing,
sides, report, progress, cancellation, errors.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.config import ModelConfig
from KidneyTumorSegLib.errors import Cancelled, DeviceError, InputError, NotCTError
from KidneyTumorSegLib.pipeline import NO_KIDNEY, Pipeline
from KidneyTumorSegLib.volume import Volume
from KidneyTumorSegLib.weights import seeded_bundle

from .test_geometry import OBLIQUE_FLIPPED


def bundle_with_heads(z: float, xy: float, region: float, tumour: float):
    b = seeded_bundle(ModelConfig.tiny(), seed=0)
    for net, biases in (("z_localiser", [z]), ("xy_localiser", [xy]), ("segmenter", [region, tumour])):
        sd = b.state_dicts[net]
        sd["head.weight"] = torch.zeros_like(sd["head.weight"])
        sd["head.bias"] = torch.tensor(biases, dtype=sd["head.bias"].dtype)
    return b


def body_ct(direction=None, spacing=(1.6, 1.6, 4.0), shape=(36, 80, 90)) -> Volume:
    """An elliptical soft-tissue body in air, HU-like, deterministic."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    body = ((yy - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((xx - shape[2] / 2) / (shape[2] * 0.45)) ** 2 <= 1
    arr = np.where(body, 40.0 + 30.0 * np.sin(xx / 3.0) * np.cos(yy / 5.0), -1000.0).astype(np.float32)
    return Volume(arr, spacing, (-70.0, -60.0, 100.0), np.eye(3) if direction is None else direction)


def test_no_kidney_gives_an_empty_result_and_a_clear_warning():
    result = Pipeline(bundle_with_heads(-10, -10, -10, -10), device="cpu").run(body_ct())
    assert result.empty and not result.labels.array.any()
    assert NO_KIDNEY in result.report["warnings"]
    assert result.report["sides"] == {}


def test_labels_land_on_the_input_grid_for_an_oblique_flipped_anisotropic_scan():
    ct = body_ct(direction=OBLIQUE_FLIPPED, spacing=(1.3, 1.7, 4.5))
    result = Pipeline(bundle_with_heads(10, 10, 10, -10), device="cpu").run(ct)
    assert result.labels.same_grid(ct)
    assert result.labels.array.dtype == np.uint8
    # Localisers say "kidney everywhere", the segmenter says "kidney, no tumour": the whole scan
    # (within the localiser margin) is one kidney region and nothing is tumour.
    assert set(np.unique(result.labels.array)) == {1}
    assert result.report["kidney_boxes"] == 1
    side = next(iter(result.report["sides"].values()))
    assert side["tumour_ml"] == 0
    assert side["kidney_without_tumour_ml"] == pytest.approx(ct.array.size * ct.voxel_volume_ml, rel=1e-3)


def test_tumour_everywhere_is_labelled_tumour_and_measured():
    ct = body_ct()
    result = Pipeline(bundle_with_heads(10, 10, 10, 10), device="cpu").run(ct)
    # A region of pure tumour holds no kidney tissue, so post-processing drops it: no kidney.
    assert result.empty


@pytest.mark.parametrize("context_scale", [0.0, 1.5])
def test_runs_are_deterministic_and_progress_is_monotonic(context_scale):
    ct = body_ct()
    bundle = bundle_with_heads(10, 10, 10, -10) if context_scale else seeded_bundle(ModelConfig.tiny(), seed=1)
    bundle.config.segmenter.context_scale = context_scale
    pipe = Pipeline(bundle, device="cpu")
    seen = []
    a = pipe.run(ct, progress=lambda f, m: seen.append(f))
    b = pipe.run(ct)
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert set(a.report["timings_s"]) >= {"preprocess", "z_localiser", "total"}


def test_cancel_stops_the_run():
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        Pipeline(bundle_with_heads(10, 10, 10, -10), device="cpu").run(body_ct(), cancel=event)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="CUDA"):
        Pipeline(seeded_bundle(ModelConfig.tiny()), device="cuda")


def test_mr_like_intensities_are_refused_unless_allowed():
    ct = body_ct()
    mr = ct.with_array(np.where(ct.array < -500, 0.0, ct.array + 300.0).astype(np.float32))
    pipe = Pipeline(bundle_with_heads(-10, -10, -10, -10), device="cpu")
    with pytest.raises(NotCTError, match="Hounsfield"):
        pipe.run(mr)
    pipe.allow_non_ct = True
    assert any("Hounsfield" in w for w in pipe.run(mr).report["warnings"])


def test_constant_image_is_refused():
    ct = body_ct()
    with pytest.raises(InputError, match="constant"):
        Pipeline(bundle_with_heads(-10, -10, -10, -10), device="cpu").run(ct.with_array(np.zeros_like(ct.array)))


def _windows(seed: int = 3) -> np.ndarray:
    """A batch of two left-right asymmetric windows of the tiny segmenter's patch size."""
    z, y, x = ModelConfig.tiny().segmenter.patch_size_xyz[::-1]
    rng = np.random.default_rng(seed)
    batch = rng.normal(0.0, 1.0, (2, 1, z, y, x)).astype(np.float32)
    batch[..., : x // 3] += 2.0  # one side brighter: the mirror is a different input
    return batch


def test_mirroring_averages_each_window_with_its_flipped_prediction():
    pipe = Pipeline(seeded_bundle(ModelConfig.tiny(), seed=2), device="cpu", mirror_x=True)
    batch = _windows()
    net = pipe.nets["segmenter"]
    with torch.inference_mode():
        plain = torch.sigmoid(net(torch.from_numpy(batch))).numpy()
        mirrored = torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(batch[..., ::-1])))).numpy()[..., ::-1]
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the network itself is not symmetric
    np.testing.assert_allclose(pipe._segmenter_probabilities(batch), 0.5 * (plain + mirrored), atol=1e-5)


def test_mirrored_predictions_are_exactly_left_right_equivariant():
    """Mirroring the input mirrors the averaged output; without mirroring it does not."""
    batch = _windows()
    flipped = np.ascontiguousarray(batch[..., ::-1])
    bundle = seeded_bundle(ModelConfig.tiny(), seed=2)
    on = Pipeline(bundle, device="cpu", mirror_x=True)
    np.testing.assert_allclose(on._segmenter_probabilities(flipped), on._segmenter_probabilities(batch)[..., ::-1],
                               atol=1e-5)
    off = Pipeline(bundle, device="cpu", mirror_x=False)
    assert not np.allclose(off._segmenter_probabilities(flipped), off._segmenter_probabilities(batch)[..., ::-1],
                           atol=1e-3)


def test_mirroring_follows_the_bundle_unless_overridden(tmp_path):
    from KidneyTumorSegLib.weights import load_bundle, save_bundle

    cfg = ModelConfig.tiny()
    cfg.segmenter.mirror_x = True
    bundle = seeded_bundle(cfg, seed=0)
    loaded = load_bundle(save_bundle(tmp_path / "mirror.safetensors", cfg, bundle.state_dicts))
    assert loaded.config.segmenter.mirror_x is True
    assert Pipeline(loaded, device="cpu").mirror_x is True
    assert Pipeline(loaded, device="cpu", mirror_x=False).mirror_x is False
    assert Pipeline(seeded_bundle(ModelConfig.tiny()), device="cpu").mirror_x is False  # older bundles: off


def test_the_bundles_minimum_tumour_volume_reaches_post_processing(monkeypatch):
    from KidneyTumorSegLib import postprocess

    seen = []
    real = postprocess.labels_from_probabilities
    monkeypatch.setattr(postprocess, "labels_from_probabilities", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    bundle = bundle_with_heads(10, 10, 10, -10)
    bundle.config.segmenter.min_tumour_ml = 0.5
    Pipeline(bundle, device="cpu").run(body_ct())
    assert [c.min_tumour_ml for c in seen] == [0.5]


def test_localiser_support_lands_on_the_same_physical_place_of_the_canvas():
    """The xy-localiser's mask (4 mm grid) is brought onto the segmenter's canvas (2 mm, another
    origin) where it physically lies."""
    from KidneyTumorSegLib.pipeline import KidneysFound, Pipeline
    from KidneyTumorSegLib.volume import Volume

    grid = Volume(np.zeros((10, 12, 14), np.float32), (4.0, 4.0, 4.0), (-20.0, -30.0, 100.0))
    mask = np.zeros(grid.array.shape, bool)
    mask[3:6, 4:7, 5:9] = True  # x 0..12 mm, y -14..-6 mm, z 112..120 mm (voxel centres)
    canvas = Volume(np.zeros((20, 20, 20), np.float32), (2.0, 2.0, 2.0), (-10.0, -20.0, 104.0))
    support = Pipeline._localiser_support(KidneysFound(grid, mask=mask), canvas)
    z, y, x = np.nonzero(support)
    pos = np.stack([canvas.origin[i] + canvas.spacing[i] * v for i, v in enumerate((x, y, z))], axis=1)
    assert pos[:, 0].min() >= -2 and pos[:, 0].max() <= 14  # within half a localiser voxel of the mask
    assert pos[:, 1].min() >= -16 and pos[:, 1].max() <= -4
    assert pos[:, 2].min() >= 110 and pos[:, 2].max() <= 122
    assert support.sum() * 8 == pytest.approx(mask.sum() * 64, rel=0.35)
    assert Pipeline._localiser_support(KidneysFound(grid), canvas) is None


def fake_looks(spacings: list, region_value):
    """A stand-in for ``Pipeline._segment_windows``: a canvas 20 mm around the boxes at the asked
    spacing whose region probability is ``region_value(call)`` everywhere (call 1, 2, ... in order),
    every spacing asked for recorded in ``spacings``."""
    from KidneyTumorSegLib import resampling

    def windows(self, ctx, volume, loc_grid, boxes, spacing, span=None):
        spacings.append(tuple(float(s) for s in spacing))
        lo = np.min([b.to_physical(loc_grid.spacing, loc_grid.origin)[0] for b in boxes], axis=0) - 20.0
        hi = np.max([b.to_physical(loc_grid.spacing, loc_grid.origin)[1] for b in boxes], axis=0) + 20.0
        size = tuple(int(np.ceil(n)) for n in (hi - lo) / spacing)
        canvas = resampling.resample_box_chunked(volume, lo, size, tuple(spacing))
        probs = np.zeros((2, *canvas.array.shape), np.float32)
        probs[0] = region_value(len(spacings))
        return probs, canvas

    return windows


def test_a_context_scale_segments_again_on_a_coarser_grid_and_averages_where_it_looked(monkeypatch):
    """With ``context_scale`` the boxes are segmented twice, at the segmenter's spacing and at that
    times the scale, and the labels follow the fused probabilities: a fine grid that says 0.3
    (below the kidney threshold) and a coarse one that says 0.9 average to a kidney."""
    spacings = []
    windows = fake_looks(spacings, lambda call: 0.9 if call % 2 == 0 else 0.3)  # each run's second call is the coarse one

    monkeypatch.setattr(Pipeline, "_segment_windows", windows)
    bundle = bundle_with_heads(10, 10, 10, -10)
    fine = tuple(bundle.config.segmenter.spacing_mm)
    assert Pipeline(bundle, device="cpu").run(body_ct()).empty  # 0.3 alone: no kidney
    assert spacings == [fine]
    spacings.clear()
    bundle.config.segmenter.context_scale = 1.5
    result = Pipeline(bundle, device="cpu").run(body_ct())
    assert spacings == [fine, tuple(1.5 * s for s in fine)]
    assert not result.empty and set(np.unique(result.labels.array)) <= {0, 1}


def test_a_gated_second_look_runs_only_when_the_fine_look_calls_for_it(monkeypatch):
    """With ``context_gate_ml`` the coarse look runs only for a fine region that is large or meets
    the canvas's side: a fine grid that finds nothing (0.3) is not looked at again, so the coarse
    grid's 0.9 cannot make a kidney of it; a fine region filling the canvas (0.6) is."""
    spacings, fine_value = [], {"p": 0.3}
    windows = fake_looks(spacings, lambda call: 0.9 if call % 2 == 0 else fine_value["p"])

    monkeypatch.setattr(Pipeline, "_segment_windows", windows)
    bundle = bundle_with_heads(10, 10, 10, -10)
    fine = tuple(bundle.config.segmenter.spacing_mm)
    bundle.config.segmenter.context_scale = 1.5
    bundle.config.segmenter.context_fusion = "split"
    bundle.config.segmenter.context_gate_ml = 300.0
    assert Pipeline(bundle, device="cpu").run(body_ct()).empty
    assert spacings == [fine]
    spacings.clear()
    fine_value["p"] = 0.6
    result = Pipeline(bundle, device="cpu").run(body_ct())
    assert spacings == [fine, tuple(1.5 * s for s in fine)]
    assert not result.empty


def test_a_sweep_over_thresholds_judges_the_gate_afresh_for_each(monkeypatch):
    """Reused segmenter outputs are each look's own: whether the gate opens depends on the kidney
    threshold, so a sweep cannot reuse fused probabilities. A fine 0.55 filling the canvas opens the
    gate at threshold 0.5 (fused with the coarse 0.9: a kidney) and not at 0.6 (no region, nothing),
    and each look is still segmented only once."""
    from KidneyTumorSegLib.config import with_settings

    spacings = []
    windows = fake_looks(spacings, lambda call: 0.55 if call == 1 else 0.9)

    monkeypatch.setattr(Pipeline, "_segment_windows", windows)
    bundle = bundle_with_heads(10, 10, 10, -10)
    base = with_settings(bundle.config, ["segmenter.context_scale=1.5", "segmenter.context_fusion=split",
                                         "segmenter.context_gate_ml=300"])
    pipe, ct = Pipeline(bundle, device="cpu"), body_ct()
    with pipe.segmenter_outputs_reused():
        pipe.config = with_settings(base, ["segmenter.kidney_threshold=0.5"])
        opened = pipe.run(ct)
        pipe.config = with_settings(base, ["segmenter.kidney_threshold=0.6"])
        closed = pipe.run(ct)
    assert not opened.empty and closed.empty
    fine = tuple(bundle.config.segmenter.spacing_mm)
    assert spacings == [fine, tuple(1.5 * s for s in fine)]


def test_a_widened_canvas_keeps_the_fine_probabilities_where_they_lay():
    """"widen" grows the fine canvas on its own lattice to cover the coarse windows: the scan is
    resampled there, and the fine probabilities sit at the same physical places as before."""
    from KidneyTumorSegLib import resampling

    zz, yy, xx = np.meshgrid(*[np.arange(40)] * 3, indexing="ij")
    scan = Volume((xx + 100.0 * yy + 10000.0 * zz).astype(np.float32), (1.0, 1.0, 1.0), (-20.0, -20.0, -20.0))
    fine = resampling.resample_box_chunked(scan, (0.0, 0.0, 0.0), (5, 6, 7), (2.0, 2.0, 2.0))
    coarse = Volume(np.zeros((4, 4, 4), np.float32), (3.0, 3.0, 3.0), (-9.0, -3.0, 1.0))
    probs = np.stack([fine.array, -fine.array])
    pipe = Pipeline(seeded_bundle(ModelConfig.tiny()), device="cpu")
    out, grown, looked = pipe._widened(scan, probs, fine, coarse)
    assert np.allclose(grown.origin, (-10.0, -4.0, 0.0)) and grown.spacing == fine.spacing
    assert grown.array.shape == (7, 8, 10) and looked.sum() == fine.array.size
    np.testing.assert_allclose(out[0][looked], grown.array[looked], atol=1e-3)  # same places, same values
    np.testing.assert_allclose(out[1][looked], -grown.array[looked], atol=1e-3)
    assert not out[:, ~looked].any()
    # the grown canvas honours beyond_scan as the fine one does: past the scan's head end (z 19 mm),
    # air, or with "edge" the scan's last slice carried on (the 1 mm scan is block-averaged onto the 2 mm
    # grid, so its last slice is the mean of z indices 38 and 39)
    tall = Volume(np.zeros((4, 4, 4), np.float32), (3.0, 3.0, 3.0), (-9.0, -3.0, 20.0))  # up to z 29 mm
    _, grown, _ = pipe._widened(scan, probs, fine, tall)
    z = grown.origin[2] + grown.spacing[2] * np.arange(grown.array.shape[0])
    assert (grown.array[z > 19.0] == resampling.AIR_HU).all()
    pipe.config.segmenter.beyond_scan = "edge"
    _, grown, _ = pipe._widened(scan, probs, fine, tall)
    x = grown.origin[0] + grown.spacing[0] * np.arange(grown.array.shape[2])
    y = grown.origin[1] + grown.spacing[1] * np.arange(grown.array.shape[1])
    last_slice = (x[None, :] + 20) + 100.0 * (y[:, None] + 20) + 10000.0 * 38.5
    inside_xy = (x[None, :] >= -20) & (y[:, None] >= -20)
    assert (z > 19.0).any()
    for k in np.flatnonzero(z > 19.0):
        np.testing.assert_allclose(grown.array[k][inside_xy], np.broadcast_to(last_slice, inside_xy.shape)[inside_xy])


@pytest.mark.parametrize("beyond", ["air", "edge"])
def test_past_the_scans_ends_the_segmenter_sees_air_or_the_last_slice(beyond):
    """A scan shorter than the segmenter's window: with ``beyond_scan="edge"`` the canvas slices past
    the scan's head and foot ends repeat its first and last slices; with "air" they are air."""
    bundle = bundle_with_heads(10, 10, 10, -10)
    bundle.config.segmenter.beyond_scan = beyond
    pipe = Pipeline(bundle, device="cpu")
    seen = []
    real = pipe._labels_on_canvas
    pipe._labels_on_canvas = lambda probs, canvas, found: seen.append(canvas) or real(probs, canvas, found)
    ct = body_ct(shape=(5, 80, 90))  # 5 slices of 4 mm: z 100..116 mm
    result = pipe.run(ct)
    canvas = seen[0]
    z = canvas.origin[2] + canvas.spacing[2] * np.arange(canvas.array.shape[0])
    below, above, inside = z < 100.0 - 1e-6, z > 116.0 + 1e-6, (z >= 100.0) & (z <= 116.0)
    assert below.any() and above.any() and inside.any()
    body = canvas.array[inside].max(axis=0) > -500  # where the body lies in the canvas's slices
    first, last = canvas.array[np.flatnonzero(inside)[0]], canvas.array[np.flatnonzero(inside)[-1]]
    if beyond == "edge":
        assert np.array_equal(canvas.array[below], np.broadcast_to(first, canvas.array[below].shape))
        assert np.array_equal(canvas.array[above], np.broadcast_to(last, canvas.array[above].shape))
    else:
        assert (canvas.array[below][:, body] < -1000).all() and (canvas.array[above][:, body] < -1000).all()
    # what is labelled past the scan's ends never reaches the result, which stays on the scan's grid
    assert result.labels.array.shape == ct.array.shape and (result.labels.array > 0).any()
