"""Configurable building blocks shared by the three networks.

Every block takes ``spatial_dims`` (2 or 3) so the 2D localisers and the 3D segmenter are composed
from the same few parts, and norm / activation are chosen by name so a network can switch from batch
norm (2D, batches of many slices) to instance or group norm (3D, batches of one or two patches)
without new code. Nothing here uses ``.view``: tensors may arrive channels-last.
"""

from __future__ import annotations

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_INTERP = {2: "bilinear", 3: "trilinear"}


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")


def conv(spatial_dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv2d`` or ``nn.Conv3d``, so blocks need not branch on dimension."""
    _check_dims(spatial_dims)
    return _CONV[spatial_dims](*args, **kwargs)


def max_pool(spatial_dims: int, kernel_size: int = 2, stride: int | None = None, padding: int = 0) -> nn.Module:
    _check_dims(spatial_dims)
    return _POOL[spatial_dims](kernel_size, stride=stride, padding=padding)


def _groups(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` not above ``max_groups``: GroupNorm needs an exact split."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(norm: str | None, spatial_dims: int, channels: int) -> nn.Module:
    """Normalisation by name: ``batch``, ``instance`` (affine), ``group`` or ``None``."""
    _check_dims(spatial_dims)
    if norm is None or norm == "none":
        return nn.Identity()
    if norm == "batch":
        return _BATCH[spatial_dims](channels)
    if norm == "instance":
        return _INSTANCE[spatial_dims](channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(_groups(channels), channels)
    raise ValueError(f"unknown normalisation '{norm}'")


# Negative slope of each activation: the activation uses it and He initialisation must assume it.
ACT_SLOPES = {"relu": 0.0, "leakyrelu": 0.01}


def act_slope(act: str | None) -> float:
    """The negative slope of activation ``act`` (0 for ReLU and for no activation)."""
    return ACT_SLOPES.get(act, 0.0)


def make_act(act: str | None) -> nn.Module:
    """Activation by name: ``relu``, ``leakyrelu`` (slope ``ACT_SLOPES["leakyrelu"]``) or ``None``."""
    if act is None or act == "none":
        return nn.Identity()
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leakyrelu":
        return nn.LeakyReLU(ACT_SLOPES["leakyrelu"], inplace=True)
    raise ValueError(f"unknown activation '{act}'")


class ConvNormAct(nn.Sequential):
    """Convolution, normalisation, activation: the unit every block is made of.

    The convolution has no bias when a normalisation follows, because the norm's shift makes it
    redundant (and ResNet34's parameter count depends on it).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm: str | None = "instance",
        act: str | None = "relu",
        padding: int | None = None,
    ):
        if padding is None:
            padding = kernel_size // 2
        has_norm = norm not in (None, "none")
        super().__init__()
        self.conv = conv(
            spatial_dims, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not has_norm
        )
        self.norm = make_norm(norm, spatial_dims, out_channels)
        self.act = make_act(act)


class BasicResBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions plus a shortcut (1x1 projection when shape changes)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm: str | None = "batch",
        act: str | None = "relu",
    ):
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, 3, stride=stride, norm=norm, act=act)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, norm=norm, act=None)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvNormAct(
                spatial_dims, in_channels, out_channels, 1, stride=stride, norm=norm, act=None
            )
        else:
            self.shortcut = nn.Identity()
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class MultiScaleResBlock(nn.Module):
    """Multiple-scale residual block (MRB) of Qiao, Zhao & Liu.

    A cascade of ``n_convs`` 3x3x3 conv-norm-act units, each fed the previous one's output, so the
    k-th output sees a (2k+1)^3 neighbourhood. All cascade outputs are concatenated (the block keeps
    every scale, not just the widest), reduced by a 1x1x1 convolution and added to a shortcut
    (identity, or a 1x1x1 projection when the channel count changes); the activation comes last.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        n_convs: int = 3,
        norm: str | None = "instance",
        act: str | None = "leakyrelu",
    ):
        super().__init__()
        if n_convs < 1:
            raise ValueError("an MRB needs at least one convolution")
        self.cascade = nn.ModuleList(
            ConvNormAct(spatial_dims, in_channels if i == 0 else out_channels, out_channels, 3, norm=norm, act=act)
            for i in range(n_convs)
        )
        # Plain convolution with bias and no norm: the block's residual identity depends on it.
        self.reducer = conv(spatial_dims, n_convs * out_channels, out_channels, 1, bias=True)
        if in_channels != out_channels:
            self.shortcut: nn.Module = ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm=norm, act=None)
        else:
            self.shortcut = nn.Identity()
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = []
        h = x
        for unit in self.cascade:
            h = unit(h)
            scales.append(h)
        return self.act(self.reducer(torch.cat(scales, dim=1)) + self.shortcut(x))


class UpSample(nn.Module):
    """Up-sampling by an integer ``scale`` that also changes the channel count.

    ``transpose``: a transposed convolution with kernel = stride = scale (learned, no overlap, so no
    checkerboard). ``linear``: (bi/tri)linear interpolation followed by a 1x1 convolution, for when
    learned up-sampling is not wanted.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale: int = 2, mode: str = "transpose"):
        super().__init__()
        _check_dims(spatial_dims)
        if mode == "transpose":
            self.up: nn.Module = _CONV_T[spatial_dims](in_channels, out_channels, scale, stride=scale)
        elif mode == "linear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=scale, mode=_INTERP[spatial_dims], align_corners=False),
                conv(spatial_dims, in_channels, out_channels, 1),
            )
        else:
            raise ValueError(f"unknown up-sampling mode '{mode}'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial dims to a multiple of ``multiple``; return the padded tensor and the crop back.

    Padding is split evenly on both sides and replicates the border, so the network sees no
    artificial edge; the returned slices recover exactly the input's extent.
    """
    spatial = x.shape[2:]
    pads: list[int] = []
    crop: list[slice] = [slice(None), slice(None)]
    for size in spatial:
        total = (-size) % multiple
        before = total // 2
        crop.append(slice(before, before + size))
        pads.append((before, total - before))
    if not any(p[0] or p[1] for p in pads):
        return x, tuple(crop)
    flat: list[int] = []
    for before, after in reversed(pads):  # F.pad lists the last dimension first
        flat.extend((before, after))
    return nn.functional.pad(x, flat, mode="replicate"), tuple(crop)


def init_conv_weights(module: nn.Module, negative_slope: float = 0.0, mode: str = "fan_in") -> None:
    """He initialisation for convolutions and unit/zero for norms: deep nets start well-scaled.

    Transposed convolutions keep PyTorch's default: He's fan formulas assume a forward convolution
    and would shrink a stride-8 deep path by its kernel volume.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, a=negative_slope, mode=mode, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
