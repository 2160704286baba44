"""Where the organs go: landmarks of a phantom derived from the kidneys in the label map.

Everything is in physical LPS mm (x to the patient's left, y posterior, z superior).  The kidneys
fix the rest: the spine lies between and slightly in front of them, the first lumbar vertebra at
about the level of the renal hila, the liver above the right kidney, the spleen above the left, the
diaphragm a few vertebrae higher and the pelvis four to five vertebrae lower.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..volume import Volume
from .shapes import Grid


@dataclass
class Kidney:
    side: str  # "right" (patient right, LPS -x) or "left"
    centre: np.ndarray
    long_axis: np.ndarray  # unit vector pointing to the upper pole
    top: float  # z of the upper pole (mm)
    bottom: float
    half_width: float  # half extent along x
    points: np.ndarray  # subsampled LPS points of the kidney (and tumour) voxels

    @property
    def medial(self) -> float:
        """+1 when the midline is towards +x (right kidney), -1 for the left kidney."""
        return 1.0 if self.side == "right" else -1.0

    @property
    def hilum(self) -> np.ndarray:
        return self.centre + np.array([self.medial * 0.75 * self.half_width, -8.0, -5.0])


@dataclass
class Layout:
    x0: float  # midline
    y_vb: float  # centre of the vertebral bodies (AP)
    z_l1: float  # centre of L1
    level_h: float  # vertebral level height (body + disc)
    kidneys: list[Kidney]
    fov_lo: np.ndarray
    fov_hi: np.ndarray
    extra: dict = field(default_factory=dict)

    def level_z(self, name: str) -> float:
        """z of a vertebral level centre: 'T8'..'T12', 'L1'..'L5', 'S1'."""
        order = ["T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
        return self.z_l1 - (order.index(name) - 5) * self.level_h

    def kidney(self, side: str) -> Kidney | None:
        return next((k for k in self.kidneys if k.side == side), None)


def kidney_points(kid: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Physical points of the kidney voxels of the working grid, and their component ids.

    Working on the axis-aligned grid makes the layout independent of how the caller's array is
    stored (flipped, permuted or oblique grids of the same patient give the same anatomy)."""
    comp, _ = ndi.label(kid)
    zyx = np.argwhere(kid)
    pts = np.stack([grid.x[zyx[:, 2]], grid.y[zyx[:, 1]], grid.z[zyx[:, 0]]], axis=1)
    return pts, comp[kid]


def find_kidneys(kid: np.ndarray, grid: Grid, fov_centre_x: float) -> list[Kidney]:
    pts, comp = kidney_points(kid, grid)
    if pts.size == 0:
        return []
    ids, counts = np.unique(comp, return_counts=True)
    order = ids[np.argsort(counts)[::-1]]
    groups = [pts[comp == order[0]]]
    if len(order) > 1:
        second = pts[comp == order[1]]
        far_apart = abs(second[:, 0].mean() - groups[0][:, 0].mean()) > 60.0
        if far_apart and len(second) > 0.1 * len(groups[0]):
            groups.append(second)
            # fragments (split tumour, small pieces) join the nearer kidney
            for cid in order[2:]:
                p = pts[comp == cid]
                near = int(np.argmin([abs(p[:, 0].mean() - g[:, 0].mean()) for g in groups]))
                groups[near] = np.concatenate([groups[near], p])
        else:
            groups = [pts]
    if len(groups) == 2:
        groups.sort(key=lambda g: g[:, 0].mean())
        sides = ["right", "left"]  # LPS: patient right has the smaller x
    else:
        sides = ["right" if groups[0][:, 0].mean() < fov_centre_x else "left"]
    kidneys = []
    for g, side in zip(groups, sides):
        c = g.mean(axis=0)
        q = g - c
        _, vecs = np.linalg.eigh(q.T @ q / max(1, len(q)))
        ax = vecs[:, 2]
        if ax[2] < 0:
            ax = -ax
        if abs(ax[2]) < 0.5:  # a round tumour-dominated blob: trust anatomy, not PCA
            ax = np.array([0.2 if side == "right" else -0.2, 0.35, 0.91])
            ax /= np.linalg.norm(ax)
        kidneys.append(
            Kidney(side, c, ax, float(g[:, 2].max()), float(g[:, 2].min()),
                   float(0.5 * np.ptp(g[:, 0])) if len(g) > 1 else 25.0, g)
        )
    return kidneys


def make_layout(labels: Volume, kid: np.ndarray, grid: Grid, rng: np.random.Generator) -> Layout:
    lo, hi = labels.physical_bounds()
    centre_fov = 0.5 * (lo + hi)
    kidneys = find_kidneys(kid, grid, float(centre_fov[0]))
    if len(kidneys) == 2:
        x0 = 0.5 * (kidneys[0].centre[0] + kidneys[1].centre[0]) + rng.uniform(-4, 4)
        yk = 0.5 * (kidneys[0].centre[1] + kidneys[1].centre[1])
        zk = 0.5 * (kidneys[0].centre[2] + kidneys[1].centre[2])
    elif len(kidneys) == 1:
        k = kidneys[0]
        x0 = k.centre[0] + k.medial * max(rng.uniform(60, 80), k.half_width + 35)
        yk, zk = k.centre[1], k.centre[2]
    else:
        x0 = centre_fov[0] + rng.uniform(-10, 10)
        yk = centre_fov[1] + rng.uniform(20, 50)
        zk = centre_fov[2]
    level_h = rng.uniform(31.0, 37.0)
    y_vb = yk - rng.uniform(-2.0, 14.0)
    z_l1 = zk + rng.uniform(0.0, 0.6) * level_h
    return Layout(x0=float(x0), y_vb=float(y_vb), z_l1=float(z_l1), level_h=float(level_h),
                  kidneys=kidneys, fov_lo=lo, fov_hi=hi)
