"""The one geometry type of the project: a voxel array plus where it lies in the patient.

Conventions (those of ITK/SimpleITK and DICOM, so that no axis order is ever guessed):
- ``array`` is indexed ``[k, j, i]`` = ``(z, y, x)``;
- ``spacing`` and ``origin`` are ``(x, y, z)``, in mm, i.e. along ``i``, ``j``, ``k``;
- ``direction`` is a 3 x 3 matrix whose *columns* are the unit vectors of the ``i``, ``j``, ``k``
  axes in physical LPS space (x to the patient's left, y posterior, z superior);
- physical point of index ``(i, j, k)`` = ``origin + direction @ diag(spacing) @ (i, j, k)``.

Slicer works in RAS; the MRML bridge converts (negate the first two physical axes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np


def _as_direction(direction) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    if d.size != 9:
        raise ValueError("direction must hold 9 values (a 3 x 3 matrix)")
    return d.reshape(3, 3)


def mask_box(mask: np.ndarray, margin_zyx=(0, 0, 0)) -> tuple[slice, ...] | None:
    """Array slices (z, y, x) of the bounding box of ``mask``'s nonzero voxels (a bool mask or a
    label map), grown by ``margin_zyx`` voxels on each side and clipped to the array; None when
    nothing is set."""
    found = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if any(v.size == 0 for v in found):
        return None
    return tuple(slice(max(0, int(v[0]) - int(m)), min(n, int(v[-1]) + 1 + int(m)))
                 for v, m, n in zip(found, margin_zyx, mask.shape))


def grid_corner_points(origin, spacing, size_xyz, direction=None) -> np.ndarray:
    """Physical LPS points (8, 3) of the eight corner voxel centres of a grid (identity direction
    unless given): what decides which part of another grid this one can touch."""
    corners = np.array(list(itertools.product(*((0, int(n) - 1) for n in size_xyz))), dtype=np.float64)
    direction = np.eye(3) if direction is None else _as_direction(direction)
    return corners @ (direction @ np.diag(np.asarray(spacing, np.float64))).T + np.asarray(origin, np.float64)


def signed_permutation(direction) -> list[tuple[int, float]] | None:
    """For each index axis (i, j, k): (physical axis, sign) when the direction is axis-aligned
    (e.g. KiTS19's I-P-L), None when it is oblique."""
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


@dataclass
class Volume:
    """A 3D image or label map with its geometry in physical (LPS, mm) space."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume holds a 3D array, got {self.array.ndim} dimensions")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = _as_direction(self.direction)
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError("spacing and origin must each hold 3 values (x, y, z)")
        if min(self.spacing) <= 0 or not np.all(np.isfinite(self.spacing)):
            raise ValueError(f"voxel spacing must be positive and finite, got {self.spacing}")

    # --- geometry -----------------------------------------------------------------------------
    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (the order SimpleITK reports)."""
        z, y, x = self.array.shape
        return (x, y, z)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_physical_matrix(self) -> np.ndarray:
        """4 x 4 homogeneous matrix taking (i, j, k, 1) to (x, y, z, 1) in LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def index_to_physical(self, ijk) -> np.ndarray:
        """Physical LPS points of continuous indices ``ijk`` (shape (..., 3), order i, j, k)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def physical_to_index(self, xyz) -> np.ndarray:
        """Continuous (i, j, k) indices of physical LPS points (shape (..., 3))."""
        xyz = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.direction @ np.diag(self.spacing))
        return (xyz - np.asarray(self.origin)) @ inv.T

    def corner_points(self) -> np.ndarray:
        """Physical LPS points (8, 3) of the eight corner voxel centres."""
        return grid_corner_points(self.origin, self.spacing, self.size_xyz, self.direction)

    def physical_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box (min, max) of the voxel centres."""
        pts = self.corner_points()
        return pts.min(axis=0), pts.max(axis=0)

    def same_grid(self, other: Volume, tol: float = 1e-4) -> bool:
        """True when both volumes have the same voxel grid (shape, spacing, origin, direction)."""
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol * 10)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def sub_volume(self, lo_ijk, hi_ijk) -> Volume:
        """The voxels in the index box ``[lo, hi)`` (i, j, k; clipped at the far end) as a volume of
        their own: a view, not a copy, with its origin at voxel ``lo``."""
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo_ijk[::-1], hi_ijk[::-1]))
        return Volume(self.array[sl], self.spacing, self.index_to_physical(np.asarray(lo_ijk, float)),
                      self.direction)

    def with_array(self, array: np.ndarray) -> Volume:
        """A new volume on this grid holding ``array`` (same shape required)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy())

    # --- SimpleITK ----------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> Volume:
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("expected a single-component (scalar) image")
        return cls(
            sitk.GetArrayFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            np.array(image.GetDirection()).reshape(3, 3),
        )

    def to_sitk(self):
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.flatten()))
        return image

    def __repr__(self) -> str:  # arrays are big: summarise
        return (
            f"Volume(shape_zyx={self.array.shape}, dtype={self.array.dtype}, spacing={self.spacing}, "
            f"origin={tuple(round(o, 3) for o in self.origin)})"
        )
