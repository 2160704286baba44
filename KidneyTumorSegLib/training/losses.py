"""Losses on sigmoid outputs: soft Dice + binary cross-entropy.

The segmenter's two channels (kidney-with-tumour region, tumour) are independent sigmoid outputs,
so each gets BCE and a soft Dice. Dice is computed over the whole batch per channel ("batch Dice",
as nnU-Net does): a patch without tumour then does not yield a meaningless 0/0 term, while a batch
with no tumour at all still pushes spurious tumour probability down. Losses are computed in
float32 even under mixed precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean over channels of the batch soft Dice of sigmoid(logits) with ``target`` (B, C, ...)."""
    probs = torch.sigmoid(logits.float())
    target = target.float()
    dims = [0] + list(range(2, probs.dim()))
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return 1.0 - dice.mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    return bce_loss(logits, target) + dice_weight * soft_dice_loss(logits, target)


def loss_for(network: str):
    """The loss of each network: BCE for the slice classifier, BCE + Dice for the mask networks."""
    if network == "z_localiser":
        return bce_loss
    if network in ("xy_localiser", "segmenter"):
        return bce_dice_loss
    raise ValueError(f"unknown network {network}")
