"""The trainer: the three networks one after the other, each with its own sampler, loss, schedule,
checkpoints and metrics, then one weights bundle.

Run folder::

    split.json                       case-level train/validation split
    run.json                         options of the run (what --resume continues)
    metrics.csv, curves.png          one row per network and epoch; the curves
    checkpoints/<net>.last.safetensors  full resumable state (model, optimiser, schedule, scaler,
                                        RNG states, epoch, history, elapsed time)
    checkpoints/<net>.best.safetensors  weights of the epoch with the best validation loss
    bundle.safetensors               the best weights of the three networks + provenance

An epoch is ``steps_per_epoch`` optimiser steps (split between ranks) followed by validation on a
fixed, un-augmented sample set drawn from the validation cases. Sampling seeds depend on
(seed, network, epoch, rank, worker) only, so a run resumed from a checkpoint continues exactly as
the uninterrupted run would have. A time budget is shared between the networks (most of it to the
segmenter); an unfinished budget rolls over to the next network. Mixed precision (autocast +
GradScaler) on CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..device import autocast
from . import NETWORKS
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .datasets import SampleStream, batches, make_loader
from .distributed import (
    SINGLE,
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    shard,
    unwrap,
    wrap_model,
)
from .losses import loss_for
from .metrics import plot_curves, write_csv
from .sampling import PatchSampler, XYSliceSampler, ZSliceSampler, fixed_samples, slice_size_px
from .schedule import PlateauSchedule, ScheduleConfig, make_optimizer
from .seeds import stable_seed
from .transforms import AugmentConfig
from .validation import Validation, ValidationCounts
from .working_grids import CachedCase

log = logging.getLogger("KidneyTumorSeg")
Progress = Callable[[float, str], None]

DEFAULT_BATCH = {"z_localiser": 32, "xy_localiser": 16, "segmenter": 2}
DEFAULT_VAL_SAMPLES = {"z_localiser": 256, "xy_localiser": 128, "segmenter": 48}
DEFAULT_SHARES = {"z_localiser": 0.12, "xy_localiser": 0.13, "segmenter": 0.75}


@dataclass
class TrainOptions:
    networks: tuple[str, ...] = NETWORKS
    epochs: int = 1000
    steps_per_epoch: int = 250
    batch_size: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BATCH))
    val_samples: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_VAL_SAMPLES))
    workers: int = 0
    seed: int = 0
    time_budget_s: float | None = None
    budget_shares: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    amp: bool = True
    grad_clip: float = 12.0
    tumour_fraction: float = 0.5
    random_fraction: float = 0.1
    mirror_fraction: float = 0.0  # segmenter patches where the other kidney would lie (sampling.py)
    positive_fraction: float = 0.5
    xy_kidney_fraction: float = 0.8
    tumour_dice: str = "batch"  # or "sample": every tumour patch's Dice counts alike (losses.py)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["networks"] = list(self.networks)
        return d


def train_step(model, x, y, loss_fn, optimizer, scaler, device, amp: bool = True, grad_clip: float = 0.0) -> float:
    """One optimiser step (mixed precision on CUDA); returns the batch loss."""
    optimizer.zero_grad(set_to_none=True)
    ctx = autocast(device) if amp else contextlib.nullcontext()
    with ctx:
        out = model(x)
    loss = loss_fn(out, y)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


@dataclass
class NetworkState:
    """One network's training as a checkpoint holds it and each epoch advances it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: PlateauSchedule
    scaler: torch.amp.GradScaler
    epoch: int = 0
    elapsed: float = 0.0  # seconds trained, over every session of the run
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None  # CPU weights of the best validation epoch
    start_val: Validation | None = None  # fine-tuning: the starting weights' validation, the mark to beat

    def has_work(self, epochs: int, budget: float | None) -> bool:
        """Whether the (new) options leave this network more to do; a finished network resumes only then."""
        return not (self.schedule.should_stop or self.epoch >= epochs or (budget is not None and self.elapsed >= budget))


@dataclass
class EpochFeed:
    """What every epoch of one network draws on."""

    model: torch.nn.Module  # the model as trained (DDP-wrapped when data-parallel)
    loss_fn: Callable
    stream: SampleStream
    loader: torch.utils.data.DataLoader
    steps: int  # optimiser steps per epoch on this rank
    val_set: list  # this rank's share of the fixed validation samples
    val_batch: int


@dataclass
class EpochSteps:
    """The optimiser steps of one epoch."""

    started: float  # perf_counter at the epoch's start
    losses: list[float] = field(default_factory=list)  # one per batch
    out_of_time: bool = False  # the time budget ran out during the epoch


class Trainer:
    """Trains the networks of ``cfg`` on cached cases; see the module docstring for the layout."""

    def __init__(
        self,
        cfg: ModelConfig,
        train_cases: list[CachedCase],
        val_cases: list[CachedCase],
        opts: TrainOptions,
        run_dir,
        device: torch.device | None = None,
        ctx: DistContext = SINGLE,
        resume: bool = False,
        progress: Progress | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        init_states: dict[str, dict] | None = None,
    ):
        if not train_cases:
            raise ValueError("no training cases")
        if not val_cases:
            raise ValueError("no validation cases")
        self.cfg = cfg
        self.train_cases = train_cases
        self.val_cases = val_cases
        self.opts = opts
        self.run_dir = Path(run_dir)
        self.device = device or torch.device("cpu")
        self.ctx = ctx
        self.resume = resume
        self.progress = progress or (lambda f, m: None)
        self.on_epoch = on_epoch or (lambda row: None)
        self.init_states = dict(init_states or {})  # fine-tuning: start these networks from given weights
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.histories: dict[str, list[dict]] = {}
        self.summaries: dict[str, dict] = {}
        self.amp = bool(opts.amp and self.device.type == "cuda")
        if ctx.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume:  # keep the history of every network already in the run folder
            for name in NETWORKS:
                path = self._checkpoint(name, "last")
                if path.exists():
                    self.histories[name] = list(load_checkpoint(path)["history"])

    # --- pieces -------------------------------------------------------------------------------
    def _checkpoint(self, name: str, which: str) -> Path:
        """``checkpoints/<net>.last.safetensors`` (resumable state) or ``.best`` (best weights)."""
        return self.ckpt_dir / f"{name}.{which}.safetensors"

    def _sampler(self, name: str, cases: list[CachedCase], aug: AugmentConfig):
        cfg, o = self.cfg, self.opts
        if name == "segmenter":
            return PatchSampler(cases, cfg.segmenter.patch_size_xyz[::-1], aug, o.tumour_fraction, o.random_fraction,
                                mirror_fraction=o.mirror_fraction)
        size = slice_size_px(cfg.localiser_grid.spacing_mm)
        if name == "z_localiser":
            return ZSliceSampler(cases, size, aug, cfg.z_localiser.context_slices, o.positive_fraction)
        return XYSliceSampler(cases, size, aug, o.xy_kidney_fraction)

    def _build(self, name: str):
        from ..weights import build_networks

        torch.manual_seed(stable_seed(self.opts.seed, name, "init"))
        net = build_networks(self.cfg)[name]
        if name in self.init_states:  # load_state_dict copies half-precision bundles into float32
            net.load_state_dict(self.init_states[name])
        return net

    def _budget_for(self, name: str, spent_before: float) -> float | None:
        o = self.opts
        if o.time_budget_s is None:
            return None
        remaining = [n for n in o.networks if n not in self.summaries or n == name]
        shares = sum(o.budget_shares.get(n, 1.0) for n in remaining) or 1.0
        return max(0.0, (o.time_budget_s - spent_before) * o.budget_shares.get(name, 1.0) / shares)

    def _write_metrics(self) -> None:
        if not self.ctx.is_main:
            return
        rows = [r for n in NETWORKS for r in self.histories.get(n, [])]
        write_csv(self.run_dir / "metrics.csv", rows)
        plot_curves(self.run_dir / "curves.png", rows)

    @torch.no_grad()
    def validate(self, name: str, model, samples, loss_fn, batch_size: int) -> Validation:
        """Validation loss and scores over this rank's share, summed over all ranks."""
        model.eval()
        counts = ValidationCounts()
        for x, y in batches(samples, batch_size):
            x, y = x.to(self.device), y.to(self.device)
            with autocast(self.device) if self.amp else contextlib.nullcontext():
                out = unwrap(model)(x)
            pred = (out.float() >= 0).float()  # sigmoid >= 0.5
            counts.add(name, float(loss_fn(out, y)), pred, y)
        return counts.summed(self.ctx, self.device).scores(name)

    # --- one network --------------------------------------------------------------------------
    def train_network(self, name: str, index: int, spent_before: float) -> dict:
        """Train one network until its epochs, its schedule or its share of the time budget end."""
        state = self._restore(name)
        self.histories[name] = state.history
        budget = self._budget_for(name, spent_before)
        if not state.has_work(self.opts.epochs, budget):
            return self._finish(name, state.model, state, budget)
        feed = self._feed(name, index, state.model)
        if name in self.init_states and state.epoch == 0:
            state.start_val = self.validate(name, feed.model, feed.val_set, feed.loss_fn, feed.val_batch)
        while state.epoch < self.opts.epochs:
            steps = self._train_epoch(name, state, feed, budget)
            row, improved = self._score_epoch(name, state, feed, steps)
            self._save_epoch(name, state, feed, row, improved, steps.out_of_time)
            if state.schedule.should_stop or steps.out_of_time:
                break
        return self._finish(name, feed.model, state, budget)

    def _restore(self, name: str) -> NetworkState:
        """The network (seeded, or from the fine-tuning weights) with a fresh optimiser, schedule and
        scaler, or, on resume, all of them as the last checkpoint left them (RNG states included)."""
        o = self.opts
        model = self._build(name).to(self.device)
        optimizer = make_optimizer(model.parameters(), o.schedule)
        state = NetworkState(model, optimizer, PlateauSchedule(optimizer, o.schedule),
                             torch.amp.GradScaler("cuda", enabled=self.amp))
        last_path, best_path = self._checkpoint(name, "last"), self._checkpoint(name, "best")
        if not (self.resume and last_path.exists()):
            return state
        saved = load_checkpoint(last_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state.schedule.load_state_dict(saved["schedule"])
        if saved.get("scaler"):
            state.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        state.epoch, state.elapsed = int(saved["epoch"]), float(saved["elapsed_s"])
        state.history = list(saved["history"])
        if saved.get("start_val") is not None:
            state.start_val = Validation.from_row(saved["start_val"])
        if best_path.exists():
            state.best_state = load_checkpoint(best_path)["model"]
        return state

    def _feed(self, name: str, index: int, model: torch.nn.Module) -> EpochFeed:
        """The wrapped model, loss, training batch stream and fixed validation samples of ``name``."""
        o, ctx = self.opts, self.ctx
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model = wrap_model(model, ctx, self.device)
        loss_fn = loss_for(name, o.tumour_dice)
        bs = int(o.batch_size.get(name, DEFAULT_BATCH[name]))
        train_sampler = self._sampler(name, self.train_cases, o.augment)
        val_sampler = self._sampler(name, self.val_cases, AugmentConfig(enabled=False))
        n_val = int(o.val_samples.get(name, DEFAULT_VAL_SAMPLES[name]))
        val_set = shard(fixed_samples(val_sampler, n_val, stable_seed(o.seed, name, "val")), ctx)
        steps = max(1, math.ceil(o.steps_per_epoch / ctx.world_size))
        stream = SampleStream(train_sampler, steps, bs, (o.seed, index), rank=ctx.rank)
        loader = make_loader(stream, o.workers, pin_memory=self.device.type == "cuda")
        return EpochFeed(model, loss_fn, stream, loader, steps, val_set, max(bs, 2))

    def _train_epoch(self, name: str, state: NetworkState, feed: EpochFeed, budget: float | None) -> EpochSteps:
        """One epoch's optimiser steps, stopped early (on every rank alike) when the budget runs out."""
        o, ctx = self.opts, self.ctx
        steps = EpochSteps(started=time.perf_counter())
        torch.manual_seed(stable_seed(o.seed, name, state.epoch, ctx.rank))
        feed.stream.set_epoch(state.epoch)
        feed.model.train()
        for step, (x, y) in enumerate(feed.loader):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            steps.losses.append(train_step(feed.model, x, y, feed.loss_fn, state.optimizer, state.scaler, self.device,
                                           self.amp, o.grad_clip))
            now = state.elapsed + time.perf_counter() - steps.started
            self._report_step(name, state.epoch, step, feed.steps, steps.losses, now, budget)
            if budget is not None:
                steps.out_of_time = broadcast_flag(now >= budget, ctx, self.device)
                if steps.out_of_time:
                    break
        return steps

    def _report_step(self, name: str, epoch: int, step: int, steps: int, losses: list[float], now: float,
                     budget: float | None) -> None:
        """Progress over all networks of the run: epochs done or budget spent, whichever is further."""
        o = self.opts
        pos = o.networks.index(name) if name in o.networks else 0
        frac_epochs = (epoch + (step + 1) / steps) / o.epochs
        frac = max(frac_epochs, now / budget if budget else 0.0)
        self.progress(
            (pos + min(1.0, frac)) / len(o.networks),
            f"{name} epoch {epoch + 1} step {step + 1}/{steps} loss {np.mean(losses[-20:]):.4f}",
        )

    def _score_epoch(self, name: str, state: NetworkState, feed: EpochFeed, steps: EpochSteps) -> tuple[dict, bool]:
        """Validate, step the schedule and append the epoch's history row; returns (row, improved)."""
        val = self.validate(name, feed.model, feed.val_set, feed.loss_fn, feed.val_batch)
        loss_sum, batches_done = all_reduce_sum([sum(steps.losses), len(steps.losses)], self.ctx, self.device)
        lr_used = state.schedule.lr
        improved = state.schedule.step(val.loss)
        state.elapsed += time.perf_counter() - steps.started
        state.epoch += 1
        row = {
            "network": name,
            "epoch": state.epoch,
            "lr": lr_used,
            "train_loss": loss_sum / max(1.0, batches_done),
            **val.row(),
            "seconds": round(state.elapsed, 1),
        }
        state.history.append(row)
        return row, improved

    def _save_epoch(self, name: str, state: NetworkState, feed: EpochFeed, row: dict, improved: bool,
                    out_of_time: bool) -> None:
        """The best weights when the epoch improved, the resumable state, metrics.csv and curves."""
        ctx = self.ctx
        if improved:
            state.best_state = _cpu_state(feed.model)
            if ctx.is_main:
                save_checkpoint(self._checkpoint(name, "best"),
                                {"network": name, "epoch": state.epoch, "model": state.best_state, "metrics": row})
        done = state.schedule.should_stop or state.epoch >= self.opts.epochs or out_of_time
        if ctx.is_main:
            save_checkpoint(
                self._checkpoint(name, "last"),
                {
                    "network": name,
                    "epoch": state.epoch,
                    "done": done,
                    "elapsed_s": state.elapsed,
                    "model": _cpu_state(feed.model),
                    "optimizer": state.optimizer.state_dict(),
                    "schedule": state.schedule.state_dict(),
                    "scaler": state.scaler.state_dict() if self.amp else {},
                    "rng": rng_state(),
                    "history": state.history,
                    "start_val": None if state.start_val is None else state.start_val.row(),
                    "options": self.opts.to_dict(),
                },
            )
        self._write_metrics()
        self.on_epoch(row)
        barrier(ctx)

    def _finish(self, name: str, model, state: NetworkState, budget: float | None) -> dict:
        """The network's result: its best-validation weights, or, when fine-tuning never beat the
        weights it started from on the same validation samples, those starting weights."""
        schedule, history, start_val = state.schedule, state.history, state.start_val
        weights = state.best_state if state.best_state is not None else _cpu_state(model)
        best_row = min(history, key=lambda r: r["val_loss"]) if history else {}
        kept_start = start_val is not None and (not best_row or start_val.loss <= best_row["val_loss"])
        if kept_start:
            weights = {k: (v.detach().float() if v.is_floating_point() else v.detach()).clone()
                       for k, v in self.init_states[name].items()}
        reason = schedule.stop_reason or (
            "time budget spent" if budget is not None and state.elapsed >= budget else f"{state.epoch} epochs done"
        )
        summary = {
            "epochs": state.epoch,
            "seconds": round(state.elapsed, 1),
            "stop_reason": reason,
            "best_epoch": best_row.get("epoch"),
            "best_val_loss": best_row.get("val_loss"),
            "val_dice_kidney": best_row.get("val_dice_kidney"),
            "val_dice_tumour": best_row.get("val_dice_tumour"),
            "val_accuracy": best_row.get("val_accuracy"),
            "final_lr": schedule.lr,
        }
        if start_val is not None:
            summary["start_val_loss"] = start_val.loss
            summary["kept_starting_weights"] = bool(kept_start)
        self.summaries[name] = summary
        self._write_metrics()
        return {"state_dict": weights, "summary": summary}

    # --- everything ---------------------------------------------------------------------------
    def run(self) -> dict[str, dict]:
        """Train every network of ``opts.networks``; returns {name: {state_dict, summary}}."""
        results = {}
        spent = 0.0
        for name in self.opts.networks:
            results[name] = self.train_network(name, NETWORKS.index(name), spent)
            spent += results[name]["summary"]["seconds"]
        return results


def hardware_description(device: torch.device, ctx: DistContext) -> dict:
    import os

    info = {
        "device": str(device),
        "world_size": ctx.world_size,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
