"""The field's reference: nnU-Net v2's 3d_fullres network for KiTS19, run the way nnU-Net runs it.

Network: ``PlainConvUNet`` from ``dynamic-network-architectures`` (the package nnU-Net v2 builds its
networks with): 6 stages of 32-64-128-256-320-320 features, two 3x3x3 convolutions per stage,
instance norm, leaky ReLU, patch 128^3, 3 classes. Random weights: the time of a forward pass does
not depend on the values.

Inference, as nnU-Net's predictor does it: read the CT, resample to 1 mm, normalise, run a sliding
window over the whole volume with 50 % overlap, accumulate Gaussian-weighted logits (float16
accumulators), divide, resample the logits back to the input grid, softmax, argmax, write.

On a CPU the full sliding window takes tens of minutes, so only a sample of windows is run (after
one warm-up window) and the network and accumulation times are scaled by the exact window count;
everything else (reading, resampling, dividing, resampling back, writing) runs in full on the real
arrays. Where this deviates from nnU-Net it makes the reference cheaper, never dearer: trilinear
resampling instead of nnU-Net's third-order splines, and no test-time mirroring (nnU-Net's default
runs 8 mirrored passes per window; the report gives that estimate separately).

Run as ``python -m benchmarks.reference --input CT.nii.gz --output out.nii.gz --json R.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class ReferenceSpec:
    """Shape of the reference network and its sliding window."""

    name: str = "nnU-Net v2 3d_fullres (KiTS19): PlainConvUNet"
    features: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    patch_zyx: tuple[int, int, int] = (128, 128, 128)
    spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 1.0)
    num_classes: int = 3
    step_fraction: float = 0.5  # 50 % overlap
    mirror_passes: int = 8  # nnU-Net's default test-time mirroring over 3 axes (not run here)
    # HU clip and z-score as nnU-Net's CT normalisation (values of the dataset fingerprint's kind)
    clip_hu: tuple[float, float] = (-79.0, 304.0)
    mean_std: tuple[float, float] = (101.0, 76.9)
    extra: dict = field(default_factory=dict)


SPECS = {
    "kits19": ReferenceSpec(),
    # Only for the harness's own test: same code path, a network that runs in milliseconds.
    "tiny": ReferenceSpec(name="tiny test network (not a reference)", features=(4, 8, 16), patch_zyx=(16, 16, 16),
                          spacing_xyz=(4.0, 4.0, 4.0)),
}


def build_network(spec: ReferenceSpec):
    """nnU-Net's plain U-Net with ``spec``'s stages (stride 1 first, then 2 at each stage)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    n = len(spec.features)
    return PlainConvUNet(
        input_channels=1,
        n_stages=n,
        features_per_stage=list(spec.features),
        conv_op=nn.Conv3d,
        kernel_sizes=3,
        strides=[1] + [2] * (n - 1),
        n_conv_per_stage=2,
        num_classes=spec.num_classes,
        n_conv_per_stage_decoder=2,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )


def axis_starts(size: int, patch: int, step_fraction: float = 0.5) -> list[int]:
    """Window starts along one axis: the fewest windows whose step is at most ``step_fraction``
    of the patch, spread evenly so the first starts at 0 and the last ends at ``size``."""
    if size <= patch:
        return [0]
    target = patch * step_fraction
    n = int(math.ceil((size - patch) / target)) + 1
    step = (size - patch) / (n - 1)
    return [int(round(i * step)) for i in range(n)]


def window_starts(shape_zyx, patch_zyx, step_fraction: float = 0.5) -> list[tuple[int, int, int]]:
    """All window starts (z, y, x) of a full-volume sliding window."""
    per_axis = [axis_starts(s, p, step_fraction) for s, p in zip(shape_zyx, patch_zyx)]
    return [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]


def gaussian_importance(patch_zyx, sigma_fraction: float = 1.0 / 8, peak: float = 10.0) -> np.ndarray:
    """Separable Gaussian over the patch (sigma = patch / 8), peak ``peak``, no zeros."""
    w = np.ones(tuple(patch_zyx), np.float64)
    for axis, p in enumerate(patch_zyx):
        c = (p - 1) / 2.0
        g = np.exp(-0.5 * ((np.arange(p) - c) / (p * sigma_fraction)) ** 2)
        shape = [1, 1, 1]
        shape[axis] = p
        w = w * g.reshape(shape)
    w = w / w.max() * peak
    w = np.maximum(w, w[w > 0].min())
    return w.astype(np.float32)


def resampled_size(size_xyz, spacing_xyz, target_xyz) -> tuple[int, int, int]:
    """Voxels along x, y, z after resampling to ``target_xyz`` (same physical extent)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(size_xyz, spacing_xyz, target_xyz))


def count_windows(shape_zyx, spacing_xyz, spec: ReferenceSpec = SPECS["kits19"]) -> tuple[tuple[int, int, int], int]:
    """The 1 mm grid (z, y, x) of a volume and its full sliding window's window count."""
    size_xyz = resampled_size(tuple(shape_zyx)[::-1], spacing_xyz, spec.spacing_xyz)
    grid = tuple(max(n, p) for n, p in zip(size_xyz[::-1], spec.patch_zyx))  # padded up to a patch
    return grid, len(window_starts(grid, spec.patch_zyx, spec.step_fraction))


def _resample(image, size_xyz, spacing_xyz, interpolator):
    """SimpleITK resampling onto a grid of the same origin and direction (multithreaded)."""
    import SimpleITK as sitk

    ref = sitk.Image([int(s) for s in size_xyz], sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(s) for s in spacing_xyz))
    ref.SetOrigin(image.GetOrigin())
    ref.SetDirection(image.GetDirection())
    return sitk.Resample(image, ref, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)


def sample_indices(n_windows: int, n_samples: int) -> tuple[int, list[int]]:
    """A warm-up window (the middle one) and ``n_samples`` others spread over the whole volume."""
    warm = n_windows // 2
    if n_samples <= 0 or n_samples >= n_windows:
        return warm, list(range(n_windows))
    picks = np.linspace(0, n_windows - 1, n_samples + 2)[1:-1]
    chosen: list[int] = []
    for p in picks:
        i = int(round(p))
        while i in chosen or (i == warm and n_windows > n_samples):
            i = (i + 1) % n_windows
        chosen.append(i)
    return warm, chosen


def channel_argmax(probs: np.ndarray) -> np.ndarray:
    """argmax over axis 0 as uint8, by whole-array comparisons (torch's strided argmax over the
    channel axis is several times slower on the CPU; this keeps the reference a lower bound)."""
    labels = np.zeros(probs.shape[1:], np.uint8)
    best = probs[0].copy()
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        labels[better] = c
        np.maximum(best, probs[c], out=best)
    return labels


def run_reference(input_path: str, output_path: str, spec: ReferenceSpec, device: str = "cpu",
                  samples: int = 3, seed: int = 0) -> dict:
    """Time the reference on one CT file; returns timings (s), counts and memory."""
    import SimpleITK as sitk
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    times: dict[str, float] = {}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    image = sitk.ReadImage(str(input_path), sitk.sitkFloat32)
    times["read"] = time.perf_counter() - t0

    # Preprocessing: resample to 1 mm (trilinear; nnU-Net uses cubic splines, which cost more), normalise.
    t0 = time.perf_counter()
    size_xyz = resampled_size(image.GetSize(), image.GetSpacing(), spec.spacing_xyz)
    data = sitk.GetArrayFromImage(_resample(image, size_xyz, spec.spacing_xyz, sitk.sitkLinear))
    np.clip(data, spec.clip_hu[0], spec.clip_hu[1], out=data)
    data -= np.float32(spec.mean_std[0])
    data /= np.float32(spec.mean_std[1])
    pad = [(0, max(0, p - s)) for s, p in zip(data.shape, spec.patch_zyx)]
    if any(b for _, b in pad):
        data = np.pad(data, pad, mode="constant")
    data_t = torch.from_numpy(data)
    times["preprocess"] = time.perf_counter() - t0

    torch.manual_seed(seed)
    net = build_network(spec).to(dev).eval()
    n_params = sum(p.numel() for p in net.parameters())

    starts = window_starts(data.shape, spec.patch_zyx, spec.step_fraction)
    t0 = time.perf_counter()
    logits = torch.zeros((spec.num_classes, *data.shape), dtype=torch.half, device=dev)
    n_pred = torch.zeros(data.shape, dtype=torch.half, device=dev)
    gauss = torch.from_numpy(gaussian_importance(spec.patch_zyx)).to(dev).half()
    data_dev = data_t.to(dev)
    sync()
    times["allocate"] = time.perf_counter() - t0

    run_all = cuda or samples <= 0 or samples >= len(starts)
    warm, chosen = sample_indices(len(starts), 0 if run_all else samples)
    net_times, acc_times = [], []
    pz, py, px = spec.patch_zyx
    amp = torch.autocast("cuda", dtype=torch.float16) if cuda else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), amp:
        for k, i in enumerate([warm] + chosen):
            z, y, x = starts[i]
            sl = (slice(z, z + pz), slice(y, y + py), slice(x, x + px))
            t0 = time.perf_counter()
            pred = net(data_dev[sl][None, None])[0]
            sync()
            t1 = time.perf_counter()
            logits[(slice(None), *sl)] += pred.half() * gauss
            n_pred[sl] += gauss
            sync()
            t2 = time.perf_counter()
            if k > 0:  # the first is the warm-up
                net_times.append(t1 - t0)
                acc_times.append(t2 - t1)
    n = len(starts)
    per_net = float(np.median(net_times))
    per_acc = float(np.median(acc_times))
    if run_all:
        times["network"] = float(np.sum(net_times))
        times["accumulate"] = float(np.sum(acc_times))
    else:
        times["network"] = per_net * n
        times["accumulate"] = per_acc * n

    # Export: divide, logits back to the input grid, softmax, argmax, write.
    t0 = time.perf_counter()
    logits /= n_pred
    del n_pred
    logits = logits.float().cpu().numpy()
    logits = logits[(slice(None), *(slice(0, s) for s in size_xyz[::-1]))]
    sync()
    times["divide"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_size = image.GetSize()
    back = np.empty((spec.num_classes, *out_size[::-1]), np.float32)
    for c in range(spec.num_classes):
        ch = sitk.GetImageFromArray(np.ascontiguousarray(logits[c]))
        ch.SetSpacing(tuple(float(s) for s in spec.spacing_xyz))
        ch.SetOrigin(image.GetOrigin())
        ch.SetDirection(image.GetDirection())
        back[c] = sitk.GetArrayFromImage(_resample(ch, out_size, image.GetSpacing(), sitk.sitkLinear))
    del logits
    probs = torch.softmax(torch.from_numpy(back), dim=0).numpy()
    del back
    labels = channel_argmax(probs)
    del probs
    times["resample_back"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(output_path), True)
    times["write"] = time.perf_counter() - t0
    times["total"] = sum(times.values())

    result = {
        "spec": asdict(spec),
        "parameters": n_params,
        "grid_zyx": list(data.shape),
        "windows": n,
        "timed_windows": len(net_times),
        "warmup_windows": 1,
        "sampled": not run_all,
        "network_per_window_s": per_net,
        "accumulate_per_window_s": per_acc,
        "network_window_times_s": [round(t, 4) for t in net_times],
        "times_s": {k: round(v, 4) for k, v in times.items()},
        "total_with_mirroring_s": round(times["total"] + (spec.mirror_passes - 1) * times["network"], 3),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "device": str(dev),
    }
    if cuda:
        result["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(dev))
        result["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved(dev))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reference", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--json", required=True, help="where to write the measurements")
    p.add_argument("--device", default="cpu")
    p.add_argument("--windows", type=int, default=3, help="timed windows after one warm-up (0: all)")
    p.add_argument("--spec", choices=sorted(SPECS), default="kits19")
    args = p.parse_args(argv)
    result = run_reference(args.input, args.output, SPECS[args.spec], args.device, args.windows)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
