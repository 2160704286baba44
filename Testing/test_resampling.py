"""Resampling: tile by tile gives exactly what one whole-volume call gives, in bounded memory.

The engine and the snapshot resample slab by slab (``resample_box_chunked``, ``masks_onto_grid``)
so that a large scan is never copied or cast whole; these tests hold those paths to the plain
SimpleITK calls on every kind of grid (block averaging, flipped axes, oblique), and check the
memory peak that is the reason for them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib import resampling
from KidneyTumorSegLib.volume import Volume

from .test_bad_input import oracle_pipeline, synthetic_ct
from .test_geometry import OBLIQUE_FLIPPED

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("direction,spacing,target", [
    (np.eye(3), (0.8, 0.8, 2.5), (4.0, 4.0, 4.0)),  # block averaging before the localiser grid
    (np.eye(3), (0.8, 0.8, 2.5), (1.0, 1.0, 1.0)),  # the segmenter's grid
    (np.diag([-1.0, 1.0, -1.0]), (0.7, 0.7, 1.0), (2.0, 2.0, 2.0)),  # flipped axes
    (OBLIQUE_FLIPPED, (0.9, 0.7, 3.0), (2.0, 2.0, 2.0)),  # oblique: no block averaging
])
def test_chunked_resampling_equals_the_whole_volume_call(direction, spacing, target):
    rng = np.random.default_rng(5)
    arr = rng.normal(0, 300, (40, 110, 100)).astype(np.int16)
    vol = Volume(arr, spacing, (-40.0, 20.0, 100.0), direction)
    origin, size = resampling.canonical_box(vol, target)
    whole = resampling.resample_box(vol, origin, size, target).array
    chunked = resampling.resample_box_chunked(vol, origin, size, target, slab_voxels=80_000)
    assert chunked.array.shape == whole.shape and chunked.array.dtype == whole.dtype
    np.testing.assert_allclose(chunked.array, whole, atol=1e-3)
    # an interior box (the segmenter's canvas): also identical
    inner_origin = np.asarray(origin) + np.asarray(target) * 7
    inner_size = tuple(max(2, s // 2) for s in size)
    np.testing.assert_allclose(
        resampling.resample_box_chunked(vol, inner_origin, inner_size, target, slab_voxels=80_000).array,
        resampling.resample_box(vol, inner_origin, inner_size, target).array, atol=1e-3)


def test_masks_come_back_slab_by_slab_exactly_as_in_one_piece():
    target = Volume(np.zeros((30, 90, 80), np.int16), (0.9, 0.7, 3.0), (-30.0, -25.0, -40.0), OBLIQUE_FLIPPED)
    lo, hi = target.physical_bounds()
    centre = (lo + hi) / 2
    canvas = Volume(np.zeros((24, 32, 32), np.uint8), (2.0, 2.0, 2.0), tuple(centre - [32, 32, 24]), np.eye(3))
    k, j, i = np.meshgrid(*[np.arange(n) for n in canvas.array.shape], indexing="ij")
    labels = ((((k - 12) / 9.0) ** 2 + ((j - 16) / 12.0) ** 2 + ((i - 16) / 10.0) ** 2) <= 1).astype(np.uint8)
    labels[(((k - 12) / 4.0) ** 2 + ((j - 16) / 5.0) ** 2 + ((i - 19) / 4.0) ** 2) <= 1] = 2
    masks = [(1, labels > 0), (2, labels == 2)]
    whole = resampling.masks_onto_grid(masks, canvas, target, np.zeros(target.array.shape, np.uint8))
    slabs = resampling.masks_onto_grid(masks, canvas, target, np.zeros(target.array.shape, np.uint8), slab_voxels=5000)
    assert np.count_nonzero(whole == 1) > 1000 and np.count_nonzero(whole == 2) > 50
    np.testing.assert_array_equal(slabs, whole)
    # and the same as resampling each mask onto the whole grid in one SimpleITK call
    ref = resampling.resample_onto(canvas.with_array((labels > 0).astype(np.float32)), target).array >= 0.5
    np.testing.assert_array_equal(whole > 0, ref)


def test_pipeline_in_small_slabs_gives_the_same_labels(monkeypatch):
    ct, _ = synthetic_ct(kidneys=("right", "left"), tumour_side="right", direction=OBLIQUE_FLIPPED)
    pipe = oracle_pipeline()
    whole = pipe.run(ct)
    monkeypatch.setattr(resampling, "SLAB_VOXELS", 60_000)  # every resampling now takes several tiles
    sliced = pipe.run(ct)
    np.testing.assert_array_equal(sliced.labels.array, whole.labels.array)
    assert set(whole.report["sides"]) == {"right", "left"} and whole.report["sides"] == sliced.report["sides"]


_RSS_SCRIPT = r"""
import numpy as np
from KidneyTumorSegLib import resampling
from KidneyTumorSegLib.volume import Volume
from Testing.test_geometry import OBLIQUE_FLIPPED
def peak():  # this process's resident high-water mark (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmHWM:"))
vol = Volume(np.random.default_rng(0).integers(-1000, 1000, (200, 256, 256), dtype=np.int16),
             (0.8, 0.8, 1.0), (0.0, 0.0, 0.0), OBLIQUE_FLIPPED)  # 26 MB of int16
origin, size = resampling.canonical_box(vol, (6.0, 6.0, 6.0))
small = Volume(vol.array[:8, :32, :32], vol.spacing, vol.origin, vol.direction)  # warm SimpleITK up
resampling.resample_box_chunked(small, *resampling.canonical_box(small, (6.0, 6.0, 6.0)), (6.0, 6.0, 6.0))
base = peak()
a = resampling.resample_box_chunked(vol, origin, size, (6.0, 6.0, 6.0), slab_voxels=1_000_000).array
chunked = peak() - base
b = resampling.resample_box(vol, origin, size, (6.0, 6.0, 6.0)).array
whole = peak() - base - chunked
print(chunked, whole, float(np.abs(a - b).max()))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_chunked_resampling_keeps_the_memory_peak_small():
    """A whole-volume resampling of an oblique scan copies it (int16) and casts it (float32):
    6 bytes per voxel, about 79 MB here; tile by tile, what the tiles touch."""
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    chunked, whole, diff = r.stdout.split()
    # measured: about 24 MB in tiles, 100 MB in one piece (78 MB more)
    assert int(chunked) < 40 * 2**20 and int(chunked) + int(whole) > 70 * 2**20 and float(diff) < 1e-3


def test_slices_past_a_scans_ends_carry_its_end_slices_on():
    """``beyond_scan="edge"``: past the head and foot ends the grid reads the scan's end slices;
    inside, and sideways beyond the scan, it reads what it reads with air."""
    rng = np.random.default_rng(3)
    arr = rng.normal(0, 100, (4, 5, 6)).astype(np.float32)
    scan = Volume(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 10.0))  # z 10..16 mm
    origin, size, sp = (0.0, 0.0, 6.0), (6, 5, 9), (1.0, 1.0, 2.0)  # z 6, 8, ..., 22 mm
    edge = resampling.resample_box(scan, origin, size, sp, beyond_scan="edge").array
    air = resampling.resample_box(scan, origin, size, sp).array
    np.testing.assert_allclose(edge[2:6], arr, atol=1e-4)  # z 10..16: inside, untouched
    np.testing.assert_allclose(air[2:6], arr, atol=1e-4)
    assert np.all(air[:2] == resampling.AIR_HU) and np.all(air[6:] == resampling.AIR_HU)
    for k in (0, 1):  # below the foot end: its first slice
        np.testing.assert_allclose(edge[k], arr[0], atol=1e-4)
    for k in (6, 7, 8):  # above the head end: its last slice
        np.testing.assert_allclose(edge[k], arr[-1], atol=1e-4)
    # a scan stored feet-first (k towards the feet) has the same two ends
    flipped = Volume(arr[::-1].copy(), scan.spacing, (0.0, 0.0, 16.0), np.diag([1.0, 1.0, -1.0]))
    np.testing.assert_allclose(resampling.resample_box(flipped, origin, size, sp, beyond_scan="edge").array, edge,
                               atol=1e-4)
    # sideways beyond the scan it is still air: only the head-foot ends are carried on
    wide = resampling.resample_box(scan, (-3.0, 0.0, 6.0), (9, 5, 9), sp, beyond_scan="edge").array
    assert np.all(wide[:, :, :3] == resampling.AIR_HU)
    # a scan stored sagittally (its head-foot axis is i) has its ends along i
    sagittal = Volume(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))), (2.0, 1.0, 1.0), (0.0, 0.0, 10.0),
                      np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert resampling.head_foot_axis(sagittal.direction) == 0
    np.testing.assert_allclose(resampling.resample_box(sagittal, origin, size, sp, beyond_scan="edge").array, edge,
                               atol=1e-4)
    with pytest.raises(ValueError, match="beyond_scan is one of"):
        resampling.resample_box(scan, origin, size, sp, beyond_scan="mirror")


def test_a_tilted_scans_ends_are_carried_on_along_its_own_slice_axis():
    """Slices tilted 17 degrees (gantry tilt): past the tilted ends, the grid reads what a longer
    scan of the same body would give, when the body does not change along the slice axis."""
    tilt = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    rng = np.random.default_rng(4)
    plane = rng.normal(0, 100, (40, 40)).astype(np.float32)
    short = Volume(np.repeat(plane[None], 6, axis=0), (1.5, 1.5, 2.5), (-30.0, -30.0, -7.5), tilt)
    long_origin = np.asarray(short.origin) - tilt[:, 2] * 2.5 * 30  # 30 slices more at each end
    long = Volume(np.repeat(plane[None], 66, axis=0), (1.5, 1.5, 2.5), tuple(long_origin), tilt)
    origin, size, sp = (-24.0, -10.0, -40.0), (30, 12, 40), (1.5, 1.5, 2.0)
    edge = resampling.resample_box(short, origin, size, sp, beyond_scan="edge").array
    truth = resampling.resample_box(long, origin, size, sp).array
    air = resampling.resample_box(short, origin, size, sp).array
    inside_long = truth != resampling.AIR_HU
    assert (air == resampling.AIR_HU)[inside_long].mean() > 0.5  # most of the grid lies past the short scan's ends
    np.testing.assert_allclose(edge[inside_long], truth[inside_long], atol=1e-2)


@pytest.mark.parametrize("direction,spacing,target", [
    (np.eye(3), (0.8, 0.8, 2.5), (4.0, 4.0, 4.0)),  # block averaging
    (np.diag([-1.0, 1.0, -1.0]), (0.7, 0.7, 0.6), (2.0, 2.0, 2.0)),  # flipped axes, block averaging along z
    (OBLIQUE_FLIPPED, (0.9, 0.7, 3.0), (2.0, 2.0, 2.0)),  # oblique
])
def test_chunked_resampling_carries_the_ends_on_as_the_whole_volume_call_does(direction, spacing, target):
    rng = np.random.default_rng(6)
    vol = Volume(rng.normal(0, 300, (40, 110, 100)).astype(np.int16), spacing, (-40.0, 20.0, 100.0), direction)
    origin, size = resampling.canonical_box(vol, target)
    reach = 12  # grid slices past each head-foot end
    origin = np.asarray(origin) - [0.0, 0.0, reach * target[2]]
    size = (size[0], size[1], size[2] + 2 * reach)
    whole = resampling.resample_box(vol, origin, size, target, beyond_scan="edge").array
    chunked = resampling.resample_box_chunked(vol, origin, size, target, slab_voxels=80_000, beyond_scan="edge").array
    np.testing.assert_allclose(chunked, whole, atol=1e-3)
    air = resampling.resample_box(vol, origin, size, target).array
    # the slabs past the ends are no longer air (an oblique grid holds more sideways air)
    assert np.mean(whole[:reach] != air[:reach]) > 0.3 and np.mean(whole[-reach:] != air[-reach:]) > 0.3


def test_a_scan_thinner_than_a_block_is_averaged_over_what_it_has():
    """Two 0.5 mm slices onto a 2 mm grid: the block averaging takes both (BinShrink refuses an
    image smaller than its factor), and the slab's mean comes back inside it."""
    arr = np.stack([np.full((8, 8), 10.0, np.float32), np.full((8, 8), 30.0, np.float32)])
    scan = Volume(arr, (1.0, 1.0, 0.5), (0.0, 0.0, 0.0))
    assert resampling.shrink_factors(scan, (2.0, 2.0, 2.0)) == [2, 2, 2]
    out = resampling.resample_box(scan, (0.5, 0.5, 0.25), (4, 4, 1), (2.0, 2.0, 2.0)).array
    np.testing.assert_allclose(out, 20.0, atol=1e-4)
