"""Compute device choice: ``auto`` takes CUDA when present; ``cuda`` without a GPU is an error."""

from __future__ import annotations

import contextlib
import logging

from .errors import DeviceError

log = logging.getLogger("KidneyTumorSeg")
CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto"):
    import torch

    name = (name or "auto").lower()
    if name not in CHOICES and not name.startswith("cuda:"):
        raise DeviceError(f"The device '{name}' is unknown; choose one of auto, cpu or cuda.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but no CUDA GPU is available to PyTorch; use --device cpu or auto."
            )
        return torch.device(name)
    return torch.device("cpu")


def autocast(device):
    """Mixed precision on CUDA (float16 activations), plain float32 elsewhere."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def free_cuda_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
