"""The Sample Data CT: made locally into the scene's cache folder, reused, loaded as a volume node."""

from __future__ import annotations

import numpy as np
import pytest

try:  # Testing/ may be a package or a plain folder of test files
    from .mrml_fixtures import mrml_env, mrml_scene  # noqa: F401
except ImportError:
    from mrml_fixtures import mrml_env, mrml_scene  # noqa: F401

slicer = pytest.importorskip("slicer")

from KidneyTumorSegLib import mrml  # noqa: E402
from KidneyTumorSegLib.mrml.sample import load_sample, sample_path  # noqa: E402
from KidneyTumorSegLib.sample import SAMPLE_FILE, SAMPLE_NODE_NAME, make_sample_ct  # noqa: E402


def test_sample_ct_is_made_once_into_the_cache_and_loaded_as_a_ct(mrml_scene, tmp_path):
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(str(tmp_path / "cache"))
    mrml_scene.SetCacheManager(cache)
    assert sample_path(mrml_scene) == tmp_path / "cache" / SAMPLE_FILE

    node = load_sample(mrml_scene)
    expected, truth = make_sample_ct()
    assert node.GetName() == SAMPLE_NODE_NAME and node.GetScene() is mrml_scene
    volume = mrml.volume_from_node(node)
    assert volume.same_grid(expected, tol=1e-6) and np.array_equal(volume.array, expected.array)
    assert volume.array.dtype == np.int16 and -1100 < volume.array.min() < volume.array.max() < 3100
    assert (truth.array == 1).any() and (truth.array == 2).any()  # both kidneys and a tumour to find

    made = sample_path(mrml_scene).stat().st_mtime_ns
    second = load_sample(mrml_scene)  # reused, not made again
    assert sample_path(mrml_scene).stat().st_mtime_ns == made
    assert second is not node and second.GetName() != node.GetName()
