"""Label packs: the label maps of a ``PhantomSource`` resampled once onto the working grids and
stored, so phantoms can be built from them on a machine without SimpleITK or the original masks.

A pack is one compressed ``<case>.npz`` per label map (labels, origin and spacing on each grid)
plus ``pack.json`` (version, the grids it was made for, its cases, the source it came from).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import InputError
from ..volume import Volume
from .parallel import parallel_map
from .sources import PhantomSource
from .split import variant_of
from .working_grids import GRIDS, grids_signature

PACK_VERSION = 1


def _pack_one(args) -> tuple[str, str | None]:
    source, base, cfg, folder = args
    try:
        grids = source.label_grids(base, cfg)
    except Exception as err:  # one broken mask must not stop the pack
        return base, f"{type(err).__name__}: {err}"
    arrays = {}
    for name, vol in zip(GRIDS, grids):
        arrays[f"{name}_labels"] = np.ascontiguousarray(vol.array, dtype=np.uint8)
        arrays[f"{name}_origin"] = np.asarray(vol.origin, dtype=np.float64)
        arrays[f"{name}_spacing"] = np.asarray(vol.spacing, dtype=np.float64)
    tmp = Path(folder) / f".{base}.npz"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(Path(folder) / f"{base}.npz")
    return base, None


def write_label_pack(source: PhantomSource, cfg: ModelConfig, folder, workers: int = 0) -> dict[str, str]:
    """Every label map of ``source`` on ``cfg``'s two working grids, one compressed ``.npz`` per
    case plus ``pack.json``; returns ``{case: error}`` for maps that could not be read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(source, base, cfg, str(folder)) for base in source.base_ids()]
    done = list(parallel_map(_pack_one, jobs, workers))
    errors = {base: err for base, err in done if err}
    meta = {
        "version": PACK_VERSION,
        "grids": grids_signature(cfg),
        "cases": [base for base, err in done if not err],
        "source": source.describe(),
    }
    (folder / "pack.json").write_text(json.dumps(meta, indent=1))
    return errors


class PackedPhantomSource(PhantomSource):
    """Phantoms around the label maps of a pack written by ``write_label_pack``.

    Needs neither the original masks nor SimpleITK: the labels already lie on the canonical working
    grids, so building a case is phantom generation alone. The pack's grids must be ``cfg``'s.
    """

    kind = "phantom-pack"

    def __init__(self, folder, seed: int = 0, variants: int = 1, phantom_config=None, slice_thickness_mm=None,
                 acquisition_pixel_mm=None, localiser_only: bool = False):
        super().__init__(None, 0, seed, variants, phantom_config=phantom_config, slice_thickness_mm=slice_thickness_mm,
                         acquisition_pixel_mm=acquisition_pixel_mm, localiser_only=localiser_only)
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "pack.json").read_text())
        except (OSError, ValueError):
            raise InputError(f"{self.folder} is not a label pack (no readable pack.json).") from None
        if self.meta.get("version") != PACK_VERSION:
            raise InputError(f"The label pack {self.folder} has version {self.meta.get('version')}, not {PACK_VERSION}.")
        self._bases = list(self.meta["cases"])

    def check_grids(self, cfg: ModelConfig) -> None:
        if self.meta["grids"] != grids_signature(cfg):
            raise InputError(f"The label pack {self.folder} was made for other working grids than this configuration's.")

    def base_ids(self) -> list[str]:
        return list(self._bases)

    def signature(self, case_id: str) -> dict:
        base, variant = variant_of(case_id)
        path = self.folder / f"{base}.npz"
        sig = {"kind": self.kind, "case": base, "variant": variant, "seed": self.seed,
               "pack": str(self.folder.resolve()), "bytes": path.stat().st_size if path.exists() else -1}
        sig.update(self._phantom_signature())
        return sig

    def label_grids(self, base: str, cfg: ModelConfig) -> tuple[Volume, Volume]:
        if base not in self._bases:
            raise InputError(f"The label pack {self.folder} has no case {base}.")
        self.check_grids(cfg)
        with np.load(self.folder / f"{base}.npz", allow_pickle=False) as data:
            return tuple(
                Volume(data[f"{g}_labels"], tuple(data[f"{g}_spacing"]), tuple(data[f"{g}_origin"]), np.eye(3))
                for g in GRIDS
            )

    def describe(self) -> dict:
        d = super().describe()
        d.update({"kind": self.kind, "pack": str(self.folder), "masks": self._bases,
                  "mask_folders": self.meta.get("source", {}).get("mask_folders", [])})
        return d

