"""Validation results as named fields: the sums one rank gathers over its validation batches, their
total over all ranks, and the scores of one network (loss, Dice per output channel, slice accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .distributed import DistContext, all_reduce_sum
from .metrics import dice_from_counts


@dataclass
class Validation:
    """One network's scores on its fixed validation samples (all ranks together)."""

    loss: float
    dice_kidney: float | None = None  # the localiser's kidney, the segmenter's kidney-with-tumour
    dice_tumour: float | None = None  # segmenter only
    accuracy: float | None = None  # z-localiser only: slices classified right

    def row(self) -> dict:
        """The ``val_*`` columns of a history row, as metrics.csv and checkpoints hold them."""
        return {"val_loss": self.loss, "val_dice_kidney": self.dice_kidney, "val_dice_tumour": self.dice_tumour,
                "val_accuracy": self.accuracy}

    @classmethod
    def from_row(cls, row: dict) -> Validation:
        return cls(row["val_loss"], row.get("val_dice_kidney"), row.get("val_dice_tumour"), row.get("val_accuracy"))


@dataclass
class Overlap:
    """Voxel sums of one output channel, from which its Dice score follows."""

    inter: float = 0.0
    pred: float = 0.0
    truth: float = 0.0

    def add(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        self.inter += float((pred * truth).sum())
        self.pred += float(pred.sum())
        self.truth += float(truth.sum())

    def dice(self) -> float:
        return dice_from_counts(self.inter, self.pred, self.truth)


@dataclass
class ValidationCounts:
    """Sums over the validation batches of one rank; scores come from the sums over all ranks."""

    loss_sum: float = 0.0  # batch loss x batch size
    samples: float = 0.0
    correct: float = 0.0  # z-localiser: slices classified right
    kidney: Overlap = field(default_factory=Overlap)  # output channel 0
    tumour: Overlap = field(default_factory=Overlap)  # output channel 1 (segmenter)

    def add(self, name: str, loss: float, pred: torch.Tensor, truth: torch.Tensor) -> None:
        n = truth.shape[0]
        self.loss_sum += loss * n
        self.samples += n
        if name == "z_localiser":
            self.correct += float((pred == truth).sum())
            return
        for channel, overlap in enumerate((self.kidney, self.tumour)[: pred.shape[1]]):
            overlap.add(pred[:, channel], truth[:, channel])

    def summed(self, ctx: DistContext, device) -> ValidationCounts:
        """The sums over all ranks (one all-reduce of the nine numbers)."""
        k, t = self.kidney, self.tumour
        v = all_reduce_sum([self.loss_sum, self.samples, self.correct, k.inter, k.pred, k.truth,
                            t.inter, t.pred, t.truth], ctx, device)
        return ValidationCounts(v[0], v[1], v[2], Overlap(*v[3:6]), Overlap(*v[6:9]))

    def scores(self, name: str) -> Validation:
        loss = self.loss_sum / max(1.0, self.samples)
        if name == "z_localiser":
            return Validation(loss, accuracy=self.correct / max(1.0, self.samples))
        return Validation(loss, dice_kidney=self.kidney.dice(),
                          dice_tumour=self.tumour.dice() if name == "segmenter" else None)
