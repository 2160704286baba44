"""The cache of built cases: each case's arrays on the two working grids stored as ``.npy``, keyed
by everything that determines them, so a second run starts at once; and ``load_cases``, which
builds (or reads) every case of a source, in worker processes when asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from .parallel import parallel_map
from .sources import CaseSource
from .working_grids import GRIDS, CachedCase, CaseArrays, grids_signature

log = logging.getLogger("KidneyTumorSeg")
CACHE_VERSION = 1


def cache_key(source: CaseSource, case_id: str, cfg: ModelConfig) -> str:
    """The case's cache folder name: its id made safe, then a digest of all that determines its arrays."""
    what = {
        "version": CACHE_VERSION,
        "source": source.signature(case_id),
        "preprocess": cfg.to_dict()["preprocess"],
        **grids_signature(cfg),
    }
    digest = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in case_id)
    return f"{safe}-{digest}"


def save_cached(folder: Path, case: CachedCase) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"case_id": case.case_id}
    for part in GRIDS:
        arrays: CaseArrays = getattr(case, part)
        np.save(folder / f"{part}_image.npy", arrays.image)
        np.save(folder / f"{part}_labels.npy", arrays.labels)
        meta[part] = {"spacing": list(arrays.spacing), "origin": list(arrays.origin)}
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(folder / "meta.json")  # written last: a folder without it is incomplete


def load_cached(folder: Path) -> CachedCase | None:
    """The case stored in ``folder``, or None when it is missing, incomplete or unreadable."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        parts = {}
        for part in GRIDS:
            image = np.load(folder / f"{part}_image.npy", allow_pickle=False)
            labels = np.load(folder / f"{part}_labels.npy", allow_pickle=False)
            parts[part] = CaseArrays(image, labels, tuple(meta[part]["spacing"]), tuple(meta[part]["origin"]))
        return CachedCase(meta["case_id"], parts["localiser"], parts["segmenter"])
    except (OSError, ValueError, KeyError):
        return None


def _build_one(args) -> tuple[str, CachedCase | None, str | None]:
    source, case_id, cfg, cache_dir = args
    folder = Path(cache_dir) / cache_key(source, case_id, cfg) if cache_dir else None
    if folder is not None:
        cached = load_cached(folder)
        if cached is not None:
            return case_id, cached, None
    try:
        case = source.build(case_id, cfg)
    except Exception as err:  # one broken case must not stop a training run
        return case_id, None, f"{type(err).__name__}: {err}"
    if folder is not None:
        save_cached(folder, case)
    return case_id, case, None


def load_cases(
    source: CaseSource,
    case_ids: Iterable[str],
    cfg: ModelConfig,
    cache_dir=None,
    workers: int = 0,
    progress: Callable[[float, str], None] | None = None,
) -> tuple[list[CachedCase], dict[str, str]]:
    """Build (or read from the cache) every case; returns the cases and ``{case_id: error}``.

    ``workers`` > 0 builds cases in that many processes (phantom generation is CPU-bound).
    """
    ids = list(case_ids)
    jobs = [(source, cid, cfg, str(cache_dir) if cache_dir else None) for cid in ids]
    results: dict[str, CachedCase] = {}
    errors: dict[str, str] = {}

    def collect(i, item):
        cid, case, err = item
        if case is None:
            errors[cid] = err or "unknown error"
            log.warning("skipping training case %s: %s", cid, err)
        else:
            results[cid] = case
        if progress:
            progress((i + 1) / max(1, len(ids)), f"preparing cases {i + 1}/{len(ids)}")

    for i, item in enumerate(parallel_map(_build_one, jobs, workers)):
        collect(i, item)
    return [results[c] for c in ids if c in results], errors

