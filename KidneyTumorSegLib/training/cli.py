"""The ``train`` and ``evaluate`` sub-commands of ``kidney-tumor-seg``.

    kidney-tumor-seg train --out RUN_DIR [--data KITS_DIR] [--kits-masks DIR [--cases SPEC]]
        [--procedural N] [--config paper|bundled|compact|tiny] [--networks z,xy,seg] [--epochs N]
        [--steps-per-epoch N] [--batch-size N|z=32,xy=16,seg=2] [--device auto|cpu|cuda]
        [--workers N] [--resume] [--seed S] [--time-budget-min M] [--cache DIR] ...
    kidney-tumor-seg evaluate [--weights BUNDLE] [--kits-masks DIR [--cases SPEC] | --procedural N]
        [--seed S] [--out report.json]

Data-parallel: ``torchrun --nproc_per_node=G -m KidneyTumorSegLib train ...`` (one process per GPU).
Each function returns an exit code; user errors raise ``KidneyTumorSegError`` (the main CLI prints
the sentence). Progress goes to stderr as a plain-text bar; epoch summaries as lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..cli import _positive_threads, _set_threads
from ..errors import InputError
from . import NETWORKS, SHORT_NAMES

CONFIGS = ("paper", "bundled", "compact", "tiny")


# --- small parsers ------------------------------------------------------------------------------
def parse_networks(text: str) -> tuple[str, ...]:
    names = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name = SHORT_NAMES.get(part, part)
        if name not in NETWORKS:
            raise InputError(f"The network '{part}' is unknown; choose among z, xy and seg.")
        names.append(name)
    return tuple(n for n in NETWORKS if n in names)


def parse_cases(spec: str | None) -> list[str] | None:
    """``case_00001,case_00007``, ranges ``0-159`` or ``case_00000-case_00009``, or ``@file`` (one a line)."""
    if not spec:
        return None
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise InputError(f"The case list {path} does not exist.")
        items = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    else:
        items = [p.strip() for p in spec.split(",") if p.strip()]
    out: list[str] = []
    for item in items:
        a, sep, b = item.partition("-")
        if sep and _num(a) is not None and _num(b) is not None:
            out.extend(f"case_{i:05d}" for i in range(_num(a), _num(b) + 1))
        elif _num(item) is not None:
            out.append(f"case_{_num(item):05d}")
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def _num(text: str):
    text = text.strip().removeprefix("case_")
    return int(text) if text.isdigit() else None


def parse_batch_sizes(text: str | None) -> dict[str, int]:
    from .loop import DEFAULT_BATCH

    sizes = dict(DEFAULT_BATCH)
    if not text:
        return sizes
    if text.strip().isdigit():
        return {n: int(text) for n in NETWORKS}
    for part in text.split(","):
        key, _, value = part.partition("=")
        name = SHORT_NAMES.get(key.strip(), key.strip())
        if name not in NETWORKS or not value.strip().isdigit():
            raise InputError(f"The batch size '{part}' is not of the form z=32,xy=16,seg=2.")
        sizes[name] = int(value)
    return sizes


def model_config(name: str):
    from ..config import ModelConfig

    return {
        "paper": ModelConfig.paper,
        "bundled": ModelConfig.bundled,
        "compact": ModelConfig.compact,
        "tiny": ModelConfig.tiny,
    }[name]()


def epoch_line(row: dict) -> str:
    """One line per finished epoch for the training scripts' logs."""
    bits = [f"{k} {row[k]:.3f}" for k in ("val_dice_kidney", "val_dice_tumour", "val_accuracy") if row.get(k) is not None]
    return (f"{row['network']} epoch {row['epoch']}: lr {row['lr']:.1e} train {row['train_loss']:.4f} "
            f"val {row['val_loss']:.4f} {' '.join(bits)} ({row['seconds']:.0f} s)")


class ProgressBar:
    """``[#####.....]  45% message`` on stderr, redrawn at most every ``interval`` seconds."""

    def __init__(self, stream=None, width: int = 30, interval: float = 0.5, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.width = width
        # Into a log file (no terminal), a bar line every 30 s instead of a redraw twice a second.
        isatty = getattr(self.stream, "isatty", None)
        self.interval = interval if (isatty is None or isatty()) else max(interval, 30.0)
        self.enabled = enabled
        self._last = 0.0
        self._len = 0

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < self.interval and fraction < 1.0):
            return
        self._last = now
        fraction = min(1.0, max(0.0, fraction))
        filled = int(round(fraction * self.width))
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}% {message}"[:150]
        self.stream.write("\r" + line.ljust(self._len))
        self.stream.flush()
        self._len = len(line)

    def line(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r" + text.ljust(self._len) + "\n")
            self.stream.flush()
            self._len = 0


# --- train ---------------------------------------------------------------------------------------
def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train the z-localiser, xy-localiser and MRB segmenter",
        description="Train the three networks (Qiao, Zhao & Liu) and write a weights bundle.",
    )
    p.add_argument("--out", required=True, help="run folder (split, metrics, curves, checkpoints, bundle)")
    data = p.add_argument_group("data")
    data.add_argument("--data", help="KiTS-layout folder with images (case_XXXXX/imaging.nii.gz + segmentation)")
    data.add_argument("--kits-masks", help="KiTS-layout folder of label maps: CT phantoms are built around them")
    data.add_argument("--cases", help="cases to use: case_00001,case_00007 | 0-159 | @list.txt")
    data.add_argument("--exclude-cases", help="cases never to use (a held-out test list), same forms")
    data.add_argument("--procedural", type=int, default=0, help="add N procedural phantoms")
    data.add_argument("--variants", type=int, default=1, help="phantoms per mask (different textures)")
    data.add_argument("--val-fraction", type=float, default=0.2, help="fraction of cases for validation")
    data.add_argument("--cache", help="folder caching the resampled cases as .npy (reused across runs)")
    data.add_argument("--prep-workers", type=int, default=0, help="processes preparing cases")
    t = p.add_argument_group("training")
    t.add_argument("--config", choices=CONFIGS, help="network shapes and grids (default: compact, or the "
                   "--finetune-from bundle's)")
    t.add_argument("--networks", default="z,xy,seg", help="which networks to train (z, xy, seg)")
    t.add_argument("--epochs", type=int, default=1000, help="maximum epochs per network")
    t.add_argument("--steps-per-epoch", type=int, default=250, help="training steps per epoch")
    t.add_argument("--batch-size", help="N for all networks, or z=32,xy=16,seg=2")
    t.add_argument("--val-samples", type=int, help="validation samples per network (default z 256, xy 128, seg 48)")
    t.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="the paper's SGD, or AdamW")
    t.add_argument("--lr", type=float, help="initial learning rate (default 0.01 SGD, 0.001 AdamW; "
                   "a tenth of that with --finetune-from)")
    t.add_argument("--momentum", type=float, default=0.99, help="SGD momentum (Nesterov)")
    t.add_argument("--no-augment", action="store_true", help="switch the augmentation off")
    t.add_argument("--tumour-fraction", type=float, default=0.5, help="segmenter patches centred on tumour")
    t.add_argument("--time-budget-min", type=float, help="wall-clock budget for all networks together")
    t.add_argument("--init-weights", help="bundle supplying networks not trained in this run")
    t.add_argument("--finetune-from", help="bundle whose networks the training starts from (e.g. the bundled "
                   "weights, on cases exported from corrected segmentations); it also supplies the networks "
                   "not trained")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    t.add_argument("--seed", type=int, default=0, help="random seed of sampling and initial weights")
    e = p.add_argument_group("engine")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: main process)")
    e.add_argument("--threads", type=int, help="torch CPU threads")
    e.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    e.add_argument("--progress", choices=("bar", "none"), default="bar", help="a progress bar on stderr, or none")
    p.set_defaults(func=run_train)
    return p


def _build_source(args, cases, exclude):
    from .sources import KitsSource, MultiSource, PhantomSource

    sources = []
    if args.data:
        if not Path(args.data).is_dir():
            raise InputError(f"The data folder {args.data} does not exist.")
        src = KitsSource(args.data, cases)
        if exclude:
            src._ids = [c for c in src._ids if c not in exclude]
        sources.append(src)
    masks = {}
    if args.kits_masks:
        if not Path(args.kits_masks).is_dir():
            raise InputError(f"The mask folder {args.kits_masks} does not exist.")
        masks = PhantomSource.masks_in(args.kits_masks, cases)
        masks = {k: v for k, v in masks.items() if k not in exclude}
        if not masks:
            raise InputError(f"The mask folder {args.kits_masks} holds no usable segmentation.nii.gz.")
    if masks or args.procedural:
        sources.append(PhantomSource(masks, args.procedural, seed=args.seed, variants=args.variants))
    if not sources:
        raise InputError("No training data was given; pass --data, --kits-masks or --procedural.")
    return sources[0] if len(sources) == 1 else MultiSource(sources)


def run_train(args) -> int:
    import torch

    from .case_cache import load_cases
    from .distributed import barrier, cleanup, init_from_env
    from .loop import Trainer, TrainOptions
    from .schedule import ScheduleConfig
    from .split import split_ids
    from .transforms import AugmentConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    run_json = out / "run.json"
    start = _finetune_start(args)
    cfg = start.config if start is not None and not args.config else model_config(args.config or "compact")
    if start is not None and any(start.config.network_shape(_section(n)) != cfg.network_shape(_section(n))
                                 for n in NETWORKS):
        raise InputError(f"The --finetune-from bundle has other network shapes than --config {args.config}; "
                         "leave --config out to keep the bundle's.")
    args.config = args.config or ("that of --finetune-from" if start is not None else "compact")
    if args.resume and run_json.exists():
        from ..config import ModelConfig

        cfg = ModelConfig.from_dict(json.loads(run_json.read_text())["config"])
    elif args.resume:
        raise InputError(f"There is no run to resume in {out} (run.json is missing).")
    ctx, device = init_from_env(args.device)
    bar = ProgressBar(enabled=args.progress == "bar" and ctx.is_main)
    try:
        networks = parse_networks(args.networks)
        exclude = set(parse_cases(args.exclude_cases) or [])
        source = _build_source(args, parse_cases(args.cases), exclude)
        split_path = out / "split.json"
        if args.resume and split_path.exists():
            split = json.loads(split_path.read_text())
        else:
            train_ids, val_ids = split_ids(source.case_ids(), args.val_fraction, args.seed)
            split = {"train": train_ids, "val": val_ids, "val_fraction": args.val_fraction, "seed": args.seed,
                     "excluded": sorted(exclude)}
        if not split["train"] or not split["val"]:
            raise InputError("Training needs at least two cases: one to train on and one to validate with.")
        default_lr = (0.01 if args.optimizer == "sgd" else 1e-3) * (0.1 if start is not None else 1.0)
        schedule = ScheduleConfig(
            optimizer=args.optimizer,
            lr=args.lr if args.lr is not None else default_lr,
            momentum=args.momentum,
        )
        opts = TrainOptions(
            networks=networks,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=parse_batch_sizes(args.batch_size),
            workers=args.workers,
            seed=args.seed,
            time_budget_s=args.time_budget_min * 60.0 if args.time_budget_min else None,
            schedule=schedule,
            augment=AugmentConfig(enabled=not args.no_augment),
            amp=not args.no_amp,
            tumour_fraction=args.tumour_fraction,
        )
        if args.val_samples:
            opts.val_samples = {n: args.val_samples for n in NETWORKS}
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            split_path.write_text(json.dumps(split, indent=1))
            run_json.write_text(json.dumps({"config": cfg.to_dict(), "options": opts.to_dict(),
                                            "source": source.describe(), "argv": sys.argv[1:]}, indent=1))
        t0 = time.time()
        # Rank 0 fills the on-disk cache first; the other ranks then read it.
        if ctx.is_main or not args.cache:
            train_cases, errs = load_cases(source, split["train"], cfg, args.cache, args.prep_workers, bar)
            val_cases, verrs = load_cases(source, split["val"], cfg, args.cache, args.prep_workers, bar)
        barrier(ctx)
        if not ctx.is_main and args.cache:
            train_cases, errs = load_cases(source, split["train"], cfg, args.cache, args.prep_workers)
            val_cases, verrs = load_cases(source, split["val"], cfg, args.cache, args.prep_workers)
        errs.update(verrs)
        if errs:
            bar.line(f"{len(errs)} case(s) could not be prepared and were skipped: {', '.join(sorted(errs)[:5])}")
        if not train_cases or not val_cases:
            raise InputError("No usable training or validation case remained after preparing the data.")
        prep_s = time.time() - t0
        if opts.time_budget_s is not None:
            opts.time_budget_s = max(60.0 if opts.time_budget_s >= 120 else 1.0, opts.time_budget_s - prep_s)
        bar.line(f"{len(train_cases)} training and {len(val_cases)} validation cases ready in {prep_s:.0f} s "
                 f"on {device}" + (f" x {ctx.world_size} processes" if ctx.enabled else ""))

        def on_epoch(row):
            dk, dt, acc = row.get("val_dice_kidney"), row.get("val_dice_tumour"), row.get("val_accuracy")
            extra = "".join(
                f" {k} {v:.3f}" for k, v in (("dice_kidney", dk), ("dice_tumour", dt), ("accuracy", acc)) if v is not None
            )
            bar.line(f"{row['network']} epoch {row['epoch']}: lr {row['lr']:.1e} train {row['train_loss']:.4f} "
                     f"val {row['val_loss']:.4f}{extra} ({row['seconds']:.0f} s)")

        trainer = Trainer(cfg, train_cases, val_cases, opts, out, device, ctx, args.resume, bar, on_epoch,
                          init_states=start.state_dicts if start is not None else None)
        results = trainer.run()
        if ctx.is_main:
            path = write_run_bundle(out, cfg, results, trainer, split, source, args, device, ctx, t0)
            bar.line(f"weights written to {path}")
        barrier(ctx)
        return 0
    finally:
        cleanup(ctx)


def _finetune_start(args):
    """The bundle ``--finetune-from`` names (loaded and checked), or None."""
    if not getattr(args, "finetune_from", None):
        return None
    from ..weights import load_bundle

    if args.init_weights and Path(args.init_weights).resolve() != Path(args.finetune_from).resolve():
        raise InputError("Give either --finetune-from or --init-weights: the fine-tuned bundle supplies every network.")
    return load_bundle(args.finetune_from)


def _other_state_dicts(out: Path, cfg, init_weights: str | None, names) -> tuple[dict, dict]:
    """Weights of networks not trained in this run: the run folder's best, --init-weights, or seeded."""
    from ..weights import load_bundle, seeded_bundle
    from .checkpoint import load_checkpoint

    states, origin = {}, {}
    init = load_bundle(init_weights) if init_weights else None
    for name in names:
        best = out / "checkpoints" / f"{name}.best.safetensors"
        if best.exists():
            states[name], origin[name] = load_checkpoint(best)["model"], "run folder (earlier training)"
        elif init is not None:
            if init.config.network_shape(_section(name)) != cfg.network_shape(_section(name)):
                raise InputError(f"The --init-weights bundle's {name.replace('_', ' ')} has another shape.")
            states[name], origin[name] = init.state_dicts[name], f"--init-weights {init_weights}"
        else:
            states[name], origin[name] = seeded_bundle(cfg).state_dicts[name], "untrained (seeded initial weights)"
    return states, origin


def _section(name: str) -> str:
    return {"z_localiser": "z_localiser", "xy_localiser": "xy_localiser", "segmenter": "segmenter"}[name]


def write_run_bundle(out, cfg, results, trainer, split, source, args, device, ctx, t0, half: bool = False) -> Path:
    from ..weights import save_bundle
    from .loop import hardware_description

    states = {n: r["state_dict"] for n, r in results.items()}
    finetune = getattr(args, "finetune_from", None)
    others, origin = _other_state_dicts(out, cfg, getattr(args, "init_weights", None) or finetune,
                                        [n for n in NETWORKS if n not in states])
    states.update(others)
    if finetune:
        origin.update({n: f"--finetune-from {finetune} (not trained in this run)" for n in others
                       if origin[n].startswith("--init-weights")})
    origin.update({n: f"fine-tuned in this run from {finetune}" if finetune else "trained in this run"
                   for n in results})
    provenance = {
        "name": f"kidney-tumor-seg {getattr(args, 'config', 'custom')} run {Path(out).name}",
        "kind": "trained",
        "data": source.describe(),
        "split": {"train": split["train"], "val": split["val"], "excluded": split.get("excluded", [])},
        "config": getattr(args, "config", "custom"),
        "networks": origin,
        "hardware": hardware_description(device, ctx),
        "time": {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - t0, 1)},
        "seeds": {"seed": trainer.opts.seed},
        "epochs": {n: s["epochs"] for n, s in trainer.summaries.items()},
        "options": trainer.opts.to_dict(),
    }
    metrics = {"validation": trainer.summaries}
    return save_bundle(Path(out) / "bundle.safetensors", cfg, states, provenance=provenance, metrics=metrics, half=half)


# --- evaluate ------------------------------------------------------------------------------------
def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy of a weights bundle on real labelled scans or held-out phantoms (full pipeline)",
        description="Run the full pipeline on real CT scans with label maps (--scans) or on phantoms the "
        "networks never saw (--kits-masks, --procedural) and report Dice, surface distance and false positives.",
    )
    p.add_argument("--weights", help="weights bundle (.safetensors; default: the bundled weights)")
    p.add_argument("--scans", help="folder of real scans: CASE/ct.nii.gz (+ CASE/labels.nii.gz) or the KiTS layout")
    p.add_argument("--names", help="comma-separated case folders of --scans to evaluate (default: all)")
    p.add_argument("--label-map", help="which label ids are kidney and tumour in --scans: totalseg, ircadb, kits, "
                   "or 'kidney=2,3;tumour=4' (default: from each case's labels.json, else kits)")
    p.add_argument("--kidney-free", action="append", default=[], metavar="CASE[:K0-K1]",
                   help="a scan (or its slices K0..K1) known to hold no kidney; repeatable")
    p.add_argument("--overlays", help="write a PNG overlay per scan into this folder")
    p.add_argument("--kits-masks", help="KiTS-layout folder of label maps to build held-out phantoms from")
    p.add_argument("--cases", help="which masks (default: the masks the bundle's split never used)")
    p.add_argument("--limit", type=int, help="evaluate at most this many mask cases")
    p.add_argument("--procedural", type=int, default=0, help="add N procedural held-out phantoms")
    p.add_argument("--in-bodies", help="paint the --kits-masks phantoms into these real bodies instead of procedural "
                   "ones: a folder of TotalSegmentator-style cases (CASE/labels.nii.gz with names in labels.json or "
                   "../classes.json); comma-separated case names may follow a colon (DIR:s0001,s0004)")
    p.add_argument("--grid-mm", default="1.5,1.5,3.0", help="voxel spacing x,y,z of the phantom CTs")
    p.add_argument("--displace-kidney", metavar="LO,HI",
                   help="with --in-bodies: move one kidney of each phantom LO to HI mm caudally (and somewhat "
                   "medially), as a low or pelvic kidney lies")
    p.add_argument("--remove-kidney", action="store_true",
                   help="with --in-bodies: take one kidney of each phantom out (a solitary kidney, as after a "
                   "nephrectomy); its empty fossa is where false kidney shows")
    p.add_argument("--cut-field", choices=("below", "above"),
                   help="with phantoms: the field of view ends halfway down the kidneys, keeping the slices below "
                   "(a pelvis scan) or above (an upper-abdomen scan) their middle")
    p.add_argument("--seed", type=int, default=0, help="random seed of the phantoms")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=_positive_threads, metavar="N",
                   help="CPU threads for the networks, 1 or more (default: torch's; 1 beside a training run)")
    p.add_argument("--sweep", action="append", default=[], metavar="PART.KEY=V1,V2,...",
                   help="with phantoms: compare these values of an inference setting (repeatable: every "
                   "combination), e.g. segmenter.tumour_threshold=0.4,0.5,0.6; the segmenter runs once per case "
                   "and set of kidney boxes")
    p.add_argument("--out", help="write the JSON report here (default: print it)")
    p.add_argument("--progress", choices=("bar", "none"), default="bar", help="a progress bar on stderr, or none")
    p.set_defaults(func=run_evaluate)
    return p


def _displacement_mm(text: str | None) -> tuple[float, float] | None:
    """``--displace-kidney LO,HI`` as millimetres (0 <= LO <= HI), None when not given."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--displace-kidney takes two distances in mm, LO,HI (for example 60,120), not {text!r}.") from None
    if not 0 <= lo <= hi:
        raise InputError(f"--displace-kidney needs 0 <= LO <= HI, not {text!r}.")
    return lo, hi


def _sweep_sets(items: list[str]) -> list[list[str]] | None:
    """``--sweep PART.KEY=V1,V2`` options as every combination of their values, None when not given."""
    import itertools

    if not items:
        return None
    axes, keys = [], set()
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise InputError(f"--sweep takes PART.KEY=V1,V2,... (for example segmenter.tumour_threshold=0.4,0.5), not {item!r}.")
        if key in keys:
            raise InputError(f"--sweep names {key} twice; give all its values in one option ({key}=V1,V2,...).")
        keys.add(key)
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)]


def _write_report(report: dict, out) -> None:
    text = json.dumps(report, indent=1)
    if out:
        from ..io import atomic_output

        with atomic_output(out, suffix=".json") as tmp:
            Path(tmp).write_text(text)
    else:
        print(text)


def run_evaluate_scans(args, bundle) -> int:
    from ..labelled_scans import LabelMapping, find_scans, parse_kidney_free
    from .evaluate_real import evaluate_scans

    mapping = LabelMapping.parse(args.label_map) if args.label_map else None
    names = set(args.names.split(",")) if args.names else None
    scans = find_scans(args.scans, mapping, names)
    free = parse_kidney_free(args.kidney_free)
    bar = ProgressBar(enabled=args.progress == "bar")
    report = evaluate_scans(bundle, scans, free, args.device, args.overlays, bar)
    for row in report["cases"]:
        bits = [f"{row['case']}:"]
        if "kidney_dice" in row:
            bits.append(f"kidney Dice {row['kidney_dice']:.3f}, {row['found']} of {row['true_kidneys']} kidneys found,"
                        f" HD95 {row['hd95_mm']} mm, NSD {row['nsd_2mm']}")
        if row["false_kidney_ml_in_free_slices"] is not None:
            bits.append(f"{row['false_kidney_ml_in_free_slices']:.1f} mL kidney in {row['kidney_free_slices']} kidney-free slices")
        if row.get("contrast"):
            bits.append(f"contrast: {row['contrast'].get('phase')}")
        bar.line(" ".join(bits))
    _write_report(report, args.out)
    return 0


def run_evaluate(args) -> int:
    from ..weights import load_bundle
    from .evaluate import evaluate, heldout_cases
    from .real_sources import mask_of
    from .sources import PhantomSource

    _set_threads(args.threads)
    bundle = load_bundle(args.weights)
    sets = _sweep_sets(args.sweep)
    if sets:
        from .evaluate import swept_configs

        try:
            swept_configs(bundle.config, sets)
        except ValueError as err:
            raise InputError(f"--sweep {err}.") from None
    if args.scans:
        if args.cut_field:
            raise InputError("--cut-field cuts painted phantoms; for real scans, scripts/scanner_variants.py writes "
                             "cut versions (from_kidney_middle, to_kidney_middle) to evaluate with --scans.")
        if sets:
            raise InputError("--sweep compares settings on phantoms (--kits-masks, --procedural); for real scans "
                             "make a bundle per setting (scripts/merge_bundle.py --set) and evaluate each.")
        return run_evaluate_scans(args, bundle)
    grid = tuple(float(v) for v in args.grid_mm.split(","))
    if len(grid) != 3 or min(grid) <= 0:
        raise InputError("--grid-mm needs three positive spacings, e.g. 1.5,1.5,3.0.")
    displaced = _displacement_mm(args.displace_kidney)
    if displaced and not args.in_bodies:
        raise InputError("--displace-kidney moves kidneys in painted bodies: give --in-bodies as well.")
    if args.remove_kidney and not args.in_bodies:
        raise InputError("--remove-kidney takes kidneys out of painted bodies: give --in-bodies as well.")
    if args.remove_kidney and displaced:
        raise InputError("--remove-kidney and --displace-kidney each change one kidney; give one of them.")
    masks = {}
    if args.kits_masks:
        cases = parse_cases(args.cases)
        masks = PhantomSource.masks_in(args.kits_masks, cases)
        if cases is None:
            split = bundle.header.get("provenance", {}).get("split", {}) or {}
            seen = {mask_of(c) for c in split.get("train", []) + split.get("val", [])}
            masks = {k: v for k, v in masks.items() if k not in seen}
        if args.limit:
            masks = dict(list(masks.items())[: args.limit])
    if not masks and not args.procedural:
        raise InputError("Nothing to evaluate; pass --scans, --kits-masks (with --cases) or --procedural N.")
    bar = ProgressBar(enabled=args.progress == "bar")
    n = len(masks) + args.procedural
    if args.in_bodies:
        from .evaluate import real_body_cases

        folder, _, names = args.in_bodies.partition(":")
        bodies = sorted(Path(folder).glob("*/labels.nii.gz"))
        if names:
            bodies = [b for b in bodies if b.parent.name in names.split(",")]
        if not bodies:
            raise InputError(f"{args.in_bodies} names no body label map (CASE/labels.nii.gz).")
        cases = real_body_cases(masks, bodies, args.seed, grid, displaced, args.remove_kidney)
    else:
        cases = heldout_cases(masks, args.procedural, args.seed, grid)
    if args.cut_field:
        from .evaluate import cut_cases

        cases = cut_cases(cases, args.cut_field)
    report = evaluate(bundle, cases, args.device, bar, n, sets)
    if args.cut_field:
        report["cut_field"] = args.cut_field
    report["grid_mm"] = list(grid)
    report["seed"] = args.seed
    for summary in report.get("sweep", [report]):
        label = f"{' '.join(summary['settings']) or 'bundle settings'}: " if "settings" in summary else ""
        bar.line(
            f"{label}{n} cases: kidney Dice mean {_f(summary['kidney_dice']['mean'])} median "
            f"{_f(summary['kidney_dice']['median'])}; tumour Dice mean {_f(summary['tumour_dice']['mean'])} median "
            f"{_f(summary['tumour_dice']['median'])}; false tumour {summary['false_tumour']['ml_total']:.1f} mL in "
            f"{summary['false_tumour']['components']} component(s) in {summary['false_tumour']['cases_with_any']} case(s); "
            f"false kidney {summary['false_kidney']['ml_total']:.1f} mL in {summary['false_kidney']['cases_with_any']} case(s)"
        )
    _write_report(report, args.out)
    return 0


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    """``python -m KidneyTumorSegLib.training train|evaluate ...`` (the same as the main CLI's)."""
    import logging

    from ..errors import KidneyTumorSegError

    parser = argparse.ArgumentParser(prog="kidney-tumor-seg")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except KidneyTumorSegError as err:
        print(f"Error: {err}", file=sys.stderr)
        return err.exit_code
