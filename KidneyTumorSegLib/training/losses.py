"""Losses on sigmoid outputs: soft Dice + binary cross-entropy.

The segmenter's two channels (kidney-with-tumour region, tumour) are independent sigmoid outputs,
so each gets BCE and a soft Dice. Dice is computed over the whole batch per channel ("batch Dice",
as nnU-Net does): a patch without tumour then does not yield a meaningless 0/0 term, while a batch
with no tumour at all still pushes spurious tumour probability down. Batch Dice lets a large
tumour in one patch outweigh a small one in another, so the tumour channel can instead take the
mean of per-patch Dice over the patches that hold tumour ("sample" tumour Dice): every lesion
counts alike, the small ones that the held-out phantoms miss included. Losses are computed in
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


def sample_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice of the patches whose ``target`` (B, ...) is not empty; batch Dice when all
    are empty, so that spurious probability is still pushed down."""
    probs = torch.sigmoid(logits.float()).flatten(1)
    truth = target.float().flatten(1)
    present = truth.sum(1) > 0
    if not bool(present.any()):
        return soft_dice_loss(logits[:, None], target[:, None], smooth)
    inter = (probs * truth).sum(1)[present]
    denom = (probs.sum(1) + truth.sum(1))[present]
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    return bce_loss(logits, target) + dice_weight * soft_dice_loss(logits, target)


def bce_sample_tumour_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The segmenter's loss with sample Dice on its tumour channel (1) and batch Dice on the region (0)."""
    region = soft_dice_loss(logits[:, :1], target[:, :1])
    return bce_loss(logits, target) + 0.5 * (region + sample_dice_loss(logits[:, 1], target[:, 1]))


TUMOUR_DICE = ("batch", "sample")


def loss_for(network: str, tumour_dice: str = "batch"):
    """The loss of each network: BCE for the slice classifier, BCE + Dice for the mask networks;
    ``tumour_dice`` says how the segmenter's tumour channel is averaged (see the module's note)."""
    if tumour_dice not in TUMOUR_DICE:
        raise ValueError(f"tumour_dice must be one of {TUMOUR_DICE}, not {tumour_dice!r}")
    if network == "z_localiser":
        return bce_loss
    if network == "segmenter" and tumour_dice == "sample":
        return bce_sample_tumour_dice_loss
    if network in ("xy_localiser", "segmenter"):
        return bce_dice_loss
    raise ValueError(f"unknown network {network}")
