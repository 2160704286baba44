"""Weights bundles: the three networks in one safetensors file with a JSON header.

Weights are data, not code: the file is parsed by ``safetensors`` (a length-prefixed JSON header and
raw tensor bytes), never unpickled, so loading a planted pickle can never execute anything. The
header carries the network configuration, preprocessing, provenance, metrics and a SHA-256 checksum
of the tensor bytes, checked at every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import WeightsError

FORMAT = "kidney-tumor-seg-weights"
FORMAT_VERSION = 1
META_KEY = "kidney_tumor_seg"
NETWORKS = ("z_localiser", "xy_localiser", "segmenter")
BUNDLED_NAME = "kidney_tumor_seg.safetensors"
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class Bundle:
    """A loaded weights file: configuration, one state dict per network, and the header."""

    config: ModelConfig
    state_dicts: dict[str, dict]
    header: dict = field(default_factory=dict)
    path: Path | None = None

    def identity(self) -> dict:
        """What a report needs to say which weights it measured: the file as given, the
        provenance name and the tensors' checksum, which still identify the weights after the
        file (often a temporary candidate) is moved or gone."""
        return {"weights": str(self.path) if self.path else None,
                "weights_name": self.header.get("provenance", {}).get("name"),
                "weights_sha256": self.header.get("sha256")}


def bundled_models_dir() -> Path | None:
    """The folder of the bundled weights and their model card, the same lookup for every install.

    A wheel (``pip install .``, a built wheel) carries ``Resources/Models`` as
    ``KidneyTumorSegLib/models``; a source checkout and the Slicer extension keep it beside the
    library as ``Resources/Models``.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "models", here.parent / "Resources" / "Models"):
        if candidate.is_dir():
            return candidate
    return None


def bundled_weights_path() -> Path | None:
    """The bundled weights (``KIDNEY_TUMOR_SEG_WEIGHTS`` overrides), or None if this install has none."""
    env = os.environ.get("KIDNEY_TUMOR_SEG_WEIGHTS")
    if env:
        return Path(env)
    folder = bundled_models_dir()
    if folder is not None and (folder / BUNDLED_NAME).exists():
        return folder / BUNDLED_NAME
    return None


def model_card_path() -> Path | None:
    """The model card of the bundled weights: what they were trained on and how well they do."""
    folder = bundled_models_dir()
    if folder is not None and (folder / "MODEL_CARD.md").exists():
        return folder / "MODEL_CARD.md"
    return None


def _checksum(tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        digest.update(name.encode())
        digest.update(str(arr.dtype).encode())
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def save_bundle(
    path: str | os.PathLike,
    config: ModelConfig,
    state_dicts: dict[str, dict],
    provenance: dict | None = None,
    metrics: dict | None = None,
    half: bool = False,
) -> Path:
    """Write the networks' weights and their configuration to one safetensors file, atomically."""
    import torch
    from safetensors.numpy import save_file

    from .io import atomic_output

    missing = [n for n in NETWORKS if n not in state_dicts]
    if missing:
        raise ValueError(f"state dicts missing for {missing}")
    tensors: dict[str, np.ndarray] = {}
    for net in NETWORKS:
        for key, value in state_dicts[net].items():
            t = value.detach().cpu()
            if half and t.is_floating_point():
                t = t.to(torch.float16)
            tensors[f"{net}.{key}"] = t.numpy()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "provenance": provenance or {},
        "metrics": metrics or {},
        "sha256": _checksum(tensors),
    }
    path = Path(path)
    with atomic_output(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(header)})
    return path


def _sniff(path: Path) -> None:
    """Refuse anything that is not a safetensors file before handing it to a parser.

    The safetensors layout (an 8-byte header length, then a JSON header) is recognised first: its
    length's first byte can be any value, including those that start a pickle or a zip archive.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if n <= _MAX_HEADER and head[8:9] == b"{":
            if 8 + n > size:
                raise WeightsError(f"The weights file {path} is truncated.")
            return
    if head[:1] == b"\x80" or head[:2] == b"PK" or head[:1] in (b"(", b"c", b"}"):
        raise WeightsError(
            f"The weights file {path} is a pickle or zip archive, not a KidneyTumorSeg weights bundle; "
            "it was not loaded, because loading such files can execute code."
        )
    if len(head) < 9:
        raise WeightsError(f"The weights file {path} is truncated or empty.")
    raise WeightsError(f"The weights file {path} is not a safetensors weights bundle.")


def load_bundle(path: str | os.PathLike | None = None) -> Bundle:
    """Read and verify a bundle (``None``: the bundled weights). Never executes code from the file."""
    import torch
    from safetensors import safe_open

    if path is None:
        path = bundled_weights_path()
        if path is None:
            raise WeightsError(
                "No bundled weights were found in Resources/Models; pass --weights FILE "
                "or train them with 'kidney-tumor-seg train'."
            )
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"The weights file {path} does not exist.")
    _sniff(path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except WeightsError:
        raise
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise WeightsError(f"The weights file {path} is corrupt or truncated ({type(err).__name__}).") from None
    try:
        header = json.loads(meta[META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise WeightsError(f"The weights file {path} carries no KidneyTumorSeg header.") from None
    if header.get("format") != FORMAT:
        raise WeightsError(f"The weights file {path} is not a KidneyTumorSeg weights bundle.")
    if header.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"The weights file {path} has format version {header.get('format_version')}, "
            f"but this version of KidneyTumorSeg reads version {FORMAT_VERSION}."
        )
    if _checksum(tensors) != header.get("sha256"):
        raise WeightsError(f"The weights file {path} fails its checksum: it was modified or damaged.")
    try:
        config = ModelConfig.from_dict(header["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"The weights file {path} has an incompatible configuration ({err}).") from None
    state_dicts: dict[str, dict] = {n: {} for n in NETWORKS}
    for key, arr in tensors.items():
        net, _, name = key.partition(".")
        if net not in state_dicts:
            raise WeightsError(f"The weights file {path} holds an unknown network '{net}'.")
        state_dicts[net][name] = torch.from_numpy(np.array(arr)).float() if arr.dtype == np.float16 else (
            torch.from_numpy(np.array(arr))
        )
    return Bundle(config, state_dicts, header, path)


def build_networks(config: ModelConfig) -> dict:
    """Fresh networks of the shapes ``config`` describes."""
    from .networks import build_segmenter, build_xy_localiser, build_z_localiser

    return {
        "z_localiser": build_z_localiser(config.z_localiser),
        "xy_localiser": build_xy_localiser(config.xy_localiser),
        "segmenter": build_segmenter(config.segmenter),
    }


def networks_from_bundle(bundle: Bundle) -> dict:
    """Networks built from the bundle's configuration, with its weights, in eval mode."""
    nets = build_networks(bundle.config)
    for name, net in nets.items():
        try:
            net.load_state_dict(bundle.state_dicts[name], strict=True)
        except RuntimeError:
            where = bundle.path or "the bundle"
            raise WeightsError(
                f"The weights for the {name.replace('_', ' ')} in {where} do not match its configuration."
            ) from None
        net.eval()
    return nets


def seeded_bundle(config: ModelConfig | None = None, seed: int = 0) -> Bundle:
    """Seeded initial weights: lets the engine run end to end before trained weights exist."""
    import torch

    config = config or ModelConfig.compact()
    torch.manual_seed(seed)
    nets = build_networks(config)
    return Bundle(
        config,
        {k: v.state_dict() for k, v in nets.items()},
        {"provenance": {"kind": "seeded-initial", "seed": seed}},
    )
