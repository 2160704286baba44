"""The bundled weights on phantoms they never saw: the engine's real job, end to end.

These are the only tests whose pass marks depend on trained weights. The phantoms come from
procedural label maps with small fixed seeds (7, 4242); the training recipe (scripts/train_bundled.py)
used KiTS19 masks and procedural cases seeded by hashing (seed, case, variant), so these anatomies
and intensities were never seen, and the right answer (the label map) is known exactly.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from KidneyTumorSegLib.config import ModelConfig
from KidneyTumorSegLib.weights import bundled_weights_path, load_bundle

try:
    from .mrml_fixtures import mrml_env  # noqa: F401
except ImportError:  # run as a plain script folder
    from mrml_fixtures import mrml_env  # noqa: F401

pytestmark = pytest.mark.skipif(bundled_weights_path() is None, reason="no bundled weights")

KIDNEY_DICE_MIN = 0.92
TUMOUR_DICE_MIN = 0.8  # per case, for tumours of 1 mL or more; the model card gives the held-out means


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


KIDNEY_FREE_VALIDATION = {"totalseg_s0002", "totalseg_s0003", "ircadb1_17"}  # never trained on, by any bundle


def test_bundle_header_tells_the_truth_about_its_data():
    bundle = load_bundle(None)
    prov = bundle.header["provenance"]
    text = str(prov).lower()
    assert "real_bodies" in text or "phantom" in text or "synthetic" in text
    shape = ModelConfig.bundled().segmenter
    assert bundle.config.segmenter.patch_size_xyz == shape.patch_size_xyz
    assert bundle.config.segmenter.spacing_mm == shape.spacing_mm
    # The held-out masks (every 7th KiTS19 case from case_00003) never reached training or validation.
    split = prov["split"]
    heldout = [f"case_{i:05d}" for i in range(3, 210, 7)]
    assert set(heldout) <= set(split["excluded"])
    seen = {c.split("~")[0].split("@")[-1] for c in split["train"] + split["val"]}
    assert not seen & set(heldout) and not set(split["train"]) & set(split["val"])
    # The real scans it trained on are named, and none of the kidney-free validation scans is among them.
    used = {c.split("~")[0].split("@")[0] for c in split["train"] + split["val"]}
    assert set(prov.get("real_scans_seen", [])) == used & {"ircadb1_1", "totalseg_s0009"}
    assert not used & KIDNEY_FREE_VALIDATION


def test_bundle_carries_the_settings_its_rules_adopted():
    """The card's post-processing is the header's: v1.6 keeps one region per side (its rule,
    docs/evaluation/empty_fossa/one_per_side_rule.json) and leaves the weak-region check off (the
    first rule stopped it); v1.5's end slices and v1.4's gated second look stay."""
    from KidneyTumorSegLib.postprocess import PostprocessConfig

    config = load_bundle(None).config
    post = PostprocessConfig.from_model(config)
    assert post.one_per_side and post.weak_confidence == 0.0
    seg = config.segmenter
    assert (seg.beyond_scan, seg.context_fusion, seg.context_gate_ml) == ("edge", "split", 300.0)
    assert seg.min_rim_fat == 0.0  # the fat check, off: it lost held-out pelvic kidneys (fat_rim/choice_rule.json)


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 4.0), (0.8, 0.8, 5.0)], ids=["2x2x4mm", "0.8x0.8x5mm"])
def test_thick_slice_scans_are_segmented(spacing):
    """Thick slices were the old weights' weakness (kidney Dice 0.47 at 2 x 2 x 4 mm); the training
    phantoms now simulate slice thicknesses of 0.8-5 mm."""
    from KidneyTumorSegLib.phantoms import make_phantom, procedural_labels
    from KidneyTumorSegLib.pipeline import Pipeline

    fov_mm = (320.0, 320.0, 240.0)
    shape = tuple(int(round(f / s)) for f, s in zip(fov_mm[::-1], spacing[::-1]))
    truth = procedural_labels(4242, shape_zyx=shape, spacing_xyz=spacing, n_kidneys=2)
    ct, _ = make_phantom(truth, 4242)
    labels = Pipeline.from_weights(None, device="cpu").run(ct).labels.array
    assert dice(labels > 0, truth.array > 0) >= KIDNEY_DICE_MIN
    assert (truth.array == 2).sum() * truth.voxel_volume_ml >= 1.0
    assert dice(labels == 2, truth.array == 2) >= TUMOUR_DICE_MIN


def test_demo_segments_its_phantom(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "KidneyTumorSegLib", "demo", "--out", str(tmp_path / "demo"), "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    found = dict(re.findall(r"Dice against the phantom's truth, (\w+): ([0-9.]+)", r.stdout))
    assert float(found["kidney"]) >= KIDNEY_DICE_MIN
    for name in ("demo.seg.nrrd", "demo_labels.nii.gz", "demo_report.json", "demo.png", "demo_ct.nii.gz"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert "Right kidney" in r.stdout and "Left kidney" in r.stdout


def test_segment_volume_node_on_a_phantom_in_real_mrml(mrml_env):
    """What the module's self-test does inside Slicer, here on slicer-core's MRML."""
    from KidneyTumorSegLib.mrml import export_structures, segment_volume_node, volume_to_node
    from KidneyTumorSegLib.phantoms import make_phantom, procedural_labels
    from KidneyTumorSegLib.terminology import STRUCTURES

    # The evaluated regime (1.5 x 1.5 x 3 mm, as the model card's table).
    truth = procedural_labels(4242, shape_zyx=(80, 256, 256), spacing_xyz=(1.5, 1.5, 3.0), n_kidneys=2)
    ct, _ = make_phantom(truth, 4242)
    node = volume_to_node(ct.with_array(np.round(ct.array).astype(np.int16)), name="Phantom CT")
    seg = segment_volume_node(node, device="cpu")
    masks = export_structures(seg, node, keys_only_ours=True)
    assert {"kidney_right", "kidney_left"} <= set(masks)
    for key in masks:
        segment = seg.GetSegmentation().GetSegment(seg.GetSegmentation().GetSegmentIdBySegmentName(STRUCTURES[key].name))
        assert segment is not None
    whole = np.zeros(truth.array.shape, bool)
    tumour = np.zeros(truth.array.shape, bool)
    for key, mask in masks.items():
        whole |= mask
        if key.startswith("tumour"):
            tumour |= mask
    assert dice(whole, truth.array > 0) >= KIDNEY_DICE_MIN
    if (truth.array == 2).sum() * truth.voxel_volume_ml >= 1.0:
        assert dice(tumour, truth.array == 2) >= TUMOUR_DICE_MIN
    # Each side's kidney lies on the patient's side it is named for (LPS +x = left).
    for side, sign in (("right", -1), ("left", 1)):
        centre = np.argwhere(masks[f"kidney_{side}"]).mean(0)[::-1]
        x = ct.index_to_physical(centre)[0]
        mid = ct.index_to_physical((np.asarray(ct.size_xyz) - 1) / 2.0)[0]
        assert np.sign(x - mid) == sign


@pytest.fixture(scope="module")
def fine_pixel_result(kits19_dir):
    """A held-out anatomy (never trained or validated on) at 0.8 x 0.8 x 3 mm, and the bundle's labels."""
    from KidneyTumorSegLib.pipeline import Pipeline
    from KidneyTumorSegLib.training.evaluate import mask_phantom

    ct, truth = mask_phantom(kits19_dir / "case_00199" / "segmentation.nii.gz", "case_00199", 0, (0.8, 0.8, 3.0))
    return Pipeline.from_weights(None, device="cpu").run(ct).labels.array, truth.array


def test_fine_pixel_scan_of_a_held_out_anatomy_keeps_both_kidneys(fine_pixel_result):
    """0.8 mm pixels: the localisers' 4 mm input is averaged and smooth. Before the localisers were
    fine-tuned on acquisition-aware phantom noise, this held-out anatomy lost both kidneys."""
    labels, truth = fine_pixel_result
    assert dice(labels > 0, truth > 0) >= KIDNEY_DICE_MIN


@pytest.mark.xfail(strict=True, reason="v1.2 to v1.6 over-segment this 152 mL tumour (209 mL, Dice 0.781; v1.1 0.747, "
                                       "v1.0 0.812): a known regression on the older generator's phantoms, in the model card")
def test_fine_pixel_scan_of_a_held_out_anatomy_gets_its_tumour(fine_pixel_result):
    labels, truth = fine_pixel_result
    assert dice(labels == 2, truth == 2) >= TUMOUR_DICE_MIN


def test_a_settings_sweep_segments_each_case_once_and_matches_separate_runs(monkeypatch):
    """``evaluate(..., settings=...)`` reuses the segmenter's outputs across the settings it compares:
    the segmenter runs once per set of kidney boxes, and each setting's result is exactly that of a
    run with a bundle carrying it. A higher tumour threshold labels less tumour here."""
    from KidneyTumorSegLib.config import with_settings
    from KidneyTumorSegLib.phantoms import make_phantom, procedural_labels
    from KidneyTumorSegLib.pipeline import Pipeline
    from KidneyTumorSegLib.training.evaluate import evaluate
    from KidneyTumorSegLib.weights import Bundle

    truth = procedural_labels(4242, shape_zyx=(60, 160, 160), spacing_xyz=(2.0, 2.0, 4.0), n_kidneys=2)
    ct, _ = make_phantom(truth, 4242)
    calls = []
    real = Pipeline._segment_windows

    def counted(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(Pipeline, "_segment_windows", counted)
    bundle = load_bundle(None)
    sets = [["segmenter.tumour_threshold=0.2"], ["segmenter.tumour_threshold=0.95", "segmenter.min_tumour_ml=2"]]
    swept = evaluate(bundle, [("proc", ct, truth)], "cpu", settings=sets)
    once = len(calls)
    assert once >= 1
    rows = [s["cases"][0] for s in swept["sweep"]]
    assert rows[0]["kidney_dice"] >= KIDNEY_DICE_MIN
    assert rows[1]["predicted_tumour_ml"] < rows[0]["predicted_tumour_ml"]
    for items, row in zip(sets, rows):
        alone = Bundle(with_settings(bundle.config, items), bundle.state_dicts, bundle.header)
        single = evaluate(alone, [("proc", ct, truth)], "cpu")["cases"][0]
        assert {k: single[k] for k in ("kidney_dice", "tumour_dice", "predicted_tumour_ml", "false_tumour_ml")} == \
               {k: row[k] for k in ("kidney_dice", "tumour_dice", "predicted_tumour_ml", "false_tumour_ml")}
    assert once < len(calls) - once  # the two separate runs segmented more than the sweep of both did
    # a setting that changes the segmenter's outputs cannot be swept
    with pytest.raises(ValueError, match="leave the segmenter's outputs unchanged"):
        evaluate(bundle, [("proc", ct, truth)], "cpu", settings=[["segmenter.mirror_x=false"]])
