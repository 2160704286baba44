"""The working canvas: tissue map on the coarse grid plus painting helpers shared by the anatomy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import tissues as ts
from .body import Body
from .layout import Layout
from .shapes import Grid, ellipsoid, tube


@dataclass
class Canvas:
    grid: Grid
    tissue: np.ndarray  # uint8 (z, y, x)
    rng: np.random.Generator
    lay: Layout
    body: Body
    depth: np.ndarray  # mm below the skin
    theta: np.ndarray  # polar-angle bin of every voxel (see body.THETAS)
    inside: np.ndarray  # bool: inside the body
    cavity: np.ndarray  # bool: inside the muscular wall (abdominal or thoracic cavity)
    kidney_zone: np.ndarray  # bool: kidneys plus their perirenal fat, kept free of other organs
    peritoneal: np.ndarray | None = None  # bool: in front of the retroperitoneum (bowel, liver tip)
    extra: dict = field(default_factory=dict)

    @property
    def vox(self) -> float:
        return float(min(self.grid.spacing))

    def ellipsoid(self, value, centre, radii, rotation=None, where=None, rim=None, rim_value=None,
                  noise: float = 0.0):
        """Paint an ellipsoid; optional rim (mm) painted with ``rim_value``; ``noise`` roughens it."""
        sl, _, r = ellipsoid(self.grid, centre, radii, rotation)
        if sl is None:
            return None, None
        if noise:
            r = r * (1 + noise * _box_noise(self.rng, r.shape))
        mask = r <= 1.0
        if where is not None:
            mask &= where[sl]
        self.tissue[sl][mask] = value
        if rim is not None:
            inner = r <= 1.0 - rim / float(np.min(radii))
            rmask = mask & ~inner
            self.tissue[sl][rmask] = rim_value
        return sl, mask

    def tube(self, value, points, radius, where=None, wall=None, wall_value=None, lumen_where=None):
        """Paint a tube; with ``wall`` (mm) the outer shell gets ``wall_value`` and the lumen ``value``."""
        sl, q = tube(self.grid, points, radius)
        if sl is None:
            return None, None
        mask = q <= 1.0
        if where is not None:
            mask &= where[sl]
        if wall is None:
            self.tissue[sl][mask] = value
            return sl, mask
        rad = float(np.max(radius))
        self.tissue[sl][mask] = wall_value
        lumen = mask & (q <= 1.0 - wall / rad)
        if lumen_where is not None:
            lumen &= lumen_where[sl]
        self.tissue[sl][lumen] = value
        return sl, mask

    def bone_ellipsoid(self, centre, radii, rotation=None, shell=1.8, where=None):
        """Cortical shell with cancellous bone inside."""
        sl, _, r = ellipsoid(self.grid, centre, radii, rotation)
        if sl is None:
            return
        mask = r <= 1.0
        if where is not None:
            mask &= where[sl]
        self.tissue[sl][mask] = ts.CORTICAL
        inner = mask & (r <= 1.0 - shell / float(np.min(radii)))
        self.tissue[sl][inner] = ts.CANCELLOUS

    def bone_tube(self, points, radius, shell=1.6, where=None):
        self.tube(ts.CANCELLOUS, points, radius, where=where, wall=shell, wall_value=ts.CORTICAL)

    def free(self, sl, extra_allowed=()) -> np.ndarray:
        """Voxels of a box that an organ may take: in the cavity, not kidney zone, still fat."""
        t = self.tissue[sl]
        ok = self.cavity[sl] & ~self.kidney_zone[sl]
        allowed = t == ts.FAT
        for v in extra_allowed:
            allowed |= t == v
        return ok & allowed


def _box_noise(rng: np.random.Generator, shape) -> np.ndarray:
    from .shapes import smooth_noise

    return smooth_noise(rng, shape, 3.0) * 0.5
