"""Shape primitives on an axis-aligned LPS working grid, each evaluated only inside its bounding box.

The anatomy is drawn on a coarse grid (``Grid``) whose axes are the physical x (patient left),
y (posterior) and z (superior) axes, array order (z, y, x).  Every primitive returns a boolean mask
restricted to a bounding-box slice, so that drawing a 3 cm vessel costs what the vessel covers,
not what the whole volume covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..resampling import lerp_axis


@dataclass
class Grid:
    """Axis-aligned LPS grid: ``x``, ``y``, ``z`` are the voxel-centre coordinates (mm) per axis."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.size, self.y.size, self.x.size)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(a[1] - a[0]) if a.size > 1 else 1.0 for a in (self.x, self.y, self.z))

    @classmethod
    def covering(cls, lo, hi, spacing_xyz) -> Grid:
        axes = []
        for a, b, s in zip(lo, hi, spacing_xyz):
            n = max(2, int(np.ceil((b - a) / s)) + 1)
            c = 0.5 * (a + b)
            axes.append(c + (np.arange(n) - (n - 1) / 2.0) * s)
        return cls(*axes)

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index slices (z, y, x) of the voxels whose centres lie in the physical box [lo, hi]."""
        sl = []
        for axis, a, b in ((self.z, lo[2], hi[2]), (self.y, lo[1], hi[1]), (self.x, lo[0], hi[0])):
            i0 = int(np.searchsorted(axis, a, side="left"))
            i1 = int(np.searchsorted(axis, b, side="right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)

    def coords(self, sl):
        """Broadcastable coordinate arrays (Z, Y, X) of a box."""
        return (self.z[sl[0]][:, None, None], self.y[sl[1]][None, :, None], self.x[sl[2]][None, None, :])

    def index_of(self, xyz) -> tuple[int, int, int]:
        """Nearest (z, y, x) index of a physical point, clipped to the grid."""
        return tuple(
            int(np.clip(np.searchsorted(a, v) if a.size else 0, 0, a.size - 1))
            for a, v in ((self.z, xyz[2]), (self.y, xyz[1]), (self.x, xyz[0]))
        )


def paint(target: np.ndarray, sl, mask: np.ndarray, value, where: np.ndarray | None = None) -> None:
    """Write ``value`` into ``target[sl]`` where ``mask`` (and optionally ``where[sl]``) hold."""
    if sl is None:
        return
    if where is not None:
        mask = mask & where[sl]
    target[sl][mask] = value


def ellipsoid(grid: Grid, centre, radii, rotation: np.ndarray | None = None, pad: float = 0.0):
    """Solid ellipsoid; ``rotation`` columns are the ellipsoid's axes in LPS.  Returns (slice, mask, r)."""
    centre = np.asarray(centre, float)
    radii = np.asarray(radii, float)
    ext = radii.max() + pad if rotation is not None else radii + pad
    sl = grid.box(centre - ext, centre + ext)
    if sl is None:
        return None, None, None
    Z, Y, X = grid.coords(sl)
    d = [X - centre[0], Y - centre[1], Z - centre[2]]
    if rotation is None:
        r2 = (d[0] / radii[0]) ** 2 + (d[1] / radii[1]) ** 2 + (d[2] / radii[2]) ** 2
    else:
        r2 = 0.0
        for a in range(3):
            u = rotation[0, a] * d[0] + rotation[1, a] * d[1] + rotation[2, a] * d[2]
            r2 = r2 + (u / radii[a]) ** 2
    r = np.sqrt(r2)
    return sl, r <= 1.0, r


def tube(grid: Grid, points, radius, pad: float = 0.0):
    """Tube of (possibly varying) radius along a polyline of LPS ``points`` (N x 3).

    Returns (slice, dist_over_radius) where values <= 1 are inside; radius may be a scalar or N values.
    """
    pts = np.asarray(points, float)
    rad = np.broadcast_to(np.asarray(radius, float), (len(pts),))
    lo = pts.min(0) - rad.max() - pad
    hi = pts.max(0) + rad.max() + pad
    sl = grid.box(lo, hi)
    if sl is None:
        return None, None
    Z, Y, X = grid.coords(sl)
    best = np.full(np.broadcast_shapes(Z.shape, Y.shape, X.shape), np.inf, dtype=np.float32)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
        ab = b - a
        L2 = float(ab @ ab) or 1e-9
        # restrict each segment to its own sub-box for speed
        s_lo = np.maximum(np.minimum(a, b) - max(ra, rb) - pad, lo)
        s_hi = np.minimum(np.maximum(a, b) + max(ra, rb) + pad, hi)
        ssl = grid.box(s_lo, s_hi)
        if ssl is None:
            continue
        sub = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(ssl, sl))
        z, y, x = grid.coords(ssl)
        x, y, z = (v.astype(np.float32) for v in (x - a[0], y - a[1], z - a[2]))
        t = x * np.float32(ab[0] / L2) + y * np.float32(ab[1] / L2) + z * np.float32(ab[2] / L2)
        np.maximum(t, 0.0, out=t)
        np.minimum(t, 1.0, out=t)
        dx = x - t * np.float32(ab[0])
        dy = y - t * np.float32(ab[1])
        dz = z - t * np.float32(ab[2])
        q = dx * dx
        q += dy * dy
        q += dz * dz
        np.sqrt(q, out=q)
        if ra == rb:
            q *= np.float32(1.0 / ra)
        else:
            q /= np.float32(ra) + t * np.float32(rb - ra)
        np.minimum(best[sub], q, out=best[sub])
    return sl, best


def smooth_noise(rng: np.random.Generator, shape, sigma_vox, dtype=np.float32) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ``sigma_vox`` (scalar or per axis)."""
    sig = np.broadcast_to(np.asarray(sigma_vox, float), (len(shape),))
    # draw on a grid decimated to ~sigma/2 and upsample: same look, much cheaper for large sigma
    step = np.maximum(1, np.floor(sig)).astype(int)
    small = tuple(int(np.ceil(n / s)) + 2 for n, s in zip(shape, step))
    f = rng.standard_normal(small, dtype=np.float32)
    f = ndi.gaussian_filter(f, sig / step, mode="wrap", truncate=3.0)
    for axis, (n, s) in enumerate(zip(shape, step)):
        if s > 1:
            f = lerp_axis(f, np.arange(n) / s, axis)
        else:
            f = f[(slice(None),) * axis + (slice(0, n),)]
    sub = f[::2, ::2, ::2] if f.ndim == 3 else f
    sd = float(sub.std())
    f -= np.float32(sub.mean())
    f *= np.float32(1.0 / (sd or 1.0))
    return f.astype(dtype, copy=False)


def rotation_from_axes(long_axis, hint) -> np.ndarray:
    """Orthonormal frame (columns) whose first column is ``long_axis``, second close to ``hint``."""
    a = np.asarray(long_axis, float)
    a = a / np.linalg.norm(a)
    h = np.asarray(hint, float)
    b = h - (h @ a) * a
    if np.linalg.norm(b) < 1e-6:
        b = np.cross(a, [1.0, 0.0, 0.0])
    b = b / np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=1)


def rot(axis: str, deg: float) -> np.ndarray:
    """Rotation matrix about the physical x, y or z axis."""
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
