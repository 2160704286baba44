"""Moving fields between the coarse LPS working grid and the caller's grid (any direction).

For the usual axis-aligned directions (signed permutations, e.g. KiTS19's I-P-L) sampling is
separable: one 1D interpolation per axis, done in slabs so that memory stays bounded.  Oblique
grids fall back to ``scipy.ndimage.map_coordinates`` slab by slab.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..volume import Volume
from .shapes import Grid, lerp_axis

SLAB_VOXELS = 4_000_000


def signed_permutation(direction: np.ndarray) -> list[tuple[int, float]] | None:
    """For each index axis (i, j, k): (physical axis, sign) when the direction is axis-aligned."""
    d = np.asarray(direction, float)
    out = []
    for c in range(3):
        p = int(np.argmax(np.abs(d[:, c])))
        if abs(abs(d[p, c]) - 1.0) > 1e-6:
            return None
        out.append((p, float(np.sign(d[p, c]))))
    if len({p for p, _ in out}) != 3:
        return None
    return out


def _grid_axes(grid: Grid):
    return {0: grid.x, 1: grid.y, 2: grid.z}


def _axis_positions(ref: Volume, grid: Grid):
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


def to_reference(field: np.ndarray, grid: Grid, ref: Volume, order: int = 1, out: np.ndarray | None = None,
                 dtype=np.float32) -> np.ndarray:
    """Sample a coarse (z, y, x) field at every voxel of ``ref`` (linear or nearest)."""
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


def labels_on_grid(labels: Volume, grid: Grid) -> np.ndarray:
    """Nearest-neighbour sample of a label map at the coarse grid's voxel centres (0 outside)."""
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
