"""Label packs (training on a machine without SimpleITK or the masks), simulated slice thickness,
the bundled configuration, and merging networks of several runs into one bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.config import ModelConfig
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.phantoms import PhantomConfig, make_phantom
from KidneyTumorSegLib.phantoms.scanner import draw_scanner
from KidneyTumorSegLib.training.label_pack import PackedPhantomSource, write_label_pack
from KidneyTumorSegLib.training.sources import PhantomSource
from KidneyTumorSegLib.volume import Volume

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig.tiny()
THICK = (1.0, 5.0)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pack")
    source = PhantomSource(procedural=2, seed=3, slice_thickness_mm=THICK)
    assert write_label_pack(source, TINY, folder) == {}
    return source, folder


def _same_case(a, b):
    for part in ("localiser", "segmenter"):
        x, y = getattr(a, part), getattr(b, part)
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_array_equal(x.image, y.image)
        assert x.spacing == y.spacing and np.allclose(x.origin, y.origin)


def test_a_packed_case_is_the_case_the_original_source_builds(pack):
    source, folder = pack
    meta = json.loads((folder / "pack.json").read_text())
    assert meta["cases"] == ["proc_0000", "proc_0001"]
    packed = PackedPhantomSource(folder, seed=3, variants=2, slice_thickness_mm=THICK)
    assert packed.case_ids() == ["proc_0000", "proc_0000~v1", "proc_0001", "proc_0001~v1"]
    original = source.build("proc_0001", TINY)
    assert (original.segmenter.labels == 2).any(), "the procedural case should hold a tumour"
    _same_case(original, packed.build("proc_0001", TINY))
    variant = packed.build("proc_0001~v1", TINY)  # another phantom of the same anatomy
    np.testing.assert_array_equal(variant.segmenter.labels, original.segmenter.labels)
    assert not np.array_equal(variant.segmenter.image, original.segmenter.image)


def test_a_pack_trains_where_simpleitk_cannot_be_imported(pack, tmp_path):
    _, folder = pack
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "SimpleITK.py").write_text("raise ImportError('SimpleITK is not installed here')\n")
    code = (
        "import sys\n"
        "try:\n    import SimpleITK\nexcept ImportError:\n    print('no SimpleITK')\n"
        "from KidneyTumorSegLib.config import ModelConfig\n"
        "from KidneyTumorSegLib.training.label_pack import PackedPhantomSource\n"
        f"case = PackedPhantomSource({str(folder)!r}, seed=3).build('proc_0000', ModelConfig.tiny())\n"
        "print(case.segmenter.labels.max(), case.localiser.image.dtype)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), str(REPO)]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["no", "SimpleITK", "2", "float16"]


def test_a_pack_made_for_other_grids_or_no_pack_at_all_is_refused(pack, tmp_path):
    _, folder = pack
    packed = PackedPhantomSource(folder, seed=3)
    with pytest.raises(InputError, match="other working grids"):
        packed.build("proc_0000", ModelConfig.compact())
    with pytest.raises(InputError, match="no case"):
        packed.build("case_00042", TINY)
    with pytest.raises(InputError, match="not a label pack"):
        PackedPhantomSource(tmp_path)


def test_the_training_script_refuses_a_pack_for_other_grids_in_one_sentence(pack, tmp_path):
    _, folder = pack  # made for the tiny grids; the script trains --config compact
    cmd = [sys.executable, str(REPO / "scripts" / "train_bundled.py"), "--pack", str(folder), "--config", "compact",
           "--out", str(tmp_path / "run"), "--cache", ""]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "other working grids" in done.stderr and "--write-pack" in done.stderr
    assert "Traceback" not in done.stderr


def test_slice_thickness_range_overrides_the_grid():
    rng = np.random.default_rng(0)
    follow = [draw_scanner(rng, 2.0).thickness_mm for _ in range(200)]
    assert max(follow) <= 3.0 + 1e-9  # at most 1.5 x the slice spacing
    drawn = [draw_scanner(rng, 2.0, thickness_range=(4.0, 6.0)).thickness_mm for _ in range(200)]
    assert 4.0 <= min(drawn) and max(drawn) <= 6.0


def test_thick_simulated_slices_blur_the_kidney_along_z_only_as_much_as_asked():
    lab = np.zeros((40, 48, 48), np.uint8)
    lab[12:28, 14:34, 14:34] = 1
    lab[18:24, 20:28, 20:28] = 2
    labels = Volume(lab, (2.0, 2.0, 2.0))

    def z_edges(thickness):
        cfg = PhantomConfig(noise_sd_range=(0.0, 0.0), streak_prob=0.0, slice_thickness_mm=(thickness, thickness),
                            tissue_map=False, dtype="float32")
        ct = make_phantom(labels, 11, cfg)[0].array[:, 20:28, 20:28]
        return float(np.abs(np.diff(ct, axis=0)).max())

    thin, thick = z_edges(0.5), z_edges(6.0)
    assert thick < 0.6 * thin


def test_the_bundled_configuration_round_trips_and_sees_the_papers_field_of_view():
    cfg = ModelConfig.bundled()
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    seg = cfg.segmenter
    reach_mm = [n * s for n, s in zip(seg.patch_size_xyz, seg.spacing_mm)]
    assert reach_mm[0] >= 128 and reach_mm[1] >= 128 and reach_mm[2] >= 80
    assert cfg.localiser_grid == ModelConfig.compact().localiser_grid


def test_merge_takes_networks_from_other_files_and_records_where_they_came_from(tmp_path):
    from KidneyTumorSegLib.training.checkpoint import save_checkpoint
    from KidneyTumorSegLib.weights import load_bundle, save_bundle, seeded_bundle

    a, b, c = (seeded_bundle(TINY, seed) for seed in (0, 1, 2))
    save_bundle(tmp_path / "a.safetensors", a.config, a.state_dicts, provenance={"name": "run a"})
    save_bundle(tmp_path / "b.safetensors", b.config, b.state_dicts)
    save_checkpoint(tmp_path / "xy_localiser.best.safetensors", {"network": "xy_localiser", "model": c.state_dicts["xy_localiser"]})
    (tmp_path / "metrics.csv").write_text(
        "network,epoch,lr,train_loss,val_loss,val_dice_kidney,val_dice_tumour,val_accuracy,seconds\n"
        "xy_localiser,1,0.002,0.5,0.40,0.70,,,10\nxy_localiser,2,0.002,0.3,0.20,0.91,,,20\n"
        "xy_localiser,3,0.002,0.2,0.25,0.88,,,30\n"
    )
    out = tmp_path / "merged.safetensors"
    cmd = [sys.executable, str(REPO / "scripts" / "merge_bundle.py"), "--base", str(tmp_path / "a.safetensors"),
           "--take", f"segmenter={tmp_path / 'b.safetensors'}",
           "--take", f"xy_localiser={tmp_path / 'xy_localiser.best.safetensors'}",
           "--metrics", str(tmp_path / "metrics.csv"), "--set", "segmenter.mirror_x=true",
           "--set", "segmenter.tumour_threshold=0.4", "--out", str(out)]
    (tmp_path / "extra.json").write_text('{"runs": ["python scripts/train_real.py --fold x"], "name": "merged"}')
    cmd += ["--add-provenance", str(tmp_path / "extra.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    merged = load_bundle(out)
    assert merged.config.segmenter.mirror_x is True and merged.config.segmenter.tumour_threshold == 0.4
    assert merged.config.segmenter.width == TINY.segmenter.width
    assert merged.header["provenance"]["settings"] == {"segmenter.mirror_x": "true", "segmenter.tumour_threshold": "0.4"}
    for net, source in (("z_localiser", a), ("segmenter", b), ("xy_localiser", c)):
        for key, value in source.state_dicts[net].items():
            torch.testing.assert_close(merged.state_dicts[net][key], value.float() if value.is_floating_point() else value)
    prov = merged.header["provenance"]
    assert prov["name"] == "merged" and prov["runs"] == ["python scripts/train_real.py --fold x"]
    assert "b.safetensors" in prov["networks"]["segmenter"]
    assert "xy_localiser.best.safetensors" in prov["networks"]["xy_localiser"]
    xy = merged.header["metrics"]["validation"]["xy_localiser"]
    assert xy["best_epoch"] == 2 and xy["val_dice_kidney"] == pytest.approx(0.91)


@pytest.mark.parametrize("setting, says", [("segmenter.width=32", "shapes the networks"),
                                           ("segmenter.colour=red", "expected PART.KEY=VALUE"),
                                           ("segmenter.mirror_x=maybe", "true or false"),
                                           ("segmenter.context_fusion=median", "one of mean, max, split, widen"),
                                           ("segmenter.context_gate_ml=-5", "0 or more")])
def test_merge_refuses_settings_that_are_not_inference_settings(tmp_path, setting, says):
    from KidneyTumorSegLib.weights import save_bundle, seeded_bundle

    a = seeded_bundle(TINY, 0)
    save_bundle(tmp_path / "a.safetensors", a.config, a.state_dicts)
    out = tmp_path / "merged.safetensors"
    cmd = [sys.executable, str(REPO / "scripts" / "merge_bundle.py"), "--base", str(tmp_path / "a.safetensors"),
           "--set", setting, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_finer_simulated_pixels_give_quieter_phantoms_on_a_coarse_grid():
    """A 0.6 mm scan averaged onto a 6 mm grid is far less noisy than one drawn at 6 mm."""
    full = PhantomSource(procedural=1, seed=5)
    fine = PhantomSource(procedural=1, seed=5, acquisition_pixel_mm=(0.6, 0.6))
    assert fine.signature("proc_0000") != full.signature("proc_0000")  # the cache tells them apart

    def roughness(source):
        img = source.build("proc_0000", TINY).localiser.image.astype(np.float32)
        return float(np.median(np.abs(np.diff(img, axis=2))))

    assert roughness(fine) < 0.6 * roughness(full)


def test_blur_augmentation_smooths_in_plane_only():
    from KidneyTumorSegLib.training.transforms import AugmentConfig, intensity_jitter

    rng = np.random.default_rng(0)
    image = np.zeros((6, 32, 32), np.float32)
    image[:, :, ::2] = 1.0  # stripes along x
    image[::2] += 0.5  # and alternating slices
    plain = dict(intensity_scale=(1.0, 1.0), intensity_shift=0.0, gamma_range=(1.0, 1.0), noise_std=0.0, probability=1.0)
    sharp = intensity_jitter(image, rng, AugmentConfig(blur_probability=0.0, **plain))
    blurred = intensity_jitter(image, rng, AugmentConfig(blur_probability=1.0, blur_sigma=(1.0, 1.0), **plain))
    np.testing.assert_allclose(sharp, image)
    assert np.abs(np.diff(blurred, axis=2)).mean() < 0.2 * np.abs(np.diff(image, axis=2)).mean()
    np.testing.assert_allclose(np.diff(blurred, axis=0), np.diff(image, axis=0), atol=1e-5)  # z untouched


def test_trainer_starts_fine_tuning_from_the_given_weights(tmp_path):
    from KidneyTumorSegLib.training.loop import Trainer, TrainOptions
    from KidneyTumorSegLib.weights import seeded_bundle

    start = seeded_bundle(TINY, seed=9)
    from KidneyTumorSegLib.training.working_grids import CachedCase, CaseArrays

    arrays = CaseArrays(np.zeros((8, 8, 8), np.float16), np.zeros((8, 8, 8), np.uint8), (6.0, 6.0, 6.0), (0.0, 0.0, 0.0))
    cases = [CachedCase("c", arrays, arrays)]
    fresh = Trainer(TINY, cases, cases, TrainOptions(), tmp_path)._build("xy_localiser")
    tuned = Trainer(TINY, cases, cases, TrainOptions(), tmp_path, init_states=start.state_dicts)._build("xy_localiser")
    for key, value in start.state_dicts["xy_localiser"].items():
        torch.testing.assert_close(tuned.state_dict()[key], value)
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in start.state_dicts["xy_localiser"].items())
