"""Train (or fine-tune) the three networks on real anatomy: CTs painted in real bodies around KiTS
masks, plus real labelled CT scans, with one real scan kept out for validation (leave-one-out).

    # fold "ircadb": real s0009 in training, ircadb1_1 never seen (validated on afterwards)
    nohup python scripts/train_real.py --fold ircadb --out runs/real_ircadb \
        --finetune-from Resources/Models/kidney_tumor_seg.safetensors --budget-min 80 > runs/real_ircadb.log 2>&1 &

Folds (``--fold``): ``ircadb`` holds out ``real_ct/ircadb1_1`` (trains on ``totalseg_s0009``'s image
and label map), ``totalseg`` holds out ``totalseg_s0009`` (trains on ``ircadb1_1``'s image), ``none``
trains on both (a bundle whose real numbers can only be quoted from the two folds). The kidney-free
validation scans (``totalseg_s0002``, ``totalseg_s0003``, ``ircadb1_17``) are never trained on.

Held-out KiTS19 masks (every 7th from case_00003, the rule of every bundle) and held-out KiTS23
masks (every 7th) never enter training or validation: held-out phantoms are built around them.
Resume with the same command plus ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
BODIES_WITH_KIDNEYS = ("s0001", "s0004", "s0006")
KIDNEY_FREE_BODIES = ("s0000",)
REAL_FOLDS = {"ircadb": ["totalseg_s0009"], "totalseg": ["ircadb1_1"], "none": ["ircadb1_1", "totalseg_s0009"]}
DISPLACED_MM = (40.0, 150.0)  # --displaced: how far one kidney is moved caudally
DISPLACED_VAL = 2  # --displaced: validation cases with a displaced kidney (from the validation masks)
MISSING_VAL = 1  # --missing: validation cases with a kidney taken out


TUNING_POOL = REPO / "docs" / "evaluation" / "tuning_pool.json"


def changed_kidney_pairs(prefix: str, n: int, n_val: int, train_m: list, val_m: list, shared: list, masks: dict,
                         offset: int) -> list[tuple[str, str]]:
    """(body, mask id) pairs of extra painted cases with one kidney changed (moved or taken out):
    ``n`` training masks and ``n_val`` validation masks under ids of their own (``{prefix}N``,
    ``{prefix}valN``, added to ``masks``), so the other cases' ids and cache stay as they were."""
    pairs = []
    for i in range(n):
        masks[f"{prefix}{i}"] = masks[train_m[i % len(train_m)]]
        pairs.append((shared[(i + offset) % len(shared)], f"{prefix}{i}"))
    for i in range(n_val):  # validation sees them too, so a run is judged on them
        masks[f"{prefix}val{i}"] = masks[val_m[i % len(val_m)]]
        pairs.append((shared[(i + offset + 2) % len(shared)], f"{prefix}val{i}"))
    return pairs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fold", choices=sorted(REAL_FOLDS), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--cache", default=str(REPO / "runs" / "cache_real"))
    p.add_argument("--masks", type=int, default=60, help="KiTS masks painted into bodies for training")
    p.add_argument("--val-masks", type=int, default=8)
    p.add_argument("--negatives", type=int, default=6, help="painted kidney-free bodies")
    p.add_argument("--organ-bodies", type=int, default=0,
                   help="BTCV/AMOS organ maps completed with a TotalSegmentator skeleton, added as bodies")
    p.add_argument("--procedural", type=int, default=0,
                   help="procedural phantoms of the older generator (the demo's and the self-test's kind of CT)")
    p.add_argument("--real-repeats", type=int, default=8, help="times each real training scan is listed")
    p.add_argument("--reverse", action="store_true", help="prepare the training cases in reverse order")
    p.add_argument("--prepare-only", action="store_true",
                   help="build the cases into --cache and stop (--fold none prepares what every fold needs)")
    p.add_argument("--finetune-from")
    p.add_argument("--networks", default="z,xy,seg")
    p.add_argument("--budget-min", type=float, default=60.0)
    p.add_argument("--shares", default="0.2,0.25,0.55", help="budget shares of z, xy, segmenter")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--steps-per-epoch", type=int, default=40)
    p.add_argument("--batch", default="32,12,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prep-workers", type=int, default=0)
    p.add_argument("--thick-slices", type=float, default=0.3,
                   help="share of segmenter patches re-acquired with 2.5-6 mm slices (0: none)")
    p.add_argument("--random-fraction", type=float, default=0.2,
                   help="share of segmenter patches centred anywhere in the scan (the rest on kidney or tumour)")
    p.add_argument("--mirror-fraction", type=float, default=0.0,
                   help="share of segmenter patches centred on a kidney voxel mirrored across the body's middle: "
                        "the other kidney, or the empty fossa of a case with one kidney (--missing)")
    p.add_argument("--patience", type=int, default=3,
                   help="epochs without progress before the learning rate drops x 0.1 (the paper's 3); a fine-tune "
                   "that starts near its best ends after about three drops, so a longer run needs more")
    p.add_argument("--displaced", type=int, default=0,
                   help="extra painted cases with one kidney moved %g-%g mm caudally (a low or pelvic kidney)" % DISPLACED_MM)
    p.add_argument("--missing", type=int, default=0,
                   help="extra painted cases with one kidney taken out (a solitary kidney): the empty fossa as a negative")
    p.add_argument("--tumour-fraction", type=float, default=0.4,
                   help="share of segmenter patches centred on a tumour voxel")
    p.add_argument("--tumour-dice", choices=("batch", "sample"), default="batch",
                   help="the segmenter's tumour Dice over the batch, or per patch holding tumour")
    p.add_argument("--small-tumour-masks", type=int, default=0,
                   help="N more training masks from the tuning pool whose tumour is at most --small-tumour-ml, "
                        "never from its tuning set (docs/evaluation/tuning_pool.json)")
    p.add_argument("--small-tumour-ml", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from KidneyTumorSegLib.config import ModelConfig
    from KidneyTumorSegLib.labelled_scans import find_scans
    from KidneyTumorSegLib.phantoms.realbody import PaintConfig
    from KidneyTumorSegLib.training import NETWORKS
    from KidneyTumorSegLib.training.case_cache import load_cases
    from KidneyTumorSegLib.training.cli import ProgressBar, epoch_line, parse_networks, write_run_bundle
    from KidneyTumorSegLib.training.distributed import SINGLE
    from KidneyTumorSegLib.training.loop import Trainer, TrainOptions
    from KidneyTumorSegLib.training.real_sources import RealBodySource, RealScanSource
    from KidneyTumorSegLib.training.schedule import ScheduleConfig
    from KidneyTumorSegLib.training.sources import MultiSource
    from KidneyTumorSegLib.training.split import held_out_ids
    from KidneyTumorSegLib.training.transforms import AugmentConfig
    from KidneyTumorSegLib.training.tuning_pool import load_pool, small_tumour_masks

    t0 = time.time()
    data = Path(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar()
    rng = __import__("numpy").random.default_rng(args.seed)

    k19 = sorted(p.name for p in (data / "kits19").glob("case_*") if (p / "segmentation.nii.gz").exists())
    k23 = sorted(p.name for p in (data / "kits23").glob("case_*") if (p / "segmentation.nii.gz").exists())
    held = set(held_out_ids(k19)) | set(held_out_ids(k23))
    pool = [c for c in k19 + k23 if c not in held]
    order = list(rng.permutation(len(pool)))
    val_m = [pool[i] for i in order[: args.val_masks]]
    train_m = [pool[i] for i in order[args.val_masks : args.val_masks + args.masks]]
    if args.small_tumour_masks:
        train_m += small_tumour_masks(args.small_tumour_masks, args.small_tumour_ml, set(train_m + val_m), rng,
                                      load_pool(TUNING_POOL))
    masks = {c: data / ("kits19" if c in k19 else "kits23") / c / "segmentation.nii.gz" for c in train_m + val_m}

    bodies = {b: data / "anatomy" / "totalsegmentator" / b / "labels.nii.gz" for b in BODIES_WITH_KIDNEYS + KIDNEY_FREE_BODIES}
    organ_maps = sorted((data / "anatomy" / "btcv").glob("label*.nii.gz")) + sorted((data / "anatomy" / "amos").glob("*.nii.gz"))
    for i, path in enumerate(organ_maps[: args.organ_bodies]):
        donor = bodies[BODIES_WITH_KIDNEYS[i % len(BODIES_WITH_KIDNEYS)]]
        bodies[f"{path.parent.name}_{path.name.split('.')[0]}"] = (path.parent.name, path, donor)
    # the same (body, mask) pairs in every fold, so folds share their painted cases (and the cache)
    shared = [b for b in bodies if b not in KIDNEY_FREE_BODIES]
    train_pairs = [(shared[i % len(shared)], m) for i, m in enumerate(train_m)]
    train_pairs += [(b, None) for b in shared]  # the bodies' own kidneys too
    real_train = REAL_FOLDS[args.fold]
    if "totalseg_s0009" in real_train:  # its label map is one more body with kidneys, in this fold only
        bodies["totalseg_s0009"] = data / "real_ct" / "totalseg_s0009" / "labels.nii.gz"
        train_pairs += [("totalseg_s0009", m) for m in train_m[:: max(1, len(train_m) // 8)]]
        train_pairs += [("totalseg_s0009", None)]
    train_pairs += [(KIDNEY_FREE_BODIES[i % len(KIDNEY_FREE_BODIES)], f"neg{i}") for i in range(args.negatives)]
    train_pairs.sort(key=lambda p: list(bodies).index(p[0]))  # one body's cases together: its cache stays warm
    if args.reverse:  # a second fold run at the same time builds the shared cases from the other end
        train_pairs.reverse()
    val_pairs = [(shared[(i + 1) % len(shared)], m) for i, m in enumerate(val_m)]
    # kidney-free bodies have no kidneys to replace: the "mask" slot only varies the seed
    for i in range(args.negatives):
        masks[f"neg{i}"] = masks[train_m[i % len(train_m)]]
    painted = RealBodySource(bodies, train_pairs + val_pairs, masks, seed=args.seed)
    scans = find_scans(data / "real_ct", names=set(real_train))
    real = RealScanSource(scans, args.real_repeats)
    sources = [painted, real]
    changed_ids, changed_val = [], []
    for prefix, n, n_val, paint, offset in (("disp", args.displaced, DISPLACED_VAL, {"displaced_kidney_mm": DISPLACED_MM}, 3),
                                            ("miss", args.missing, MISSING_VAL, {"missing_kidney": True}, 4)):
        if not n:
            continue
        pairs = changed_kidney_pairs(prefix, n, n_val, train_m, val_m, shared, masks, offset)
        changed = RealBodySource(bodies, pairs, masks, seed=args.seed, paint_config=PaintConfig(**paint))
        sources.append(changed)
        val = [c for c in changed.case_ids() if f"@{prefix}val" in c]
        changed_val += val
        changed_ids += [c for c in changed.case_ids() if c not in val]
    procedural = []
    if args.procedural:
        from KidneyTumorSegLib.training.sources import PhantomSource

        old = PhantomSource({}, args.procedural, seed=args.seed, slice_thickness_mm=(0.8, 5.0),
                            acquisition_pixel_mm=(0.6, 4.0))
        sources.append(old)
        procedural = old.case_ids()
    source = MultiSource(sources)
    val_ids = {f"{b}@{m}" for b, m in val_pairs}
    split = {"train": [c for c in painted.case_ids() if c not in val_ids] + real.case_ids() + procedural + changed_ids,
             "val": sorted(val_ids) + changed_val, "excluded": sorted(held), "held_out_real": sorted(
                 {"ircadb1_1", "totalseg_s0009"} - set(real_train)) + ["totalseg_s0002", "totalseg_s0003", "ircadb1_17"]}
    split_path = out / "split.json"
    if args.resume and split_path.exists():
        split = json.loads(split_path.read_text())
    split_path.write_text(json.dumps(split, indent=1))

    cfg = ModelConfig.bundled()
    init_states = None
    if args.finetune_from:
        from KidneyTumorSegLib.weights import load_bundle

        start = load_bundle(args.finetune_from)
        if any(start.config.network_shape(n) != cfg.network_shape(n) for n in NETWORKS):
            raise SystemExit(f"{args.finetune_from} has another network shape than ModelConfig.bundled().")
        cfg = start.config  # keep its inference settings; they are re-chosen on validation later
        init_states = start.state_dicts
    shares = [float(v) for v in args.shares.split(",")]
    batch = [int(v) for v in args.batch.split(",")]
    opts = TrainOptions(
        networks=parse_networks(args.networks), epochs=1000, steps_per_epoch=args.steps_per_epoch,
        batch_size={"z_localiser": batch[0], "xy_localiser": batch[1], "segmenter": batch[2]},
        val_samples={"z_localiser": 192, "xy_localiser": 64, "segmenter": 40},
        seed=args.seed, time_budget_s=args.budget_min * 60.0,
        budget_shares={"z_localiser": shares[0], "xy_localiser": shares[1], "segmenter": shares[2]},
        schedule=ScheduleConfig(optimizer="adamw", lr=args.lr, weight_decay=3e-5, patience=args.patience),
        tumour_fraction=args.tumour_fraction, random_fraction=args.random_fraction, tumour_dice=args.tumour_dice,
        mirror_fraction=args.mirror_fraction,
        augment=AugmentConfig(thick_slice_probability=args.thick_slices),
    )
    train_cases, errs = load_cases(source, split["train"], cfg, args.cache or None, args.prep_workers, bar)
    val_cases, verrs = load_cases(source, split["val"], cfg, args.cache or None, args.prep_workers, bar)
    errs.update(verrs)
    bar.line(f"{len(train_cases)} training, {len(val_cases)} validation cases ready in {time.time() - t0:.0f} s"
             + (f"; skipped {errs}" if errs else ""))
    if args.prepare_only:
        return 1 if errs else 0
    (out / "run.json").write_text(json.dumps({"config": cfg.to_dict(), "options": opts.to_dict(),
                                              "source": source.describe(), "argv": sys.argv[1:]}, indent=1))

    def on_epoch(row):
        bar.line(epoch_line(row))

    trainer = Trainer(cfg, train_cases, val_cases, opts, out, torch.device("cpu"), resume=args.resume,
                      progress=bar, on_epoch=on_epoch, init_states=init_states)
    results = trainer.run()
    ns = argparse.Namespace(config=f"bundled (scripts/train_real.py --fold {args.fold})", init_weights=args.finetune_from)
    path = write_run_bundle(out, cfg, results, trainer, split, source, ns, torch.device("cpu"), SINGLE, t0, True)
    bar.line(f"bundle written to {path} after {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
