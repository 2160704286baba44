"""Resampling: every move of an image or a label map from one voxel grid to another.

The engine's working grids have identity direction (LPS-aligned), so axial slices are
``array[k]`` and the x axis points to the patient's left, whatever the orientation of the input.

- :func:`resample_box`, :func:`to_canonical`, :func:`resample_onto`: one SimpleITK call on the
  whole volume (trilinear, after block averaging when the target grid is much coarser);
- :func:`resample_box_chunked` and :func:`masks_onto_grid`: the same results, computed tile by tile
  on extracted regions, so the working memory stays bounded whatever the scan's size (the engine
  and the snapshot use these);
- :func:`to_reference` and :func:`labels_on_grid`: the phantom painter's coarse LPS grid to and from
  the caller's grid, separable (one 1D interpolation per axis) for axis-aligned directions.

Outside the input, images read :data:`AIR_HU` and label maps 0; with ``beyond_scan="edge"`` an
image's first and last slices along its own head-foot axis are instead carried on past its two ends
(tilted ends too: the padding runs along the scan's slice axis, not the grid's).
"""

from __future__ import annotations

import math

import numpy as np

from .config import BEYOND_SCAN
from .volume import Volume, grid_corner_points, signed_permutation

#: What an image reads outside the scan: air, as scanners store it.
AIR_HU = -1024.0
#: Input voxels one resampling slab may touch: 16 Mi voxels = 32 MB of int16 plus 64 MB of float32.
SLAB_VOXELS = 16 * 1024 * 1024
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# --- grids -----------------------------------------------------------------------------------------
def canonical_box(volume: Volume, spacing_mm) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Origin and size of an identity-direction grid at ``spacing_mm`` covering ``volume``.

    The last voxel centre lies at or beyond the volume's last one, so nothing of the scan is lost.
    """
    lo, hi = volume.physical_bounds()
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    size = np.maximum(1, np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1)
    return lo, tuple(int(s) for s in size)


def index_box(volume: Volume, points_xyz, pad, align=1) -> tuple[np.ndarray, np.ndarray]:
    """Index box ``[lo, hi)`` (i, j, k) of ``volume`` holding every voxel within ``pad`` voxels of the
    physical points (a grid's corners), clipped to the volume; ``lo`` rounded down to a multiple of
    ``align`` (where block averaging must start its blocks)."""
    ijk = volume.physical_to_index(points_xyz)
    size = np.asarray(volume.size_xyz)
    lo = np.floor(ijk.min(axis=0)).astype(np.int64) - np.asarray(pad)
    hi = np.ceil(ijk.max(axis=0)).astype(np.int64) + 1 + np.asarray(pad)
    lo = np.clip(lo, 0, size)
    lo -= lo % np.asarray(align)
    hi = np.clip(hi, 0, size)
    return lo, hi


def shrink_factors(volume: Volume, spacing_mm) -> list[int]:
    """Block-averaging factors (SimpleITK BinShrink) before a linear resampling onto ``spacing_mm``.

    Only an axis-aligned scan going to a grid at least twice as coarse is averaged first (1 elsewhere),
    so a 4 mm localiser grid from a 0.7 mm scan sees mean HU, not aliased noise.
    """
    axis_aligned = np.allclose(np.abs(volume.direction), np.eye(3), atol=1e-3)
    # never more than the axis holds: BinShrink refuses an image smaller than its factor
    factors = [max(1, min(n, int(math.floor(t / s)))) for t, s, n in zip(spacing_mm, volume.spacing, volume.size_xyz)]
    return factors if axis_aligned and max(factors) >= 2 else [1, 1, 1]


def _sitk_interpolator(interpolator: str):
    import SimpleITK as sitk

    return {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolator]


def _reference_image(grid: Volume):
    """An empty SimpleITK image with ``grid``'s geometry: what a resampling is asked to fill."""
    import SimpleITK as sitk

    ref = sitk.Image([int(n) for n in grid.size_xyz], sitk.sitkUInt8)
    ref.SetSpacing(grid.spacing)
    ref.SetOrigin(grid.origin)
    ref.SetDirection(tuple(grid.direction.flatten()))
    return ref


def _as_float(image):
    import SimpleITK as sitk

    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def head_foot_axis(direction) -> int:
    """The index axis (0 = i, 1 = j, 2 = k) closest to the patient's head-foot axis: the one along
    which a scan has its two ends (k for axial slices, tilted or not)."""
    return int(np.argmax(np.abs(np.asarray(direction, float)[2, :])))


def _padding_for(k: np.ndarray, n: int) -> tuple[int, int]:
    """Slices to add before index 0 and after index ``n - 1`` so that every continuous index ``k``
    lies inside, with one slice of margin for interpolation."""
    below = int(math.ceil(-k.min())) + 1 if k.min() < 0 else 0
    above = int(math.ceil(k.max() - (n - 1))) + 1 if k.max() > n - 1 else 0
    return below, above


def end_padding(volume: Volume, points_xyz) -> tuple[int, int]:
    """Slices of ``volume`` needed before its first and after its last slice along
    :func:`head_foot_axis` for every physical point to lie within its slab: what a tile's memory
    budget counts (``resample_box`` pads the block-averaged image, so it adds at most this many)."""
    axis = head_foot_axis(volume.direction)
    return _padding_for(volume.physical_to_index(points_xyz)[:, axis], volume.size_xyz[axis])


def _carry_ends_on(image, points_xyz):
    """``image`` (SimpleITK) padded along its head-foot axis with copies of its end slices, as far
    as the physical points need (ITK's zero-flux Neumann padding)."""
    import SimpleITK as sitk

    axis = head_foot_axis(np.asarray(image.GetDirection()).reshape(3, 3))
    k = np.array([image.TransformPhysicalPointToContinuousIndex([float(c) for c in p])[axis] for p in points_xyz])
    below, above = _padding_for(k, image.GetSize()[axis])
    if below == 0 and above == 0:
        return image
    lower, upper = [0, 0, 0], [0, 0, 0]
    lower[axis], upper[axis] = below, above
    return sitk.ZeroFluxNeumannPad(image, lower, upper)


# --- whole volume ----------------------------------------------------------------------------------
def resample_box(
    volume: Volume,
    origin_xyz,
    size_xyz,
    spacing_mm,
    interpolator: str = "linear",
    default_value: float = AIR_HU,
    output_dtype=None,
    beyond_scan: str = "air",
) -> Volume:
    """Resample ``volume`` onto an identity-direction grid (trilinear by default, after the
    :func:`shrink_factors` block averaging); past the scan's head-foot ends ``default_value``, or
    with ``beyond_scan="edge"`` its end slices carried on."""
    import SimpleITK as sitk

    if beyond_scan not in BEYOND_SCAN:
        raise ValueError(f"beyond_scan is one of {', '.join(BEYOND_SCAN)}, not {beyond_scan!r}")
    image = volume.to_sitk()
    if interpolator == "linear":
        factors = shrink_factors(volume, spacing_mm)
        if max(factors) >= 2:
            image = sitk.BinShrink(image, factors)
        image = _as_float(image)
    if beyond_scan == "edge":
        image = _carry_ends_on(image, grid_corner_points(origin_xyz, spacing_mm, size_xyz))
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(tuple(float(o) for o in origin_xyz))
    resampler.SetOutputSpacing(tuple(float(s) for s in spacing_mm))
    resampler.SetOutputDirection(IDENTITY)
    resampler.SetSize(tuple(int(s) for s in size_xyz))
    resampler.SetInterpolator(_sitk_interpolator(interpolator))
    resampler.SetDefaultPixelValue(float(default_value))
    out = sitk.GetArrayFromImage(resampler.Execute(image))
    if output_dtype is not None:
        out = out.astype(output_dtype, copy=False)
    return Volume(out, tuple(spacing_mm), tuple(origin_xyz), np.eye(3))


def to_canonical(volume: Volume, spacing_mm, interpolator: str = "linear", default_value=AIR_HU) -> Volume:
    """The whole volume on an identity-direction grid at ``spacing_mm``."""
    origin, size = canonical_box(volume, spacing_mm)
    return resample_box(volume, origin, size, spacing_mm, interpolator, default_value)


def resample_onto(volume: Volume, reference: Volume, interpolator: str = "linear", default_value=0.0) -> Volume:
    """Resample ``volume`` onto ``reference``'s exact grid (any direction)."""
    import SimpleITK as sitk

    image = volume.to_sitk()
    if interpolator == "linear":
        image = _as_float(image)
    out = sitk.Resample(image, _reference_image(reference), sitk.Transform(), _sitk_interpolator(interpolator), float(default_value),
                        image.GetPixelID())
    return reference.with_array(sitk.GetArrayFromImage(out))


# --- tile by tile ----------------------------------------------------------------------------------
def resample_box_chunked(
    volume: Volume,
    origin_xyz,
    size_xyz,
    spacing_mm,
    interpolator: str = "linear",
    default_value: float = AIR_HU,
    output_dtype=None,
    slab_voxels: int | None = None,
    beyond_scan: str = "air",
) -> Volume:
    """:func:`resample_box`, computed tile by tile of the output grid.

    The output box is halved (along z, y or x) until the input region a tile can touch (with the
    interpolation and block-averaging margin, block boundaries aligned with the whole image's, and
    the end slices ``beyond_scan="edge"`` adds) holds at most ``slab_voxels`` voxels, or until no
    halving shrinks it by a tenth any more (an oblique scan's thinnest slab spans its tilt); each
    tile then gives the same values as the whole-volume call, while no more than one tile's input
    is ever copied, padded or cast to float32.
    """
    slab_voxels = slab_voxels or SLAB_VOXELS
    size_xyz = tuple(int(s) for s in size_xyz)
    spacing_mm = tuple(float(s) for s in spacing_mm)
    origin_xyz = np.asarray(origin_xyz, dtype=np.float64)
    factors = shrink_factors(volume, spacing_mm) if interpolator == "linear" else [1, 1, 1]
    pad = [2 * f + 2 for f in factors]
    end_axis = head_foot_axis(volume.direction)
    n_end = volume.size_xyz[end_axis]
    nx, ny, nz = size_xyz

    def region(z0, z1, y0, y1, x0, x1):
        tile_origin = origin_xyz + np.array([x0 * spacing_mm[0], y0 * spacing_mm[1], z0 * spacing_mm[2]])
        tile_size = (x1 - x0, y1 - y0, z1 - z0)
        corners = grid_corner_points(tile_origin, spacing_mm, tile_size)
        lo, hi = index_box(volume, corners, pad, factors)
        added = 0
        if beyond_scan == "edge":
            below, above = end_padding(volume, corners)
            # A tile past an end still reads the end slices (a whole block's worth, for the averaging).
            if above:
                lo[end_axis] = min(lo[end_axis], max(0, n_end - pad[end_axis] - factors[end_axis]))
                lo[end_axis] -= lo[end_axis] % factors[end_axis]
                hi[end_axis] = n_end
            if below:
                lo[end_axis], hi[end_axis] = 0, max(hi[end_axis], min(n_end, pad[end_axis] + factors[end_axis]))
            added = below + above
        extent = np.maximum(hi - lo, 0)
        need = int(np.prod(extent))
        if need and added:  # the padded slices count too
            need += int(need // max(1, extent[end_axis]) * added)
        return tile_origin, tile_size, lo, hi, need

    whole = (0, nz, 0, ny, 0, nx)
    if volume.array.size <= slab_voxels and (beyond_scan == "air" or region(*whole)[4] <= slab_voxels):
        return resample_box(volume, origin_xyz, size_xyz, spacing_mm, interpolator, default_value, output_dtype,
                            beyond_scan)
    if output_dtype is not None:
        dtype = np.dtype(output_dtype)
    elif interpolator == "linear":  # what resample_box returns: float32, or float64 kept as it is
        dtype = np.dtype(np.float64 if volume.array.dtype == np.float64 else np.float32)
    else:
        dtype = volume.array.dtype
    out = np.empty((nz, ny, nx), dtype=dtype)

    tiles = [whole]  # (z0, z1, y0, y1, x0, x1) of the output, halved until each input region fits
    while tiles:
        tile = tiles.pop()
        tile_origin, tile_size, lo, hi, need = region(*tile)
        if need > slab_voxels:
            # Halve along whichever axis shrinks the input region more, while that still pays (an
            # oblique scan's thinnest slab spans its tilt: splitting on would only add calls).
            best = None
            for a in (0, 2, 4):  # z, y, x
                a0, a1 = tile[a], tile[a + 1]
                if a1 - a0 < 2:
                    continue
                m = (a0 + a1) // 2
                halves = [tile[:a] + (a0, m) + tile[a + 2:], tile[:a] + (m, a1) + tile[a + 2:]]
                largest = max(region(*h)[4] for h in halves)
                if best is None or largest < best[0]:
                    best = (largest, halves)
            if best is not None and best[0] <= 0.9 * need:
                tiles += best[1][::-1]
                continue
        z0, z1, y0, y1, x0, x1 = tile
        part = None
        if need > 0:
            part = resample_box(volume.sub_volume(lo, hi), tile_origin, tile_size, spacing_mm,
                                interpolator, default_value, output_dtype, beyond_scan).array
        out[z0:z1, y0:y1, x0:x1] = default_value if part is None else part
    return Volume(out, spacing_mm, tuple(origin_xyz), np.eye(3))


def faces_inside(grid: Volume, volume: Volume) -> dict[str, bool]:
    """For each face of an LPS-aligned ``grid`` (``z0`` its lowest slice, ``x1`` its highest x, ...):
    whether ``volume``'s image goes on beyond it by more than half a grid voxel, i.e. whether
    something touching that face may continue outside the grid."""
    lo_v, hi_v = volume.physical_bounds()
    lo_g = np.asarray(grid.origin, float)
    hi_g = lo_g + (np.asarray(grid.array.shape[::-1]) - 1) * np.asarray(grid.spacing, float)
    half = 0.5 * np.asarray(grid.spacing, float)
    faces = {}
    for a, axis in enumerate("xyz"):
        faces[axis + "0"] = bool(lo_g[a] - half[a] > lo_v[a])
        faces[axis + "1"] = bool(hi_g[a] + half[a] < hi_v[a])
    return faces


def index_box_under(grid: Volume, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The index box of ``volume`` that ``grid`` covers, with the one voxel of margin a trilinear
    sample needs: the only voxels a result on ``grid`` can change when brought onto ``volume``."""
    return index_box(volume, grid.corner_points(), 1)


def masks_onto_grid(
    masks: list[tuple[int, np.ndarray]],
    source: Volume,
    target: Volume,
    out: np.ndarray,
    box_lo=None,
    box_hi=None,
    slab_voxels: int | None = None,
) -> np.ndarray:
    """Paint ``value`` into ``out`` wherever a mask (on ``source``'s grid) covers ``target``'s voxels.

    Each mask is resampled trilinearly and thresholded at 0.5 (a partial-volume-correct surface),
    one target slab at a time inside the index box ``[box_lo, box_hi)`` (i, j, k), so no whole-scan
    float32 array is ever made. Later masks overwrite earlier ones (kidney, then tumour).
    """
    import SimpleITK as sitk

    slab_voxels = slab_voxels or SLAB_VOXELS
    size = np.asarray(target.size_xyz)
    lo = np.zeros(3, np.int64) if box_lo is None else np.asarray(box_lo, np.int64)
    hi = size if box_hi is None else np.asarray(box_hi, np.int64)
    if np.any(hi <= lo):
        return out
    per_slice = int((hi[0] - lo[0]) * (hi[1] - lo[1]))
    step = max(1, slab_voxels // max(1, per_slice))
    images = [(value, source.with_array(np.ascontiguousarray(mask, dtype=np.float32)).to_sitk())
              for value, mask in masks]
    for k0 in range(int(lo[2]), int(hi[2]), step):
        k1 = min(int(hi[2]), k0 + step)
        ref = _reference_image(target.sub_volume([lo[0], lo[1], k0], [hi[0], hi[1], k1]))
        view = out[k0:k1, lo[1] : hi[1], lo[0] : hi[0]]
        for value, image in images:
            res = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            view[sitk.GetArrayViewFromImage(res) >= 0.5] = value
    return out


# --- the phantom painter's coarse grid -------------------------------------------------------------
# ``grid`` below is an axis-aligned LPS grid given by its voxel-centre coordinates per axis
# (``grid.x``, ``grid.y``, ``grid.z``, as ``phantoms.shapes.Grid`` holds them), array order (z, y, x).
def lerp_axis(a: np.ndarray, f: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at continuous indices ``f`` (clamped at the ends)."""
    n = a.shape[axis]
    i0 = np.clip(np.floor(f).astype(np.int64), 0, max(n - 2, 0))
    w = np.clip(f - i0, 0.0, 1.0).astype(np.float32)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = -1
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, i1, axis=axis)
    hi -= lo
    hi *= w.reshape(shape)
    lo += hi
    return lo


def _grid_axes(grid):
    return {0: grid.x, 1: grid.y, 2: grid.z}


def _axis_positions(ref: Volume, grid):
    """Per array axis of ``ref`` (k, j, i): the grid axis it runs along (in (z, y, x) order) and
    the continuous grid index of every slice along it."""
    perm = signed_permutation(ref.direction)
    axes = _grid_axes(grid)
    res = []
    for arr_axis, c in enumerate((2, 1, 0)):  # array axis 0 is index axis k (c = 2)
        p, _ = perm[c]
        n = ref.array.shape[arr_axis]
        coord = ref.origin[p] + ref.direction[p, c] * ref.spacing[c] * np.arange(n)
        g = axes[p]
        step = g[1] - g[0] if g.size > 1 else 1.0
        res.append((2 - p, (coord - g[0]) / step))
    return res


def to_reference(field: np.ndarray, grid, ref: Volume, order: int = 1, out: np.ndarray | None = None,
                 dtype=np.float32) -> np.ndarray:
    """Sample a coarse (z, y, x) field at every voxel of ``ref`` (linear or nearest, clamped at the
    grid's edges), slab by slab of ``ref``."""
    from scipy import ndimage as ndi

    shape = ref.array.shape
    if out is None:
        out = np.empty(shape, dtype)
    perm = signed_permutation(ref.direction)
    slab = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
    if perm is not None:
        pos = _axis_positions(ref, grid)
        src = field.transpose([p[0] for p in pos])
        if order == 0:
            idx = [np.clip(np.rint(f).astype(np.int64), 0, src.shape[a] - 1) for a, (_, f) in enumerate(pos)]
            for s in range(0, shape[0], slab):
                out[s : s + slab] = src[np.ix_(idx[0][s : s + slab], idx[1], idx[2])]
            return out
        src = src.astype(np.float32, copy=False)
        for s in range(0, shape[0], slab):
            a = lerp_axis(src, pos[0][1][s : s + slab], 0)
            a = lerp_axis(a, pos[1][1], 1)
            out[s : s + slab] = lerp_axis(a, pos[2][1], 2)
        return out
    # oblique grid: physical point of every voxel -> continuous grid index
    spc = np.array(grid.spacing)
    g0 = np.array([grid.x[0], grid.y[0], grid.z[0]])
    jj, ii = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    src = field.astype(np.float32, copy=False) if order else field
    for s in range(0, shape[0], slab):
        ks = np.arange(s, min(s + slab, shape[0]))
        ijk = np.stack(np.broadcast_arrays(ii[None], jj[None], ks[:, None, None]), axis=-1).reshape(-1, 3)
        xyz = ref.index_to_physical(ijk.astype(np.float64))
        gi = (xyz - g0) / spc  # (x, y, z) grid index
        vals = ndi.map_coordinates(src, [gi[:, 2], gi[:, 1], gi[:, 0]], order=order, mode="nearest")
        out[s : s + len(ks)] = vals.reshape(len(ks), shape[1], shape[2])
    return out


def labels_on_grid(labels: Volume, grid) -> np.ndarray:
    """Nearest-neighbour sample of a label map at the coarse grid's voxel centres (0 outside)."""
    from scipy import ndimage as ndi

    nz, ny, nx = grid.shape
    out = np.zeros(grid.shape, np.uint8)
    perm = signed_permutation(labels.direction)
    if perm is not None:
        axes = _grid_axes(grid)
        idx = [None, None, None]  # grid axis (z, y, x) -> label index array & which label array axis
        src_axis = [None, None, None]
        for c in range(3):
            p, _ = perm[c]
            g = axes[p]
            f = (g - labels.origin[p]) / (labels.direction[p, c] * labels.spacing[c])
            ii = np.floor(f + 0.5 + 1e-6 * np.sign(labels.direction[p, c])).astype(np.int64)
            idx[2 - p] = ii
            src_axis[2 - p] = 2 - c  # array axis of index axis c
        valid = [(ii >= 0) & (ii < labels.array.shape[src_axis[a]]) for a, ii in enumerate(idx)]
        sub = labels.array.transpose(src_axis)
        gz, gy, gx = (np.nonzero(v)[0] for v in valid)
        if gz.size and gy.size and gx.size:
            out[np.ix_(gz, gy, gx)] = sub[np.ix_(idx[0][gz], idx[1][gy], idx[2][gx])]
        return out
    Z, Y, X = np.meshgrid(grid.z, grid.y, grid.x, indexing="ij")
    for s in range(nz):
        pts = np.stack([X[s].ravel(), Y[s].ravel(), Z[s].ravel()], axis=1)
        ijk = labels.physical_to_index(pts)
        vals = ndi.map_coordinates(labels.array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=0, mode="constant", cval=0)
        out[s] = vals.reshape(ny, nx)
    return out
