"""ResNet slice classifier: the z-localiser that says whether an axial slice shows a kidney.

ResNet34 topology (He et al.) with a configurable width and block counts, taking neighbouring
axial slices as input channels so the classifier sees a little through-plane context. The
feature extractor keeps torchvision's layout (bias-free convolutions followed by batch norm), so at
the paper's configuration it has exactly ResNet34's parameter count; the 1000-class head is replaced
by a single logit.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import BasicResBlock, ConvNormAct, init_conv_weights, max_pool


class ResNetClassifier(nn.Module):
    """ResNet of basic blocks -> global average pool -> one logit per image, shape (B,)."""

    def __init__(self, in_channels: int = 3, width: int = 64, blocks: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        if not blocks or min(blocks) < 1:
            raise ValueError("every ResNet stage needs at least one block")
        stem = nn.Sequential(
            ConvNormAct(2, in_channels, width, 7, stride=2, norm="batch", act="relu"),
            max_pool(2, 3, stride=2, padding=1),
        )
        stages = []
        channels = width
        for i, count in enumerate(blocks):
            out = width * 2**i
            stage = [BasicResBlock(2, channels, out, stride=1 if i == 0 else 2, norm="batch", act="relu")]
            stage += [BasicResBlock(2, out, out, norm="batch", act="relu") for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            channels = out
        self.features = nn.Sequential(
            stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        )
        self.head = nn.Linear(channels, 1)
        self.out_features = channels
        init_conv_weights(self, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))[:, 0]
