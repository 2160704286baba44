"""The synthetic sample CT as a volume node: made once into Slicer's cache folder, then reused."""

from __future__ import annotations

import os
from pathlib import Path

from ..sample import SAMPLE_FILE, SAMPLE_NODE_NAME, write_sample_ct


def sample_path(scene=None) -> Path:
    """Where the sample CT lives: the scene's cache folder, beside Slicer's downloaded sample data."""
    import slicer

    scene = scene if scene is not None else slicer.mrmlScene
    cache = scene.GetCacheManager().GetRemoteCacheDirectory() if scene.GetCacheManager() else ""
    return Path(cache or os.path.join(os.path.expanduser("~"), ".cache", "KidneyTumorSeg")) / SAMPLE_FILE


def load_sample(scene=None):
    """A new volume node holding the sample CT (the file is made first if it is not there yet)."""
    import slicer

    from ..io import read_volume
    from .volumes import volume_to_node

    scene = scene if scene is not None else slicer.mrmlScene
    path = sample_path(scene)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_sample_ct(path)
    return volume_to_node(read_volume(path), scene, scene.GenerateUniqueName(SAMPLE_NODE_NAME))
