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
from .metrics import dice_from_counts, plot_curves, write_csv
from .sampling import PatchSampler, XYSliceSampler, ZSliceSampler, fixed_samples, slice_size_px
from .schedule import PlateauSchedule, ScheduleConfig, make_optimizer
from .seeds import stable_seed
from .transforms import AugmentConfig
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
    positive_fraction: float = 0.5
    xy_kidney_fraction: float = 0.8

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
                path = self.ckpt_dir / f"{name}.last.safetensors"
                if path.exists():
                    self.histories[name] = list(load_checkpoint(path)["history"])

    # --- pieces -------------------------------------------------------------------------------
    def _sampler(self, name: str, cases: list[CachedCase], aug: AugmentConfig):
        cfg, o = self.cfg, self.opts
        if name == "segmenter":
            return PatchSampler(cases, cfg.segmenter.patch_size_xyz[::-1], aug, o.tumour_fraction, o.random_fraction)
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
    def validate(self, name: str, model, samples, loss_fn, batch_size: int) -> dict:
        """Validation loss and scores over this rank's share, summed over all ranks."""
        model.eval()
        totals = np.zeros(9)  # loss*n, n, correct, [inter, pred, truth] x 2 channels
        for x, y in batches(samples, batch_size):
            x, y = x.to(self.device), y.to(self.device)
            with autocast(self.device) if self.amp else contextlib.nullcontext():
                out = unwrap(model)(x)
            loss = float(loss_fn(out, y))
            pred = (out.float() >= 0).float()  # sigmoid >= 0.5
            n = x.shape[0]
            totals[0] += loss * n
            totals[1] += n
            if name == "z_localiser":
                totals[2] += float((pred == y).sum())
            else:
                for c in range(pred.shape[1]):
                    totals[3 + 3 * c] += float((pred[:, c] * y[:, c]).sum())
                    totals[4 + 3 * c] += float(pred[:, c].sum())
                    totals[5 + 3 * c] += float(y[:, c].sum())
        totals = np.asarray(all_reduce_sum(list(totals), self.ctx, self.device))
        n = max(1.0, totals[1])
        result = {"val_loss": totals[0] / n, "val_dice_kidney": None, "val_dice_tumour": None, "val_accuracy": None}
        if name == "z_localiser":
            result["val_accuracy"] = totals[2] / n
        else:
            result["val_dice_kidney"] = dice_from_counts(*totals[3:6])
            if name == "segmenter":
                result["val_dice_tumour"] = dice_from_counts(*totals[6:9])
        return result

    # --- one network --------------------------------------------------------------------------
    def train_network(self, name: str, index: int, spent_before: float) -> dict:
        o = self.opts
        ctx = self.ctx
        last_path = self.ckpt_dir / f"{name}.last.safetensors"
        best_path = self.ckpt_dir / f"{name}.best.safetensors"
        model = self._build(name).to(self.device)
        optimizer = make_optimizer(model.parameters(), o.schedule)
        schedule = PlateauSchedule(optimizer, o.schedule)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        epoch, elapsed, done, history = 0, 0.0, False, []
        best_state = None
        start_val = None  # fine-tuning: the starting weights' validation, the mark to beat
        if self.resume and last_path.exists():
            state = load_checkpoint(last_path)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            epoch, elapsed, done = int(state["epoch"]), float(state["elapsed_s"]), bool(state["done"])
            history = list(state["history"])
            start_val = state.get("start_val")
            if best_path.exists():
                best_state = load_checkpoint(best_path)["model"]
        self.histories[name] = history
        budget = self._budget_for(name, spent_before)
        del done  # a finished network resumes only if the new options leave it more to do
        if schedule.should_stop or epoch >= o.epochs or (budget is not None and elapsed >= budget):
            return self._finish(name, model, best_state, history, epoch, elapsed, schedule, budget, True, start_val)

        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        ddp = wrap_model(model, ctx, self.device)
        loss_fn = loss_for(name)
        bs = int(o.batch_size.get(name, DEFAULT_BATCH[name]))
        train_sampler = self._sampler(name, self.train_cases, o.augment)
        val_sampler = self._sampler(name, self.val_cases, AugmentConfig(enabled=False))
        n_val = int(o.val_samples.get(name, DEFAULT_VAL_SAMPLES[name]))
        val_set = shard(fixed_samples(val_sampler, n_val, stable_seed(o.seed, name, "val")), ctx)
        steps = max(1, math.ceil(o.steps_per_epoch / ctx.world_size))
        stream = SampleStream(train_sampler, steps, bs, (o.seed, index), rank=ctx.rank)
        loader = make_loader(stream, o.workers, pin_memory=self.device.type == "cuda")
        n_nets = len(o.networks)
        pos = o.networks.index(name) if name in o.networks else 0
        out_of_time = False
        if name in self.init_states and epoch == 0:
            start_val = self.validate(name, ddp, val_set, loss_fn, max(bs, 2))

        while epoch < o.epochs and not out_of_time:
            t_epoch = time.perf_counter()
            torch.manual_seed(stable_seed(o.seed, name, epoch, ctx.rank))
            stream.set_epoch(epoch)
            ddp.train()
            losses = []
            for step, (x, y) in enumerate(loader):
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                losses.append(train_step(ddp, x, y, loss_fn, optimizer, scaler, self.device, self.amp, o.grad_clip))
                now = elapsed + time.perf_counter() - t_epoch
                frac_epochs = (epoch + (step + 1) / steps) / o.epochs
                frac = max(frac_epochs, now / budget if budget else 0.0)
                self.progress(
                    (pos + min(1.0, frac)) / n_nets,
                    f"{name} epoch {epoch + 1} step {step + 1}/{steps} loss {np.mean(losses[-20:]):.4f}",
                )
                if budget is not None:
                    out_of_time = broadcast_flag(now >= budget, ctx, self.device)
                    if out_of_time:
                        break
            val = self.validate(name, ddp, val_set, loss_fn, max(bs, 2))
            train_loss = all_reduce_sum([sum(losses), len(losses)], ctx, self.device)
            lr_used = schedule.lr
            improved = schedule.step(val["val_loss"])
            elapsed += time.perf_counter() - t_epoch
            epoch += 1
            row = {
                "network": name,
                "epoch": epoch,
                "lr": lr_used,
                "train_loss": train_loss[0] / max(1.0, train_loss[1]),
                **val,
                "seconds": round(elapsed, 1),
            }
            history.append(row)
            if improved:
                best_state = _cpu_state(ddp)
                if ctx.is_main:
                    save_checkpoint(best_path, {"network": name, "epoch": epoch, "model": best_state, "metrics": row})
            done = schedule.should_stop or epoch >= o.epochs or out_of_time
            if ctx.is_main:
                save_checkpoint(
                    last_path,
                    {
                        "network": name,
                        "epoch": epoch,
                        "done": done,
                        "elapsed_s": elapsed,
                        "model": _cpu_state(ddp),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "scaler": scaler.state_dict() if self.amp else {},
                        "rng": rng_state(),
                        "history": history,
                        "start_val": start_val,
                        "options": o.to_dict(),
                    },
                )
            self._write_metrics()
            self.on_epoch(row)
            barrier(ctx)
            if schedule.should_stop:
                break
        return self._finish(name, ddp, best_state, history, epoch, elapsed, schedule, budget, True, start_val)

    def _finish(self, name, model, best_state, history, epoch, elapsed, schedule, budget, done, start_val=None) -> dict:
        """The network's result: its best-validation weights, or, when fine-tuning never beat the
        weights it started from on the same validation samples, those starting weights."""
        state = best_state if best_state is not None else _cpu_state(model)
        best_row = min(history, key=lambda r: r["val_loss"]) if history else {}
        kept_start = start_val is not None and (not best_row or start_val["val_loss"] <= best_row["val_loss"])
        if kept_start:
            state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).clone()
                     for k, v in self.init_states[name].items()}
        reason = schedule.stop_reason or (
            "time budget spent" if budget is not None and elapsed >= budget else f"{epoch} epochs done"
        )
        summary = {
            "epochs": epoch,
            "seconds": round(elapsed, 1),
            "stop_reason": reason,
            "best_epoch": best_row.get("epoch"),
            "best_val_loss": best_row.get("val_loss"),
            "val_dice_kidney": best_row.get("val_dice_kidney"),
            "val_dice_tumour": best_row.get("val_dice_tumour"),
            "val_accuracy": best_row.get("val_accuracy"),
            "final_lr": schedule.lr,
        }
        if start_val is not None:
            summary["start_val_loss"] = start_val["val_loss"]
            summary["kept_starting_weights"] = bool(kept_start)
        self.summaries[name] = summary
        self._write_metrics()
        return {"state_dict": state, "summary": summary}

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
