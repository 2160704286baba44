"""Optimiser and learning-rate schedule, as the paper states them, plus our reading of the gaps.

Paper: SGD, initial learning rate 0.01, reduced by a factor 10 when the validation loss has not
improved for 3 epochs; training ends when the learning rate falls below 1e-6 or after 30 epochs
without progress.

Our reading, stated once here:
- momentum 0.99 with Nesterov and weight decay 3e-5 (nnU-Net's SGD, which the paper's setup
  follows; the paper gives no momentum). ``--optimizer adamw`` is offered for short CPU budgets.
- "not improved": the epoch's validation loss is not below ``best * (1 - 1e-4)``.
- "for 3 epochs": on the 3rd consecutive stale epoch the rate is multiplied by 0.1 and the count
  restarts (so a further reduction needs 3 more stale epochs).
- "falls below 1e-6": strictly below, so 0.01 is reduced five times (the fifth gives 1e-7) before
  training stops; 1e-6 itself is still trained.
- "30 epochs without progress": 30 consecutive epochs since the best validation loss, whatever
  the reductions in between.
The schedule's state is plain numbers (saved as JSON in checkpoints).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ScheduleConfig:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    factor: float = 0.1
    patience: int = 3
    min_lr: float = 1e-6
    stop_patience: int = 30
    threshold: float = 1e-4  # relative improvement that counts as progress

    def to_dict(self) -> dict:
        return asdict(self)


def make_optimizer(params, cfg: ScheduleConfig):
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer}")


class PlateauSchedule:
    """ReduceLROnPlateau x ``factor`` after ``patience`` stale epochs, and the stopping rule."""

    def __init__(self, optimizer, cfg: ScheduleConfig):
        self.optimizer = optimizer
        self.cfg = cfg
        self.best = float("inf")
        self.stale = 0  # consecutive stale epochs since the last improvement or reduction
        self.since_best = 0  # consecutive stale epochs since the last improvement
        self.reductions = 0
        self.stop_reason = ""

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; returns True when it is the best so far."""
        improved = val_loss < self.best * (1.0 - self.cfg.threshold) if self.best != float("inf") else True
        if improved:
            self.best = float(val_loss)
            self.stale = 0
            self.since_best = 0
        else:
            self.stale += 1
            self.since_best += 1
            if self.stale >= self.cfg.patience:
                self._set_lr(self.lr * self.cfg.factor)
                self.reductions += 1
                self.stale = 0
        if self.lr < self.cfg.min_lr * (1.0 - 1e-6):
            self.stop_reason = f"learning rate {self.lr:.1e} fell below {self.cfg.min_lr:.0e}"
        elif self.since_best >= self.cfg.stop_patience:
            self.stop_reason = f"no progress for {self.since_best} epochs"
        return improved

    @property
    def should_stop(self) -> bool:
        return bool(self.stop_reason)

    def state_dict(self) -> dict:
        return {
            "best": self.best if self.best != float("inf") else None,
            "stale": self.stale,
            "since_best": self.since_best,
            "reductions": self.reductions,
            "stop_reason": self.stop_reason,
            "lr": self.lr,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best = float("inf") if state.get("best") is None else float(state["best"])
        self.stale = int(state["stale"])
        self.since_best = int(state["since_best"])
        self.reductions = int(state["reductions"])
        self.stop_reason = str(state.get("stop_reason", ""))
        self._set_lr(float(state["lr"]))
