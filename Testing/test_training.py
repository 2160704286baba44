"""Training: data, transforms, sampling, losses, schedule, checkpoints, the loop, DDP, the CLI.

Everything runs on the tiny configuration and a few procedural phantoms, on the CPU, in seconds.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.config import ModelConfig
from KidneyTumorSegLib.training import losses, transforms
from KidneyTumorSegLib.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from KidneyTumorSegLib.training.metrics import (
    dice,
    false_kidney,
    false_tumour,
    plot_curves,
    read_csv,
    segmentation_dice,
    tumours_found,
    tumours_found_by_size,
    write_csv,
)
from KidneyTumorSegLib.training.sampling import PatchSampler, ZSliceSampler, body_middle_x_mm
from KidneyTumorSegLib.training.schedule import PlateauSchedule, ScheduleConfig
from KidneyTumorSegLib.training.split import split_ids
from KidneyTumorSegLib.training.transforms import AugmentConfig, SpatialParams
from KidneyTumorSegLib.training.working_grids import CachedCase, CaseArrays


# --- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One thread: on a CPU shared with other jobs, OpenMP threads spinning at barriers make
    small 3D convolutions several times slower than a single thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blob_case(case_id="c0", shape=(40, 60, 60), tumour=True) -> CachedCase:
    """A box-shaped 'kidney' with a tumour corner, image intensities tied to the labels."""
    lab = np.zeros(shape, np.uint8)
    lab[10:30, 20:40, 15:35] = 1
    if tumour:
        lab[20:28, 30:38, 25:33] = 2
    img = (0.2 + 0.3 * (lab == 1) + 0.5 * (lab == 2)).astype(np.float16)
    arrays = CaseArrays(img, lab, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    return CachedCase(case_id, arrays, arrays)


# --- metrics and losses ----------------------------------------------------------------------------
def test_dice_known_values():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0  # nothing to find, nothing found
    a[0, :2] = True
    assert dice(a, b) == 0.0
    b[0, 1:3] = True  # 1 shared voxel, 2 + 2 voxels
    assert dice(a, b) == pytest.approx(0.5)
    labels = np.array([0, 1, 2, 2, 1])
    truth = np.array([0, 1, 1, 2, 0])
    scores = segmentation_dice(labels, truth)
    assert scores["kidney"] == pytest.approx(2 * 3 / (4 + 3))  # labels>0 vs truth>0
    assert scores["tumour"] == pytest.approx(2 * 1 / (2 + 1))


def test_false_kidney_counts_only_regions_that_touch_no_true_kidney():
    truth = np.zeros((6, 10, 10), np.uint8)
    truth[1:4, 1:4, 1:4] = 1  # one kidney, with a tumour in it
    truth[2, 2, 2] = 2
    labels = np.zeros_like(truth)
    labels[1:4, 1:3, 1:4] = 1  # the kidney, partly: never false kidney
    labels[3, 2, 2] = 2
    assert false_kidney(labels, truth, 0.5) == {"components": 0, "ml": 0.0}
    labels[0:2, 6:9, 6:9] = 2  # a region in the empty fossa, labelled tumour: still false kidney
    labels[5, 0, 9] = 1
    assert false_kidney(labels, truth, 0.5) == {"components": 2, "ml": 9.5}
    assert false_kidney(np.zeros_like(truth), truth, 0.5) == {"components": 0, "ml": 0.0}


def test_false_tumour_counts_only_components_that_miss_the_true_tumour():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:8, 2:8, 2:8] = 1
    truth[3:5, 3:5, 3:5] = 2  # 8 voxels of true tumour
    labels = truth.copy()
    labels[3:5, 3:6, 3:5] = 2  # found, and one slab too far: still one true component
    assert false_tumour(labels, truth, 0.5) == {"components": 0, "ml": 0.0}
    labels[6:8, 6:8, 6] = 2  # 4 voxels elsewhere in the kidney
    labels[0, 0, 0:3] = 2  # 3 voxels outside it
    assert false_tumour(labels, truth, 0.5) == {"components": 2, "ml": 3.5}
    assert false_tumour(np.zeros_like(truth), truth, 0.5) == {"components": 0, "ml": 0.0}


def test_tumours_are_counted_per_lesion_and_per_size():
    truth = np.zeros((30, 30, 30), bool)
    truth[0:20, 0:20, 0:20] = True  # a large lesion: 8000 voxels, 64 mL at 8 uL
    truth[25:28, 25:28, 25:28] = True  # a fragment: 27 voxels, 0.2 mL, under the 0.5 mL of a lesion
    truth[22:30, 0:8, 22:30] = True  # a medium one: 512 voxels, 4.1 mL
    pred = np.zeros_like(truth)
    pred[0:20, 0:20, 0:10] = True  # half the large one
    pred[22:30, 0:8, 22:24] = True  # a quarter of the medium one: under 30 %, missed
    lesions = tumours_found(pred, truth, voxel_ml=0.008)
    assert [d["ml"] for d in lesions] == [64.0, 4.1]  # the 0.2 mL fragment is no lesion
    assert [d["found"] for d in lesions] == [True, False]
    assert [d["coverage"] for d in lesions] == [0.5, 0.25]
    assert tumours_found_by_size(lesions) == {"<= 10 mL": "0 of 1", "10-40 mL": "0 of 0", "> 40 mL": "1 of 1"}
    assert tumours_found(pred, np.zeros_like(truth), 0.008) == []


def test_losses_known_values():
    target = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])
    zero = torch.zeros_like(target)
    assert float(losses.bce_loss(zero, target)) == pytest.approx(math.log(2.0), rel=1e-6)
    # sigmoid(0) = 0.5 everywhere: Dice = 2 * 1 / (2 + 2) = 0.5
    assert float(losses.soft_dice_loss(zero, target)) == pytest.approx(0.5, abs=1e-4)
    perfect = (target * 2 - 1) * 50.0
    assert float(losses.bce_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-4)


def test_sample_tumour_dice_weighs_a_small_tumour_like_a_large_one():
    # patch 0: a 2-voxel tumour found exactly; patch 1: a 30-voxel tumour missed entirely
    target = torch.zeros(2, 40)
    target[0, :2] = 1.0
    target[1, 10:40] = 1.0
    logits = (target * 2 - 1) * 50.0
    logits[1] = -50.0
    # batch Dice: 2*2 / (2 + 32), the large miss dominates; sample Dice: mean of 1 and 0
    assert float(losses.soft_dice_loss(logits[:, None], target[:, None])) == pytest.approx(1 - 4 / 34, abs=1e-4)
    assert float(losses.sample_dice_loss(logits, target)) == pytest.approx(0.5, abs=1e-4)
    # a patch without tumour adds no 0/0 term: with an empty third patch the value stays 0.5
    three = torch.cat([target, torch.zeros(1, 40)]), torch.cat([logits, torch.full((1, 40), 3.0)])
    assert float(losses.sample_dice_loss(three[1], three[0])) == pytest.approx(0.5, abs=1e-4)
    # no tumour anywhere: batch Dice, which still punishes spurious probability
    empty = torch.zeros(2, 40)
    assert float(losses.sample_dice_loss(torch.full((2, 40), 3.0), empty)) == pytest.approx(1.0, abs=1e-4)
    assert float(losses.sample_dice_loss(torch.full((2, 40), -50.0), empty)) < 0.01
    volumes = torch.zeros(2, 4, 5, 6)  # patches as the segmenter's tumour channel holds them
    assert float(losses.sample_dice_loss(torch.full((2, 4, 5, 6), 3.0), volumes)) == pytest.approx(1.0, abs=1e-4)


def test_loss_for_picks_the_tumour_dice():
    seg = torch.zeros(2, 2, 4, 4, 4)
    seg[0, :, :2] = 1.0  # patch 0: region and a big tumour; patch 1: region only, a small tumour
    seg[1, 0, :1] = 1.0
    seg[1, 1, 0, 0, 0] = 1.0
    logits = (seg * 2 - 1) * 50.0
    logits[1, 1] = -50.0  # the small tumour missed
    bce = float(losses.bce_loss(logits, seg))  # the same in both; only the Dice term differs
    batch = float(losses.loss_for("segmenter")(logits, seg)) - bce
    sample = float(losses.loss_for("segmenter", "sample")(logits, seg)) - bce
    assert batch == pytest.approx(0.5 * (1 - 64 / 65), abs=1e-3)  # region Dice 1, tumour 64/65
    assert sample == pytest.approx(0.5 * 0.5, abs=1e-3)  # region Dice 1, tumour mean(1, 0)
    assert losses.loss_for("xy_localiser", "sample") is losses.bce_dice_loss
    with pytest.raises(ValueError):
        losses.loss_for("segmenter", "lesion")


# --- transforms ------------------------------------------------------------------------------------
def test_flip_twice_is_identity_and_flip_mirrors():
    rng = np.random.default_rng(0)
    img = rng.random((6, 9, 11)).astype(np.float32)
    lab = (img > 0.5).astype(np.uint8)
    flip = SpatialParams(0.0, (False, False, True), 1.0)
    once_img, once_lab = transforms.apply_spatial(img, lab, flip)
    np.testing.assert_allclose(once_img, img[:, :, ::-1], atol=1e-6)
    np.testing.assert_array_equal(once_lab, lab[:, :, ::-1])
    back_img, back_lab = transforms.apply_spatial(once_img, once_lab, flip)
    np.testing.assert_allclose(back_img, img, atol=1e-6)
    np.testing.assert_array_equal(back_lab, lab)


@pytest.mark.parametrize("angle", [30.0, -30.0, 17.0])
def test_rotation_moves_image_and_labels_together_to_the_right_place(angle):
    shape = (5, 61, 61)
    img = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.uint8)
    c = 30
    img[:, c + 14 : c + 19, c - 2 : c + 3] = 1.0  # a marker 16 voxels "below" the centre in y
    lab[:, c + 14 : c + 19, c - 2 : c + 3] = 2
    out_img, out_lab = transforms.apply_spatial(img, lab, SpatialParams(angle, (False, False, False), 1.0))
    # Output voxel o reads source c + R(o - c): the marker appears where R(o - c) = (16, 0),
    # i.e. at o - c = R^-1 (16, 0) = (16 cos a, -16 sin a) in (y, x).
    a = math.radians(angle)
    oy, ox = c + 16 * math.cos(a), c - 16 * math.sin(a)
    iy, ix = int(round(oy)), int(round(ox))
    assert out_lab[2, iy, ix] == 2 and out_img[2, iy, ix] > 0.9
    assert out_lab[2, c, c] == 0  # the centre stays empty: the marker moved, it was not smeared
    # Labels still cover the image's marker (and only it): bright voxels are labelled.
    bright = out_img > 0.75
    assert bright.sum() > 50
    assert (out_lab[bright] == 2).mean() > 0.95
    assert (out_img[out_lab == 2] > 0.25).mean() > 0.95


def test_intensity_jitter_changes_values_but_not_shape():
    rng = np.random.default_rng(1)
    img = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    aug = AugmentConfig(probability=1.0)
    out = transforms.intensity_jitter(img, rng, aug)
    assert out.shape == img.shape and out.dtype == np.float32
    assert not np.allclose(out, img)
    assert transforms.intensity_jitter(img, rng, AugmentConfig(enabled=False)) is img


# --- sampling --------------------------------------------------------------------------------------
def test_patches_hit_tumours_at_the_intended_rate():
    cases = [blob_case("a"), blob_case("b", tumour=False)]
    sampler = PatchSampler(cases, (16, 16, 16), AugmentConfig(enabled=False), tumour_fraction=0.5, random_fraction=0.1)
    rng = np.random.default_rng(3)
    samples = [sampler.sample(rng, augment=False) for _ in range(600)]
    with_tumour_case = [s for s in samples if s.case_id == "a"]
    kinds = [s.kind for s in with_tumour_case]
    rate = kinds.count("tumour") / len(kinds)
    assert abs(rate - 0.5) < 0.08
    assert abs(kinds.count("random") / len(kinds) - 0.1) < 0.05
    # A case without tumour never yields a 'tumour' patch; its share goes to kidney patches.
    assert all(s.kind != "tumour" for s in samples if s.case_id == "b")
    for s in samples:
        assert s.image.shape == (1, 16, 16, 16) and s.target.shape == (2, 16, 16, 16)
        if s.kind == "tumour":  # un-jittered: the centre voxel is tumour, in both target channels
            assert s.target[1, 8, 8, 8] == 1 and s.target[0, 8, 8, 8] == 1
        if s.kind == "kidney":
            assert s.target[0, 8, 8, 8] == 1
    # Targets are nested: tumour implies the kidney-with-tumour region.
    assert all((s.target[1] <= s.target[0]).all() for s in samples)


def test_patch_at_the_border_is_padded_with_air():
    case = blob_case()
    sampler = PatchSampler([case], (16, 16, 16), AugmentConfig(enabled=False), random_fraction=1.0)
    rng = np.random.default_rng(0)
    s = sampler.sample(rng, augment=False)
    assert s.image.shape == (1, 16, 16, 16)
    corner = PatchSampler([case], (40, 40, 40), AugmentConfig(enabled=False), random_fraction=1.0)
    big = corner.sample(np.random.default_rng(1), augment=False)
    assert (big.image == 0).any()  # reaches outside the 40x60x60 case: padded with 0 (air)


def solitary_kidney_case() -> CachedCase:
    """A body (x voxels 10-69 of 80, 2 mm: middle at x = 79 mm) with one kidney (x 50-59, world
    100-118 mm) and, where the other kidney would lie (world 40-58 mm), an organ that is not kidney.
    The segmenter grid is a crop starting at x = 30 mm, as training crops it to the kidneys."""
    img = np.zeros((40, 60, 80), np.float16)
    lab = np.zeros(img.shape, np.uint8)
    img[:, 5:55, 10:70] = 0.3  # body
    lab[10:30, 20:40, 50:60] = 1
    img[lab == 1] = 0.6
    img[10:30, 20:40, 20:30] = 0.8  # the organ in the empty fossa
    whole = CaseArrays(img, lab, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    crop = CaseArrays(img[..., 15:].copy(), lab[..., 15:].copy(), (2.0, 2.0, 2.0), (30.0, 0.0, 0.0))
    return CachedCase("solitary", whole, crop)


def test_body_middle_is_the_mean_x_of_the_body():
    assert body_middle_x_mm(solitary_kidney_case().localiser) == pytest.approx(79.0)


def test_mirror_patches_look_at_the_empty_fossa():
    case = solitary_kidney_case()
    sampler = PatchSampler([case], (8, 8, 8), AugmentConfig(enabled=False), tumour_fraction=0.0,
                           random_fraction=0.0, mirror_fraction=0.5)
    rng = np.random.default_rng(2)
    samples = [sampler.sample(rng, augment=False) for _ in range(200)]
    mirror = [s for s in samples if s.kind == "mirror"]
    kidney = [s for s in samples if s.kind == "kidney"]
    assert abs(len(mirror) / len(samples) - 0.5) < 0.1 and len(mirror) + len(kidney) == len(samples)
    for s in mirror:  # centred in the fossa's organ: no kidney there to learn
        assert s.image[0, 4, 4, 4] == pytest.approx(0.8, abs=1e-3) and s.target[0, 4, 4, 4] == 0
    for s in kidney:
        assert s.target[0, 4, 4, 4] == 1
    # Off by default: no patch is a mirror patch.
    plain = PatchSampler([case], (8, 8, 8), AugmentConfig(enabled=False), tumour_fraction=0.0, random_fraction=0.0)
    assert all(plain.sample(rng, augment=False).kind == "kidney" for _ in range(50))


def test_z_slices_are_balanced_and_correctly_labelled():
    sampler = ZSliceSampler([blob_case()], (64, 64), AugmentConfig(enabled=False), context=1)
    rng = np.random.default_rng(5)
    samples = [sampler.sample(rng, augment=True) for _ in range(300)]
    pos = [s for s in samples if s.kind == "positive"]
    assert abs(len(pos) / len(samples) - 0.5) < 0.08  # 20 of 40 slices hold kidney, drawn 1:1
    assert all(float(s.target) == 1.0 for s in pos)
    assert all(float(s.target) == 0.0 for s in samples if s.kind == "negative")
    assert samples[0].image.shape == (3, 64, 64)


def test_split_keeps_variants_of_one_case_together():
    ids = [f"case_{i:05d}" for i in range(10)]
    ids += [f"{c}~v1" for c in ids]
    train, val = split_ids(ids, 0.2, seed=0)
    base = {c.split("~v")[0] for c in val}
    assert len(base) == 2 and not base & {c.split("~v")[0] for c in train}
    assert sorted(train + val) == sorted(ids)


# --- schedule --------------------------------------------------------------------------------------
def test_schedule_reduces_after_three_stale_epochs_and_stops_below_min_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01, momentum=0.99, nesterov=True)
    sched = PlateauSchedule(opt, ScheduleConfig())
    assert sched.step(1.0) is True
    lrs = []
    for _ in range(3):
        sched.step(1.0)
        lrs.append(sched.lr)
    assert lrs[:2] == [0.01, 0.01] and lrs[2] == pytest.approx(0.001)
    epochs = 4
    while not sched.should_stop:
        sched.step(1.0)
        epochs += 1
        assert epochs < 100
    # 0.01 -> 1e-3 -> 1e-4 -> 1e-5 -> 1e-6 (still trained) -> 1e-7 < 1e-6: five reductions, 15 stale epochs.
    assert sched.reductions == 5 and epochs == 16
    assert sched.lr == pytest.approx(1e-7) and "fell below" in sched.stop_reason


def test_schedule_stops_after_30_epochs_without_progress_and_restores_its_state():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    cfg = ScheduleConfig(patience=100)  # no reductions: only the 30-epoch rule can stop it
    sched = PlateauSchedule(opt, cfg)
    sched.step(1.0)
    sched.step(0.5)  # an improvement resets the count
    n = 0
    while not sched.should_stop:
        sched.step(0.6)
        n += 1
    assert n == 30 and "no progress" in sched.stop_reason
    other = PlateauSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5), cfg)
    other.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert other.state_dict() == sched.state_dict() and other.lr == 0.01


# --- checkpoints -----------------------------------------------------------------------------------
def test_checkpoint_round_trip_is_exact_and_never_a_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7, "pair": (1, "a"),
             "history": [{"loss": 0.5, "dice": None}], "flag": True}
    path = save_checkpoint(tmp_path / "ck.safetensors", state)
    assert path.read_bytes()[:1] != b"\x80"  # not a pickle
    back = load_checkpoint(path)
    assert back["epoch"] == 7 and back["pair"] == (1, "a") and back["history"] == state["history"]
    assert set(back["optimizer"]["state"]) == {0, 1}  # int keys survive
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    opt2 = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "bad.safetensors", {"obj": object()})
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_metrics_csv_and_curves(tmp_path):
    from PIL import Image

    rows = [
        {"network": "segmenter", "epoch": e, "lr": 0.01, "train_loss": 1.0 / e, "val_loss": 1.2 / e,
         "val_dice_kidney": 0.5 + 0.1 * e, "val_dice_tumour": None, "val_accuracy": None, "seconds": e}
        for e in (1, 2, 3)
    ]
    write_csv(tmp_path / "m.csv", rows)
    back = read_csv(tmp_path / "m.csv")
    assert [float(r["val_loss"]) for r in back] == pytest.approx([1.2, 0.6, 0.4])
    assert back[0]["val_dice_tumour"] == ""
    plot_curves(tmp_path / "c.png", rows + [dict(rows[0], network="z_localiser")])
    with Image.open(tmp_path / "c.png") as im:
        assert im.size == (2 * 420, 260)
        assert len(im.convert("RGB").getcolors(1 << 16)) > 3  # curves were drawn


# --- the loop ----------------------------------------------------------------------------------------
def test_loss_decreases_on_a_fixed_tiny_batch():
    from KidneyTumorSegLib.training.loop import train_step
    from KidneyTumorSegLib.weights import build_networks

    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    model = build_networks(cfg)["segmenter"]
    sampler = PatchSampler([blob_case()], cfg.segmenter.patch_size_xyz[::-1], AugmentConfig(enabled=False), 0.5, 0.0)
    rng = np.random.default_rng(0)
    batch = [sampler.sample(rng, augment=False) for _ in range(2)]
    x = torch.from_numpy(np.stack([s.image for s in batch]))
    y = torch.from_numpy(np.stack([s.target for s in batch]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    first = None
    for _ in range(12):
        loss = train_step(model, x, y, losses.bce_dice_loss, opt, scaler, torch.device("cpu"), amp=False, grad_clip=12)
        first = loss if first is None else first
    assert loss < 0.65 * first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from KidneyTumorSegLib.training.distributed import cleanup, setup, shard, wrap_model
    from KidneyTumorSegLib.training.loop import train_step
    from KidneyTumorSegLib.weights import build_networks

    ctx = setup(rank, world, "gloo")
    torch.manual_seed(123 + rank)  # different initial weights: DDP must broadcast rank 0's
    model = build_networks(ModelConfig.tiny())["xy_localiser"]
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    ddp = wrap_model(model, ctx, torch.device("cpu"))
    g = torch.Generator().manual_seed(rank)  # each rank its own data
    x = torch.rand(2, 1, 32, 32, generator=g)
    y = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    train_step(ddp, x, y, losses.bce_dice_loss, opt, scaler, torch.device("cpu"), amp=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(after) for _ in range(world)]
    dist.all_gather(gathered, after)
    starts = [torch.zeros_like(start) for _ in range(world)]
    dist.all_gather(starts, start)
    if rank == 0:
        result = {
            "identical_after": bool(torch.equal(gathered[0], gathered[1])),
            "moved": float((gathered[0] - starts[0]).abs().max()),
            "initial_differed": not torch.equal(starts[0], starts[1]),
            "shards": [shard(list(range(7)), type(ctx)(r, world)) for r in range(world)],
        }
        Path(out_dir, "ddp.json").write_text(json.dumps(result))
    cleanup(ctx)


def test_data_parallel_two_gloo_ranks_hold_identical_weights_after_a_step(tmp_path):
    import torch.multiprocessing as mp

    try:
        mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    except mp.ProcessExitedException as err:
        # Rank 0 writes ddp.json only after both ranks took the step and joined the all_gather, so a
        # rank killed by a signal after it exists died in gloo's teardown (a rare abort of its
        # threads at process exit, seen once on the 2-core CI machine), not in what is tested here.
        if err.signal_name is None or not (tmp_path / "ddp.json").exists():
            raise
    result = json.loads((tmp_path / "ddp.json").read_text())
    assert result["initial_differed"]  # so identity afterwards is DDP's doing
    assert result["identical_after"]
    assert result["moved"] > 0
    assert result["shards"] == [[0, 2, 4, 6], [1, 3, 5]]


# --- the CLI end to end ------------------------------------------------------------------------------
def _train(out: Path, cache: Path, *extra: str) -> int:
    from KidneyTumorSegLib.cli import main

    return main([
        "train", "--out", str(out), "--procedural", "3", "--config", "tiny", "--steps-per-epoch", "2",
        "--batch-size", "z=4,xy=2,seg=2", "--val-samples", "4", "--device", "cpu", "--seed", "1",
        "--cache", str(cache), "--progress", "none", "--val-fraction", "0.34", "--threads", "1", *extra,
    ])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One straight 2-epoch run, and a 1-epoch run resumed to 2 epochs."""
    root = tmp_path_factory.mktemp("train")
    cache = root / "cache"
    assert _train(root / "straight", cache, "--epochs", "2") == 0
    assert _train(root / "resumed", cache, "--epochs", "1") == 0
    first = load_checkpoint(root / "resumed" / "checkpoints" / "segmenter.last.safetensors")
    assert first["epoch"] == 1
    assert _train(root / "resumed", cache, "--epochs", "2", "--resume") == 0
    return root


def test_train_writes_the_run_folder(runs):
    out = runs / "straight"
    for name in ("split.json", "run.json", "metrics.csv", "curves.png", "bundle.safetensors"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["val"]) == 1
    assert not set(split["train"]) & set(split["val"])
    rows = read_csv(out / "metrics.csv")
    assert [(r["network"], r["epoch"]) for r in rows] == [
        (n, str(e)) for n in ("z_localiser", "xy_localiser", "segmenter") for e in (1, 2)
    ]
    seg = [r for r in rows if r["network"] == "segmenter"]
    assert all(0.0 <= float(r["val_dice_kidney"]) <= 1.0 for r in seg)


def test_resumed_run_continues_at_the_right_epoch_with_identical_state(runs):
    for net in ("z_localiser", "xy_localiser", "segmenter"):
        a = load_checkpoint(runs / "straight" / "checkpoints" / f"{net}.last.safetensors")
        b = load_checkpoint(runs / "resumed" / "checkpoints" / f"{net}.last.safetensors")
        assert a["epoch"] == b["epoch"] == 2
        assert [r["epoch"] for r in b["history"]] == [1, 2]
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        for idx, st in a["optimizer"]["state"].items():
            for key, value in st.items():
                torch.testing.assert_close(b["optimizer"]["state"][idx][key], value, rtol=1e-5, atol=1e-6)
        for key, value in a["model"].items():
            torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
        assert a["schedule"] == b["schedule"]


def test_init_weights_may_differ_in_inference_settings_but_not_in_shape(tmp_path, capsys):
    """A bundle whose thresholds and mirroring were chosen after training still supplies its
    networks; one whose segmenter has another width is refused in one sentence."""
    from KidneyTumorSegLib.weights import load_bundle, save_bundle, seeded_bundle

    tuned = ModelConfig.tiny()
    tuned.segmenter.tumour_threshold, tuned.segmenter.mirror_x, tuned.segmenter.min_tumour_ml = 0.6, True, 0.5
    source = seeded_bundle(tuned, seed=4)
    save_bundle(tmp_path / "tuned.safetensors", tuned, source.state_dicts)
    assert _train(tmp_path / "run", tmp_path / "cache", "--epochs", "1", "--networks", "z",
                  "--init-weights", str(tmp_path / "tuned.safetensors")) == 0
    taken = load_bundle(tmp_path / "run" / "bundle.safetensors").state_dicts["segmenter"]
    for key, value in source.state_dicts["segmenter"].items():
        torch.testing.assert_close(taken[key], value)

    wider = ModelConfig.tiny()
    wider.segmenter.width += 2
    other = seeded_bundle(wider, seed=4)
    save_bundle(tmp_path / "wider.safetensors", wider, other.state_dicts)
    code = _train(tmp_path / "run2", tmp_path / "cache", "--epochs", "1", "--networks", "z",
                  "--init-weights", str(tmp_path / "wider.safetensors"))
    assert code != 0
    assert "segmenter has another shape" in capsys.readouterr().err


def test_bundle_loads_into_the_pipeline_and_records_its_provenance(runs):
    from KidneyTumorSegLib.pipeline import Pipeline
    from KidneyTumorSegLib.training.evaluate import procedural_phantom
    from KidneyTumorSegLib.weights import load_bundle

    bundle = load_bundle(runs / "resumed" / "bundle.safetensors")
    prov = bundle.header["provenance"]
    split = json.loads((runs / "resumed" / "split.json").read_text())
    assert prov["split"]["train"] == split["train"] and prov["split"]["val"] == split["val"]
    assert prov["epochs"] == {"z_localiser": 2, "xy_localiser": 2, "segmenter": 2}
    assert set(bundle.header["metrics"]["validation"]) == {"z_localiser", "xy_localiser", "segmenter"}
    assert bundle.config == ModelConfig.tiny()
    ct, truth = procedural_phantom(0, seed=5, grid_mm=(4.0, 4.0, 6.0))
    result = Pipeline.from_weights(bundle, device="cpu").run(ct)
    assert result.labels.same_grid(ct)
    assert set(np.unique(result.labels.array)) <= {0, 1, 2}


def test_evaluate_cli_reports_dice_per_case(runs, tmp_path):
    from KidneyTumorSegLib.cli import main

    report_path = tmp_path / "report.json"
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = main(["evaluate", "--weights", str(runs / "straight" / "bundle.safetensors"), "--procedural", "1",
                     "--grid-mm", "4,4,6", "--device", "cpu", "--threads", "1", "--out", str(report_path),
                     "--progress", "none"])
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
    report = json.loads(report_path.read_text())
    assert [c["case"] for c in report["cases"]] == ["eval_proc_0000"]
    case = report["cases"][0]
    assert 0.0 <= case["kidney_dice"] <= 1.0 and 0.0 <= case["tumour_dice"] <= 1.0
    assert report["kidney_dice"]["mean"] == pytest.approx(case["kidney_dice"])
    assert report["kidney_dice"]["median"] == pytest.approx(case["kidney_dice"])
    assert report["false_tumour"]["components"] == case["false_tumour_components"] >= 0
    assert report["false_tumour"]["ml_total"] == pytest.approx(case["false_tumour_ml"])
    lesions = case["tumours_found"]
    assert all(d["found"] == (d["coverage"] >= 0.3) for d in lesions)
    counted = sum(int(v.split(" of ")[1]) for v in report["tumours_found"].values())
    assert counted == len(lesions)
    # the weights stay identifiable after the file is moved: the checksum of the tensors measured
    from KidneyTumorSegLib.weights import load_bundle

    measured = load_bundle(runs / "straight" / "bundle.safetensors")
    assert report["weights_sha256"] == measured.header["sha256"] and len(report["weights_sha256"]) == 64
    assert report["weights_name"] == measured.header.get("provenance", {}).get("name")


def test_evaluate_threads_must_be_a_positive_whole_number(tmp_path, capsys):
    from KidneyTumorSegLib.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--procedural", "1", "--threads", "0", "--out", str(tmp_path / "r.json")])
    assert stop.value.code == 2
    assert "--threads: must be a whole number of at least 1" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("sweep, says", [
    ("segmenter.mirror_x=true,false", "leave the segmenter's outputs unchanged"),
    ("segmenter.context_scale=0,1.5", "leave the segmenter's outputs unchanged"),
    ("segmenter.width=8,16", "shapes the networks"),
    ("segmenter.tumour_threshold", "takes PART.KEY=V1,V2"),
    ("segmenter.tumour_threshold=low", "takes a number"),
    ("segmenter.tumour_threshold=nan", "takes a finite number"),
])
def test_a_sweep_of_a_setting_that_cannot_be_swept_is_one_clear_sentence(tmp_path, capsys, sweep, says):
    from KidneyTumorSegLib.cli import main

    code = main(["evaluate", "--procedural", "1", "--sweep", sweep, "--out", str(tmp_path / "r.json"),
                 "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()


def test_sweep_values_combine_into_every_set():
    from KidneyTumorSegLib.errors import InputError
    from KidneyTumorSegLib.training.cli import _sweep_sets

    with pytest.raises(InputError, match="names segmenter.tumour_threshold twice"):
        _sweep_sets(["segmenter.tumour_threshold=0.4,0.5", "segmenter.tumour_threshold=0.6"])

    assert _sweep_sets([]) is None
    assert _sweep_sets(["segmenter.tumour_threshold=0.4,0.6", "segmenter.min_tumour_ml=0.5,2"]) == [
        ["segmenter.tumour_threshold=0.4", "segmenter.min_tumour_ml=0.5"],
        ["segmenter.tumour_threshold=0.4", "segmenter.min_tumour_ml=2"],
        ["segmenter.tumour_threshold=0.6", "segmenter.min_tumour_ml=0.5"],
        ["segmenter.tumour_threshold=0.6", "segmenter.min_tumour_ml=2"],
    ]


def test_train_without_data_is_a_clear_error(tmp_path, capsys):
    from KidneyTumorSegLib.cli import main

    code = main(["train", "--out", str(tmp_path / "x"), "--config", "tiny", "--progress", "none"])
    assert code == 2
    assert "No training data was given" in capsys.readouterr().err


@pytest.mark.parametrize("lr,kept", [(200.0, True), (1e-3, None)])
def test_fine_tuning_never_ends_worse_than_it_started_on_validation(tmp_path, one_torch_thread, lr, kept):
    """Fine-tuning validates the starting weights first; when no epoch beats them on the same
    samples, the result is the starting weights, not the best of a worse run."""
    from KidneyTumorSegLib.training.loop import Trainer, TrainOptions
    from KidneyTumorSegLib.weights import seeded_bundle

    cfg = ModelConfig.tiny()
    start = seeded_bundle(cfg, seed=3).state_dicts
    cases = [blob_case("a"), blob_case("b"), blob_case("c", tumour=False)]
    opts = TrainOptions(networks=("xy_localiser",), epochs=2, steps_per_epoch=3, batch_size={"xy_localiser": 2},
                        val_samples={"xy_localiser": 6}, schedule=ScheduleConfig(optimizer="sgd", lr=lr))
    result = Trainer(cfg, cases[:2], cases[2:], opts, tmp_path, init_states=start).run()["xy_localiser"]
    summary = result["summary"]
    assert summary["start_val_loss"] is not None
    if kept:  # a learning rate of 200 wrecks the network: its best epoch is worse than the start
        assert summary["best_val_loss"] > summary["start_val_loss"]
        assert summary["kept_starting_weights"]
        for k, v in start["xy_localiser"].items():
            assert torch.equal(result["state_dict"][k].to(v.dtype), v)
    else:
        assert summary["kept_starting_weights"] == (summary["best_val_loss"] >= summary["start_val_loss"])


def test_segmenter_trains_with_sample_tumour_dice_on_tumour_free_batches(tmp_path, one_torch_thread):
    """The sample tumour Dice through a real training run whose validation holds no tumour at all
    (the fallback path): the loss is the segmenter's sample variant and every loss stays finite."""
    from KidneyTumorSegLib.training.loop import Trainer, TrainOptions

    cfg = ModelConfig.tiny()
    opts = TrainOptions(networks=("segmenter",), epochs=1, steps_per_epoch=2, batch_size={"segmenter": 2},
                        val_samples={"segmenter": 2}, tumour_dice="sample", random_fraction=0.0)
    trainer = Trainer(cfg, [blob_case("a"), blob_case("b", tumour=False)], [blob_case("c", tumour=False)], opts, tmp_path)
    feed = trainer._feed("segmenter", 0, trainer._build("segmenter"))
    assert feed.loss_fn is losses.bce_sample_tumour_dice_loss
    summary = trainer.run()["segmenter"]["summary"]
    assert summary["epochs"] == 1 and math.isfinite(summary["best_val_loss"])
