"""The body outline and its layers: skin, subcutaneous fat, abdominal wall, the cavity inside.

The axial cross-section is a superellipse (flatter at the back, where the patient lies on the
table) with random low-order harmonics and a midline groove over the spine, whose size varies
smoothly along z (chest, waist, hips).  ``depth`` (mm inward from the skin along the ray from the
body centre) is what the layers are cut from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import Layout
from .shapes import Grid

NTH = 1024
THETAS = np.linspace(-np.pi, np.pi, NTH + 1)


def smooth_profile(rng: np.random.Generator, z: np.ndarray, scale: float, knot_mm: float = 60.0) -> np.ndarray:
    """A smooth random curve along z with values around 0 and amplitude ``scale``."""
    lo, hi = float(z.min()) - knot_mm, float(z.max()) + knot_mm
    knots = np.arange(lo, hi + knot_mm, knot_mm)
    vals = rng.uniform(-scale, scale, size=knots.size)
    return np.interp(z, knots, vals)


@dataclass
class Body:
    x0: float
    cy: np.ndarray  # per z index: body centre y
    a: np.ndarray  # half width
    b_ant: np.ndarray
    b_post: np.ndarray
    harm: np.ndarray  # (n_harm, nz) relative amplitude
    phase: np.ndarray  # (n_harm,)
    fat: np.ndarray  # subcutaneous fat thickness (mm) per z
    fat_ant: float  # extra anterior fat factor
    wall: float  # wall muscle thickness (mm)
    p_post: float
    groove: float
    z: np.ndarray

    def _interp(self, arr, z):
        return np.interp(z, self.z, arr)

    def radius(self, theta, z_idx=None, z=None):
        """Body radius (mm) at polar angle ``theta`` (0 = +x, pi/2 = posterior) and z."""
        if z is not None:
            cy, a, ba, bp = (self._interp(v, z) for v in (self.cy, self.a, self.b_ant, self.b_post))
            harm = np.stack([self._interp(h, z) for h in self.harm])
        else:
            _cy, a, ba, bp, harm = self.cy[z_idx], self.a[z_idx], self.b_ant[z_idx], self.b_post[z_idx], self.harm[:, z_idx]
        c, s = np.abs(np.cos(theta)), np.sin(theta)
        post = s > 0
        b = np.where(post, bp, ba)
        p = np.where(post, self.p_post, 2.1)
        r = 1.0 / ((c / a) ** p + (np.abs(s) / b) ** p) ** (1.0 / p)
        mod = 1.0
        for k in range(harm.shape[0]):
            mod = mod + harm[k] * np.cos((k + 2) * theta + self.phase[k])
        groove = 1.0 - self.groove * np.exp(-(((theta - np.pi / 2) / 0.12) ** 2))
        return r * mod * groove

    def depth(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Depth below the skin (mm, negative outside) and polar-angle bin (``THETAS``) on the grid."""
        nth = NTH
        table = self.radius(np.linspace(-np.pi, np.pi, nth + 1)[None, :],
                            z_idx=np.arange(grid.z.size)[:, None]).astype(np.float32)
        dx = (grid.x - self.x0).astype(np.float32)[None, None, :]
        dy = (grid.y[None, :] - self.cy[:, None]).astype(np.float32)[:, :, None]
        theta = np.arctan2(dy, dx)
        idx = np.rint((theta + np.float32(np.pi)) * np.float32(nth / (2 * np.pi))).astype(np.int32)
        nz = grid.z.size
        r = np.take_along_axis(table, idx.reshape(nz, -1), axis=1).reshape(idx.shape)
        r -= np.sqrt(dx * dx + dy * dy)
        return r, idx

    def theta_table(self, values, idx: np.ndarray) -> np.ndarray:
        """Look up a per-(z, angle) table (nz or 1, NTH + 1) at the grid's angle indices ``idx``."""
        values = np.asarray(values, np.float32)
        if values.shape[0] == 1:
            return values[0][idx]
        nz = idx.shape[0]
        return np.take_along_axis(values, idx.reshape(nz, -1), axis=1).reshape(idx.shape)

    def point(self, theta: float, z: float, inset: float) -> np.ndarray:
        """LPS point at polar angle ``theta``, ``inset`` mm inside the skin, at height z."""
        r = float(self.radius(np.asarray(theta), z=np.asarray(z))) - inset
        cy = float(self._interp(self.cy, z))
        return np.array([self.x0 + r * np.cos(theta), cy + r * np.sin(theta), z])


def make_body(rng: np.random.Generator, grid: Grid, lay: Layout) -> Body:
    z = grid.z
    zk = lay.z_l1
    # waist profile: wider at the hips (below L4), broad chest above the diaphragm
    hips = np.clip((lay.level_z("L4") - z) / 80.0, 0, 1)
    chest = np.clip((z - lay.level_z("T10")) / 120.0, 0, 1)
    a0 = rng.uniform(135, 185)
    a = a0 * (1 + 0.12 * hips - 0.02 * chest) + smooth_profile(rng, z, 8)
    depth_ap = rng.uniform(190, 290)  # total AP diameter at the kidneys
    frac_post = rng.uniform(0.40, 0.46)
    b_post = depth_ap * frac_post * (1 + 0.05 * chest) + smooth_profile(rng, z, 6)
    b_ant = depth_ap * (1 - frac_post) * (1 - 0.10 * hips + 0.05 * chest) + smooth_profile(rng, z, 10)
    fat0 = 6 + 34 * rng.beta(1.6, 2.6)  # mostly 10-25 mm, up to 40
    # posterior skin: spinous process tips, the erector spinae, then the subcutaneous fat
    y_back = lay.y_vb + rng.uniform(68, 84) + 0.65 * fat0
    cy = y_back - b_post
    harm = np.stack([smooth_profile(rng, z, 0.025) + rng.uniform(-0.03, 0.03) for _ in range(3)])
    fat = fat0 * (1 + 0.25 * hips) * (1 + smooth_profile(rng, z, 0.12))
    body = Body(
        x0=lay.x0, cy=cy.astype(np.float64), a=a, b_ant=b_ant, b_post=b_post, harm=harm,
        phase=rng.uniform(0, 2 * np.pi, 3), fat=fat, fat_ant=rng.uniform(1.0, 1.6),
        wall=rng.uniform(12, 21), p_post=rng.uniform(2.4, 3.2), groove=rng.uniform(0.0, 0.04), z=z,
    )
    _enclose_kidneys(body, lay)
    del zk
    return body


def _enclose_kidneys(body: Body, lay: Layout) -> None:
    """Grow the body until every kidney point lies at least wall + fat + 20 mm inside the skin."""
    pts = np.concatenate([k.points for k in lay.kidneys]) if lay.kidneys else np.zeros((0, 3))
    if len(pts) == 0:
        return
    pts = pts[:: max(1, len(pts) // 4000)]
    for _ in range(12):
        cy = np.interp(pts[:, 2], body.z, body.cy)
        dx, dy = pts[:, 0] - body.x0, pts[:, 1] - cy
        theta = np.arctan2(dy, dx)
        rho = np.hypot(dx, dy)
        need = rho + np.interp(pts[:, 2], body.z, body.fat) + body.wall + 20.0
        ratio = float(np.max(need / body.radius(theta, z=pts[:, 2])))
        if ratio <= 1.0:
            return
        post = dy > 0
        grow = min(ratio, 1.25)
        body.a *= grow
        if np.any(post & (need / body.radius(theta, z=pts[:, 2]) > 1)):
            body.b_post *= grow
            body.cy -= 0  # keep the back where it is; grow forward instead
        body.b_ant *= grow
