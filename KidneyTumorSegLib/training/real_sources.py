"""Training cases from real anatomy: CTs painted in real bodies, and real labelled CT scans.

- ``RealBodySource``: ``phantoms.realbody`` CTs, one per (body, KiTS mask, variant). A body is a
  whole-anatomy label map (TotalSegmentator); the KiTS mask gives the kidneys and tumours, moved
  to where the body's kidneys lie. Ids look like ``s0001@case_00012~v3``; the split group is the
  KiTS mask and the body together, so no validation case shares both with a training case.
- ``RealScanSource``: real CT scans with label maps (``labelled_scans``), for real texture. A scan
  can be listed ``repeats`` times (``ircadb1_1~r2``) so a handful of real scans are drawn as often
  as the hundreds of painted ones; the sampler's augmentation makes each draw different.

Both build a ``CachedCase`` on the two working grids, like every other source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import InputError
from ..volume import Volume
from .seeds import stable_seed
from .sources import CaseSource
from .split import variant_of, with_variants
from .working_grids import CachedCase, prepare_case

BODY_SEP = "@"
REPEAT_SEP = "~r"


def mask_of(case_id: str) -> str:
    """The label map a training case was built from: ``s0001@case_00012~v3`` -> ``case_00012``,
    ``case_00012~v1`` -> ``case_00012``."""
    return case_id.split("~")[0].split(BODY_SEP)[-1]


def scan_of(case_id: str) -> str:
    """The real scan or body a training case came from: ``ircadb1_1~r2`` -> ``ircadb1_1``,
    ``totalseg_s0009@case_00012`` -> ``totalseg_s0009``."""
    return case_id.split("~")[0].split(BODY_SEP)[0]


def kits_on_grid(path: Path, spacing_mm) -> tuple[Volume, float]:
    """A KiTS19/KiTS23 mask on a canonical grid (cysts as kidney), and the LPS x of the midline of
    the scan it was drawn on: the full grid's centre (KiTS23 crops: from ``full_geometry.json``)."""
    import json

    from ..io import read_volume
    from ..resampling import to_canonical

    mask = read_volume(path)
    mask = mask.with_array(np.where(np.asarray(mask.array) == 3, 1, mask.array).astype(np.uint8))
    lo, hi = mask.physical_bounds()
    midline = float(0.5 * (lo[0] + hi[0]))
    geometry = Path(path).parent.parent / "full_geometry.json"
    if geometry.exists():
        full = json.loads(geometry.read_text()).get(Path(path).parent.name)
        if full:
            size = np.asarray(full["full_size_xyz"], float)
            d = np.asarray(full["direction"], float).reshape(3, 3)
            centre = np.asarray(full["full_origin"], float) + d @ (np.asarray(full["spacing"], float) * (size - 1) / 2)
            midline = float(centre[0])
    canon = to_canonical(mask, spacing_mm, "nearest", 0)
    return canon.with_array(np.asarray(canon.array).astype(np.uint8)), midline


class RealBodySource(CaseSource):
    """Painted CTs: every body with every assigned KiTS mask, ``variants`` draws each.

    ``bodies``: name -> a TotalSegmentator-style label map, or ``(scheme, organ_map, donor_map)``
    for an organ-only map (BTCV, AMOS) completed with a TotalSegmentator donor's skeleton.
    """

    kind = "real_bodies"
    cached_bodies = 6

    def __init__(self, bodies: dict, pairs: list[tuple[str, str]], masks: dict[str, str | Path],
                 seed: int = 0, variants: int = 1, paint_config=None):
        self.bodies = {k: (Path(v) if isinstance(v, (str, Path)) else tuple(v)) for k, v in bodies.items()}
        self.masks = {k: Path(v) for k, v in masks.items()}
        self.pairs = [(b, m) for b, m in pairs]
        for b, m in self.pairs:
            if b not in self.bodies or (m and m not in self.masks):
                raise InputError(f"The real-body source has no body {b} or mask {m}.")
        self.seed = int(seed)
        self.variants = max(1, int(variants))
        self.paint_config = paint_config
        self._body_cache: dict = {}

    def case_ids(self) -> list[str]:
        return with_variants([f"{b}{BODY_SEP}{m or 'own'}" for b, m in self.pairs], self.variants)

    def _parse(self, case_id: str) -> tuple[str, str | None, int]:
        base, variant = variant_of(case_id)
        body, _, mask = base.partition(BODY_SEP)
        return body, (None if mask == "own" else mask), variant

    def signature(self, case_id: str) -> dict:
        body, mask, variant = self._parse(case_id)
        spec = self.bodies[body]
        sig = {"kind": self.kind, "body": str(spec) if isinstance(spec, tuple) else str(spec.resolve()), "mask": mask,
               "mask_path": str(self.masks[mask].resolve()) if mask else None, "variant": variant,
               "seed": self.seed, "paint": repr(self.paint_config), "version": 1}
        return sig

    def _body(self, name: str):
        from ..phantoms.bodies import read_body, read_organ_body

        if name not in self._body_cache:
            spec = self.bodies[name]
            if isinstance(spec, tuple):
                scheme, organs, donor = spec
                body = read_organ_body(organs, scheme, read_body(donor))
            else:
                body = read_body(spec)
            if len(self._body_cache) >= self.cached_bodies:  # a few bodies in memory, oldest out
                self._body_cache.pop(next(iter(self._body_cache)))
            self._body_cache[name] = body
        return self._body_cache[name]

    def build(self, case_id: str, cfg: ModelConfig) -> CachedCase:
        from ..phantoms.realbody import PaintConfig, paint_body

        body_name, mask, variant = self._parse(case_id)
        paint = self.paint_config or PaintConfig()
        seg_sp = tuple(cfg.segmenter.spacing_mm)
        paint = PaintConfig(**{**paint.__dict__, "spacing_mm": seg_sp})
        body = self._body(body_name)
        kits, midline = kits_on_grid(self.masks[mask], seg_sp) if mask and body.kidney_ids else (None, None)
        ct, labels, _info = paint_body(body, kits, stable_seed(self.seed, case_id), paint, midline)
        return prepare_case(case_id, ct, labels, cfg)

    def describe(self) -> dict:
        return {"kind": self.kind, "bodies": {k: str(v) for k, v in self.bodies.items()},
                "body_licences": "TotalSegmentator CC BY 4.0; BTCV (Synapse terms); AMOS CC BY 4.0",
                "masks": sorted({m for _, m in self.pairs if m}), "pairs": len(self.pairs),
                "variants": self.variants, "seed": self.seed}


class RealScanSource(CaseSource):
    """Real CTs and their kidney labels (``labelled_scans.LabelledScan``), each ``repeats`` times."""

    kind = "real_scans"

    def __init__(self, scans, repeats: int = 1):
        self.scans = {s.name: s for s in scans}
        self.repeats = max(1, int(repeats))

    def case_ids(self) -> list[str]:
        return [f"{n}{REPEAT_SEP}{r}" if r else n for n in self.scans for r in range(self.repeats)]

    def signature(self, case_id: str) -> dict:
        name = case_id.split(REPEAT_SEP)[0]
        s = self.scans[name]
        return {"kind": self.kind, "image": str(s.image.resolve()), "labels": str(s.labels) if s.labels else None,
                "mapping": repr(s.mapping), "bytes": s.image.stat().st_size}

    def build(self, case_id: str, cfg: ModelConfig) -> CachedCase:
        from ..resampling import AIR_HU

        name = case_id.split(REPEAT_SEP)[0]
        ct, labels = self.scans[name].load()
        if labels is None:  # a kidney-free scan: all background
            labels = ct.with_array(np.zeros(ct.array.shape, np.uint8))
        ct = ct.with_array(np.maximum(np.asarray(ct.array, np.float32), AIR_HU))
        return prepare_case(case_id, ct, labels, cfg)

    def describe(self) -> dict:
        return {"kind": self.kind, "scans": sorted(self.scans), "repeats": self.repeats}
