"""The three networks, built from their configuration dataclasses.

``weights.build_networks`` calls these builders, so a weights header alone determines the shapes.
Each builder returns a fresh module whose initial weights depend only on ``torch.manual_seed``.
"""

from __future__ import annotations

from torch import nn

from ..config import SegmenterConfig, XYLocaliserConfig, ZLocaliserConfig
from .blocks import BasicResBlock, ConvNormAct, MultiScaleResBlock, UpSample
from .mrb_net import KIDNEY_CHANNEL, TUMOUR_CHANNEL, MRBNet
from .resnet import ResNetClassifier
from .unet2d import UNet2d

__all__ = [
    "KIDNEY_CHANNEL",
    "TUMOUR_CHANNEL",
    "BasicResBlock",
    "ConvNormAct",
    "MRBNet",
    "MultiScaleResBlock",
    "ResNetClassifier",
    "UNet2d",
    "UpSample",
    "build_segmenter",
    "build_xy_localiser",
    "build_z_localiser",
    "count_parameters",
]


def build_z_localiser(cfg: ZLocaliserConfig) -> nn.Module:
    """ResNet slice classifier: (B, 2*context+1, H, W) slices -> (B,) kidney-present logits."""
    return ResNetClassifier(in_channels=cfg.in_channels, width=cfg.width, blocks=tuple(cfg.blocks))


def build_xy_localiser(cfg: XYLocaliserConfig) -> nn.Module:
    """2D U-Net: (B, 1, H, W) slices of any size -> (B, 1, H, W) kidney logits."""
    return UNet2d(in_channels=1, out_channels=1, width=cfg.width, depth=cfg.depth)


def build_segmenter(cfg: SegmenterConfig) -> nn.Module:
    """MRB net: (B, 1, Z, Y, X) patches -> (B, 2, Z, Y, X) logits (kidney+tumour region, tumour)."""
    return MRBNet(
        in_channels=1,
        out_channels=2,
        width=cfg.width,
        depth=cfg.depth,
        mrb_convs=cfg.mrb_convs,
        deep_paths=cfg.deep_paths,
    )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
