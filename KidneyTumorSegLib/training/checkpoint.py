"""Resumable checkpoints that are data, not code: tensors in safetensors, everything else in JSON.

A checkpoint is a nested structure of dicts, lists, tensors and plain numbers/strings (model and
optimiser state dicts, the schedule, the gradient scaler, RNG states, epoch, metrics history).
Tensors go into the safetensors body under generated names; the structure, with references to
them, goes into the header's metadata as JSON. Dict keys keep their type (optimiser states are keyed
by int). Anything else (an arbitrary object) is refused at save time, and loading never unpickles.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

from ..errors import KidneyTumorSegError

META_KEY = "kidney_tumor_seg_checkpoint"
FORMAT = "kidney-tumor-seg-checkpoint"


class CheckpointError(KidneyTumorSegError):
    """A training checkpoint is missing, damaged or of another kind."""

    exit_code = 3


def _encode(obj, tensors: dict):
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors):06d}"
        tensors[key] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return _encode(torch.from_numpy(np.ascontiguousarray(obj)), tensors)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"checkpoint dict keys must be plain values, got {type(k).__name__}")
            items.append([k, _encode(v, tensors)])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [_encode(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"a checkpoint holds tensors and plain values only, not {type(obj).__name__}")


def _decode(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_decode(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        raise CheckpointError("The checkpoint's structure is not one this version writes.")
    return obj


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` atomically (a crash mid-write leaves the previous checkpoint intact)."""
    from safetensors.torch import save_file

    from ..io import atomic_output

    tensors: dict = {}
    structure = _encode(state, tensors)
    meta = json.dumps({"format": FORMAT, "state": structure})
    path = Path(path)
    with atomic_output(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: meta})
    return path


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The checkpoint {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            meta = (fh.metadata() or {}).get(META_KEY)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:  # safetensors has its own error types for damaged files
        raise CheckpointError(f"The checkpoint {path} is damaged ({type(err).__name__}).") from None
    try:
        header = json.loads(meta or "")
    except json.JSONDecodeError:
        header = {}
    if header.get("format") != FORMAT:
        raise CheckpointError(f"The file {path} is not a KidneyTumorSeg training checkpoint.")
    return _decode(header["state"], tensors)


def rng_state() -> dict:
    """Every RNG a run draws from: torch (CPU and CUDA), numpy's legacy global, Python's."""
    import torch

    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _numpy_state() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return [name, np.asarray(keys, dtype=np.int64), int(pos), int(has_gauss), float(gauss)]


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"].to(torch.uint8))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if hasattr(keys, "numpy") else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in cuda])
