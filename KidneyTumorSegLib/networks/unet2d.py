"""2D U-Net: the xy-localiser that marks kidney pixels on an axial slice.

Only a coarse mask is needed (one box per kidney is taken from it), so this is the plain U-Net of
Ronneberger et al.: two 3x3 conv-norm-ReLU per level, max-pool down, learned up-sampling with skip
concatenation. Slices of any size are accepted: they are padded to a multiple of 2**depth and the
logits cropped back, so callers never resize.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNormAct, UpSample, conv, init_conv_weights, max_pool, pad_to_multiple


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-norm-act units, one U-Net level."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str = "batch", act: str = "relu"):
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm=norm, act=act),
            ConvNormAct(spatial_dims, out_channels, out_channels, 3, norm=norm, act=act),
        )


class UNet2d(nn.Module):
    """U-Net with ``depth`` down-samplings and widths ``width * 2**level``; (B, C, H, W) -> (B, 1, H, W)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 32,
        depth: int = 4,
        norm: str = "batch",
        upsample: str = "transpose",
    ):
        super().__init__()
        if depth < 1:
            raise ValueError("the U-Net needs at least one down-sampling")
        self.depth = depth
        widths = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            DoubleConv(2, in_channels if level == 0 else widths[level - 1], widths[level], norm=norm)
            for level in range(depth + 1)
        )
        self.pool = max_pool(2, 2)
        self.ups = nn.ModuleList(UpSample(2, widths[level + 1], widths[level], 2, upsample) for level in range(depth))
        self.decoders = nn.ModuleList(DoubleConv(2, 2 * widths[level], widths[level], norm=norm) for level in range(depth))
        self.head = conv(2, widths[0], out_channels, 1)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, crop = pad_to_multiple(x, 2**self.depth)
        skips = []
        h = x
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                h = self.pool(h)
            h = encoder(h)
            skips.append(h)
        for level in reversed(range(self.depth)):
            h = self.decoders[level](torch.cat([self.ups[level](h), skips[level]], dim=1))
        return self.head(h)[crop]
