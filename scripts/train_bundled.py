"""Train the bundled weights: the exact recipe, on a GPU lease or on this CPU.

The shipped weights (``--config bundled``) were trained in two places (exact commands in the
bundle header's ``provenance.runs`` and the model card)::

    # on the CPU, with SimpleITK and the KiTS19 masks: the label maps on the working grids
    python scripts/train_bundled.py --write-pack .devdata/pack --procedural 40
    # on the GPU machine (carry .devdata): phantoms built there, then the three networks
    python scripts/train_bundled.py --pack .devdata/pack --cache '' --device cuda --workers 14 \
        --prep-workers 15 --variants 2 --train-cases 1000 --batch 64,32,16 --steps-per-epoch 250 \
        --wall-min 8.6 --evaluate 0 --half

A CPU-only run of the smaller shape (``--config compact``), in the background::

    nohup python scripts/train_bundled.py --config compact --out runs/bundled --budget-min 50 > runs/bundled.log 2>&1 &

Durations: preparing the phantoms (about 2 s of CPU per case, on ``--prep-workers`` processes,
reused from ``--cache`` on a re-run), then the training budget (``--budget-min``, or what
``--wall-min`` leaves; 10 % z-localiser, 15 % xy-localiser, 75 % segmenter, with unspent time rolling
over), then the held-out evaluation (``--evaluate`` cases, full pipeline, needs ``--masks``). Resume
after an interruption with the same command plus ``--resume``; ``--finetune-from BUNDLE`` starts the
trained networks from a bundle's weights instead.

What it does:
- Held-out test cases (``--holdout``, default 30): every 7th KiTS19 mask (case_00003, case_00010,
  ...). They are written to ``OUT/heldout.json``, never trained or validated on, and the final
  evaluation builds phantoms around them (``kidney-tumor-seg evaluate``, full pipeline).
- Of the other masks, ``--val-cases`` go to validation and up to ``--train-cases`` to training,
  plus ``--procedural`` procedural anatomies (single kidneys, other shapes and positions).
- Every phantom is generated directly on the working grids (the whole scan at the localiser
  spacing, the kidneys' neighbourhood at the segmenter spacing), never at 512 x 512 x N.
- Network shapes: ``ModelConfig.bundled()`` (``--config bundled``, needs a GPU to train) or
  ``ModelConfig.compact()`` (``--config compact``, trainable on this 2-core CPU within an hour).

- Training phantoms simulate slice thicknesses (``--slice-thickness``, 0.8-5 mm) and pixel sizes
  (``--acquisition-pixel``, 0.6-4 mm: a fine-pixel scan averaged onto a coarse grid is quieter)
  whatever the working grid.

Why these choices (what makes the segmenter reach high Dice within the budget):
- on the CPU, throughput first: one torch thread (on a shared CPU, OpenMP threads spinning at
  barriers make 3D convolutions several times slower than one thread) and batch 2 (PyTorch's fast
  oneDNN 3D convolution path needs a batch > 1 for small channel counts); the compact shape's 2.5 mm
  grid, 48 x 48 x 32 patches, width 12 and two convolutions per MRB;
- AdamW (lr 2e-3) rather than the paper's SGD: in a budget of minutes it converges faster;
  the plateau schedule (x 0.1 after 3 stale epochs) still applies, on short epochs;
- tumour-rich sampling (half the patches centred on tumour), Dice + BCE, best-validation weights;
- robustness on real CT: rotation +/- 30 degrees, left-right flips, +/- 10 % zoom, contrast,
  brightness, gamma and noise jitter, and phantoms with randomised phases, textures and scanners.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_MASKS = REPO.parent / "shared" / "data" / "kits19"


def heldout_ids(all_ids: list[str], n: int) -> list[str]:
    """The first ``n`` of the held-out masks (``split.held_out_ids``: every 7th from case_00003)."""
    from KidneyTumorSegLib.training.split import held_out_ids

    return held_out_ids(all_ids)[:n]


def make_split(pool: list[str], args) -> dict:
    """Case-level split of the non-held-out masks plus the procedural anatomies."""
    from KidneyTumorSegLib.training.split import split_ids

    train_m, val_m = split_ids(pool, val_fraction=args.val_cases / max(1, len(pool)), seed=args.seed)
    train_m = train_m[: args.train_cases]
    procedural = [f"proc_{i:04d}" for i in range(args.procedural)]
    n_proc_val = max(1, args.procedural // 8) if args.procedural else 0
    return {"train": train_m + procedural[n_proc_val:], "val": val_m + procedural[:n_proc_val], "seed": args.seed}


def write_pack(args) -> int:
    """Labels of every non-held-out mask and procedural anatomy on the working grids (needs
    SimpleITK and the masks); the held-out masks are left out of the pack altogether."""
    from KidneyTumorSegLib.training.cli import model_config
    from KidneyTumorSegLib.training.label_pack import write_label_pack
    from KidneyTumorSegLib.training.sources import PhantomSource

    masks = PhantomSource.masks_in(args.masks)
    ids = sorted(masks)
    heldout = heldout_ids(ids, args.holdout)
    pool = [c for c in ids if c not in heldout]
    source = PhantomSource({c: masks[c] for c in pool}, args.procedural, seed=args.seed)
    errors = write_label_pack(source, model_config(args.config), args.write_pack, args.prep_workers)
    folder = Path(args.write_pack)
    (folder / "heldout.json").write_text(json.dumps({"heldout": heldout, "rule": "every 7th case from case_00003"}))
    print(f"label pack of {len(pool)} masks and {args.procedural} procedural anatomies in {folder}"
          + (f"; failed: {errors}" if errors else ""))
    return 1 if errors else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "runs" / "bundled"))
    p.add_argument("--masks", default=str(DEFAULT_MASKS), help="KiTS19 label folder")
    p.add_argument("--pack", help="train from this label pack (see --write-pack) instead of --masks")
    p.add_argument("--write-pack", help="write the label pack to this folder and stop")
    p.add_argument("--cache", default=str(REPO / "runs" / "cache"), help="phantom cache folder ('' for none)")
    p.add_argument("--budget-min", type=float, default=50.0, help="training time for all three networks")
    p.add_argument("--wall-min", type=float, help="instead of --budget-min: finish everything within this time")
    p.add_argument("--holdout", type=int, default=30)
    p.add_argument("--val-cases", type=int, default=12)
    p.add_argument("--train-cases", type=int, default=100)
    p.add_argument("--procedural", type=int, default=16)
    p.add_argument("--variants", type=int, default=1, help="phantoms per training label map")
    p.add_argument("--slice-thickness", default="0.8,5.0", help="simulated slice thickness range, mm ('' follows the grid)")
    p.add_argument("--acquisition-pixel", default="0.6,4.0",
                   help="simulated pixel size range, mm: finer pixels mean less noise on the working grid ('' for none)")
    p.add_argument("--finetune-from", help="start the trained networks from this bundle's weights")
    p.add_argument("--config", choices=("bundled", "compact"), default="bundled")
    p.add_argument("--networks", default="z,xy,seg")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw")
    p.add_argument("--lr", type=float)
    p.add_argument("--steps-per-epoch", type=int, default=60)
    p.add_argument("--tumour-fraction", type=float, default=0.5, help="share of segmenter patches centred on tumour")
    p.add_argument("--batch", default="32,12,2", help="batch sizes of the z-localiser, xy-localiser, segmenter")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--workers", type=int, default=0, help="data-loader processes (keep a GPU busy)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prep-workers", type=int, default=2)
    p.add_argument("--evaluate", type=int, default=6, help="held-out cases to evaluate at the end (0: none)")
    p.add_argument("--eval-grid-mm", default="1.5,1.5,3.0", help="voxel spacing x,y,z of the held-out phantom CTs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--half", action="store_true", help="store the bundle in half precision")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    if args.write_pack:
        return write_pack(args)

    import torch

    torch.set_num_threads(args.threads)
    from KidneyTumorSegLib.device import resolve_device
    from KidneyTumorSegLib.errors import InputError
    from KidneyTumorSegLib.training import NETWORKS
    from KidneyTumorSegLib.training.case_cache import load_cases
    from KidneyTumorSegLib.training.cli import (
        ProgressBar,
        epoch_line,
        model_config,
        parse_networks,
        write_run_bundle,
    )
    from KidneyTumorSegLib.training.label_pack import PackedPhantomSource
    from KidneyTumorSegLib.training.loop import Trainer, TrainOptions
    from KidneyTumorSegLib.training.schedule import ScheduleConfig
    from KidneyTumorSegLib.training.sources import MultiSource, PhantomSource
    from KidneyTumorSegLib.training.split import with_variants

    t0 = time.time()
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar()
    thickness = tuple(float(v) for v in args.slice_thickness.split(",")) if args.slice_thickness else None
    pixel = tuple(float(v) for v in args.acquisition_pixel.split(",")) if args.acquisition_pixel else None
    cfg = model_config(args.config)
    if args.resume and (out / "run.json").exists():
        from KidneyTumorSegLib.config import ModelConfig

        cfg = ModelConfig.from_dict(json.loads((out / "run.json").read_text())["config"])
    masks = {}
    if args.pack:
        packed = PackedPhantomSource(args.pack, args.seed, max(1, args.variants), slice_thickness_mm=thickness,
                                     acquisition_pixel_mm=pixel, localiser_only="seg" not in args.networks)
        try:
            packed.check_grids(cfg)
        except InputError as err:  # one sentence, no traceback: the pack was made for another --config
            raise SystemExit(f"{err} Write a new one with --write-pack and the same --config.") from None
        heldout = json.loads((Path(args.pack) / "heldout.json").read_text())["heldout"]
        pool = [c for c in packed.base_ids() if c.startswith("case_")]
        args.procedural = sum(1 for c in packed.base_ids() if c.startswith("proc_"))
        source = MultiSource([packed])
    else:
        masks = PhantomSource.masks_in(args.masks)
        heldout = heldout_ids(sorted(masks), args.holdout)
        pool = [c for c in sorted(masks) if c not in heldout]
    split_path = out / "split.json"
    if args.resume and split_path.exists():
        split = json.loads(split_path.read_text())
    else:
        split = make_split(pool, args)
        split["train"] = with_variants(split["train"], args.variants)
        split["excluded"] = heldout
    (out / "heldout.json").write_text(json.dumps({"heldout": heldout, "rule": "every 7th case from case_00003"}))
    from KidneyTumorSegLib.training.split import split_group

    used = {split_group(c) for c in split["train"] + split["val"]}
    assert not used & set(heldout), "held-out cases leaked into the split"
    if not args.pack:
        source = MultiSource([PhantomSource({c: masks[c] for c in sorted(used) if c in masks}, args.procedural,
                                            seed=args.seed, variants=max(1, args.variants), slice_thickness_mm=thickness,
                                            acquisition_pixel_mm=pixel, localiser_only="seg" not in args.networks)])

    init_states = None  # checked before minutes of phantom preparation
    if args.finetune_from:
        from KidneyTumorSegLib.weights import load_bundle

        start = load_bundle(args.finetune_from)
        if any(start.config.network_shape(part) != cfg.network_shape(part) for part in NETWORKS):
            raise SystemExit(f"{args.finetune_from} has another network configuration than --config {args.config}.")
        init_states = start.state_dicts

    lr = args.lr if args.lr is not None else (2e-3 if args.optimizer == "adamw" else 0.01)
    batch = [int(v) for v in args.batch.split(",")]
    opts = TrainOptions(
        networks=parse_networks(args.networks),
        epochs=1000,
        steps_per_epoch=args.steps_per_epoch,
        batch_size={"z_localiser": batch[0], "xy_localiser": batch[1], "segmenter": batch[2]},
        val_samples={"z_localiser": 256, "xy_localiser": 96, "segmenter": 96} if device.type == "cuda"
        else {"z_localiser": 192, "xy_localiser": 64, "segmenter": 48},
        workers=args.workers,
        tumour_fraction=args.tumour_fraction,
        seed=args.seed,
        time_budget_s=args.budget_min * 60.0,
        budget_shares={"z_localiser": 0.10, "xy_localiser": 0.15, "segmenter": 0.75},
        schedule=ScheduleConfig(optimizer=args.optimizer, lr=lr, weight_decay=3e-5),
    )
    split_path.write_text(json.dumps(split, indent=1))
    cache = args.cache or None
    train_cases, errs = load_cases(source, split["train"], cfg, cache, args.prep_workers, bar)
    val_cases, verrs = load_cases(source, split["val"], cfg, cache, args.prep_workers, bar)
    errs.update(verrs)
    bar.line(f"{len(train_cases)} training, {len(val_cases)} validation cases ready in {time.time() - t0:.0f} s"
             + (f"; skipped {sorted(errs)}" if errs else ""))
    if args.wall_min is not None:  # what is left, less a reserve for validation, checkpoints and the bundle
        opts.time_budget_s = max(60.0, args.wall_min * 60.0 - (time.time() - t0) - 45.0)
        bar.line(f"training budget {opts.time_budget_s:.0f} s")
    (out / "run.json").write_text(json.dumps({"config": cfg.to_dict(), "options": opts.to_dict(),
                                              "source": source.describe(), "argv": sys.argv[1:]}, indent=1))

    def on_epoch(row):
        bar.line(epoch_line(row))

    trainer = Trainer(cfg, train_cases, val_cases, opts, out, device, resume=args.resume,
                      progress=bar, on_epoch=on_epoch, init_states=init_states)
    results = trainer.run()
    ns = argparse.Namespace(config=f"{args.config} (scripts/train_bundled.py)", init_weights=None)
    from KidneyTumorSegLib.training.distributed import SINGLE

    bundle_path = write_run_bundle(out, cfg, results, trainer, split, source, ns, device, SINGLE, t0, args.half)
    bar.line(f"bundle written to {bundle_path} after {(time.time() - t0) / 60:.1f} min")
    for name in NETWORKS:
        if name in trainer.summaries:
            bar.line(f"{name}: {json.dumps(trainer.summaries[name])}")

    if args.evaluate > 0 and masks:
        from KidneyTumorSegLib.training.evaluate import evaluate, heldout_cases

        chosen = {c: masks[c] for c in heldout[: args.evaluate]}
        grid = tuple(float(v) for v in args.eval_grid_mm.split(","))
        report = evaluate(bundle_path, heldout_cases(chosen, 0, args.seed, grid), "cpu", bar, len(chosen))
        report["grid_mm"] = list(grid)
        report["heldout_rule"] = "every 7th case from case_00003"
        (out / "heldout_report.json").write_text(json.dumps(report, indent=1))
        bar.line(f"held-out kidney Dice {report['kidney_dice']}, tumour Dice {report['tumour_dice']}")
    bar.line(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
