"""The 3D segmenter: an encoder-decoder of multiple-scale residual blocks (Qiao, Zhao & Liu).

Tensors are (B, C, Z, Y, X), numpy's zyx order, so a patch of 128 x 128 x 80 voxels (x, y, z) is a
tensor of spatial shape (80, 128, 128). Each level is an MRB; the encoder halves the grid with a
strided convolution, the decoder doubles it with a transposed convolution and concatenates the
skip. Deep paths carry deeper features (the bottleneck and each deeper decoder output) straight to
every shallower decoder level through one transposed convolution of stride 2**distance, added to
the main up-sampled features there, so coarse context and its gradient reach the full-resolution
decoder without passing through every intermediate level.

Output: two logit channels for sigmoid outputs, channel 0 the kidney-with-tumour region and
channel 1 the tumour (nested regions, trained with soft Dice + BCE). Instance norm, because patches
come in batches of one or two.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import (
    ConvNormAct,
    MultiScaleResBlock,
    UpSample,
    act_slope,
    conv,
    init_conv_weights,
    pad_to_multiple,
)

KIDNEY_CHANNEL = 0  # kidney including tumour
TUMOUR_CHANNEL = 1


def deep_path_key(source: int, target: int) -> str:
    """Name of the deep path from level ``source`` (deeper) to decoder level ``target``."""
    return f"{source}to{target}"


class MRBNet(nn.Module):
    """MRB encoder-decoder with optional deep transposed-convolution paths; (B, 1, Z, Y, X) -> (B, 2, Z, Y, X)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        width: int = 16,
        depth: int = 4,
        mrb_convs: int = 3,
        deep_paths: bool = True,
        norm: str = "instance",
        act: str = "leakyrelu",
    ):
        super().__init__()
        if depth < 1:
            raise ValueError("the segmenter needs at least one level")
        self.depth = depth
        self.use_deep_paths = deep_paths
        widths = [width * 2**level for level in range(depth)]
        self.widths = tuple(widths)

        def mrb(cin: int, cout: int) -> MultiScaleResBlock:
            return MultiScaleResBlock(3, cin, cout, mrb_convs, norm=norm, act=act)

        self.encoders = nn.ModuleList(
            mrb(in_channels if level == 0 else widths[level], widths[level]) for level in range(depth)
        )
        self.downs = nn.ModuleList(
            ConvNormAct(3, widths[level - 1], widths[level], 3, stride=2, norm=norm, act=act)
            for level in range(1, depth)
        )
        self.ups = nn.ModuleList(UpSample(3, widths[level + 1], widths[level], 2) for level in range(depth - 1))
        self.decoders = nn.ModuleList(mrb(2 * widths[level], widths[level]) for level in range(depth - 1))
        self.deep_paths = nn.ModuleDict()
        if deep_paths:
            for target in range(depth - 2):
                for source in range(target + 2, depth):
                    self.deep_paths[deep_path_key(source, target)] = UpSample(
                        3, widths[source], widths[target], 2 ** (source - target)
                    )
        self.head = conv(3, widths[0], out_channels, 1)
        init_conv_weights(self, negative_slope=act_slope(act))

    @property
    def divisor(self) -> int:
        """Inputs whose spatial sizes are multiples of this run without internal padding."""
        return 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, crop = pad_to_multiple(x, self.divisor)
        skips = []
        h = x
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                h = self.downs[level - 1](h)
            h = encoder(h)
            skips.append(h)
        # features[level]: the bottleneck, then each decoder output as it is made
        features = {self.depth - 1: h}
        for level in reversed(range(self.depth - 1)):
            up = self.ups[level](features[level + 1])
            for source in range(level + 2, self.depth):
                key = deep_path_key(source, level)
                if key in self.deep_paths:
                    up = up + self.deep_paths[key](features[source])
            h = self.decoders[level](torch.cat([up, skips[level]], dim=1))
            features[level] = h
        return self.head(h)[crop]
