"""Volume nodes <-> :class:`Volume`.

Slicer stores a volume as image data plus an IJK-to-RAS matrix; the library works in LPS. The two
differ by the sign of the first two physical axes, so the conversion flips rows 0 and 1 of the
matrix (direction columns and origin alike) and nothing else: voxel order is the same in both
(``array[k, j, i]``).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..segfile import ijk_to_ras
from ..volume import Volume

FLIP = np.diag([-1.0, -1.0, 1.0])


def matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def numpy_to_matrix(array: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def volume_geometry_from_matrix(ijk_to_ras_matrix: np.ndarray, array: np.ndarray) -> Volume:
    """A Volume (LPS) holding ``array`` on the grid given by an IJK-to-RAS 4 x 4 matrix."""
    lps = FLIP @ np.asarray(ijk_to_ras_matrix, float)[:3, :]
    columns = lps[:, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise InputError("The volume has a degenerate geometry (zero or invalid voxel spacing).")
    return Volume(array, tuple(spacing), tuple(lps[:, 3]), columns / spacing)


def volume_from_node(volume_node, copy: bool = True) -> Volume:
    """The node's voxels and geometry as a Volume (LPS). The node is never modified.

    ``copy=False`` returns a view of the node's memory (read-only use only). Parent transforms are
    not applied: results computed on this grid belong under the same transform as the node.
    """
    import slicer.util

    if volume_node is None:
        raise InputError("No input volume was given.")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"The node '{volume_node.GetName()}' is not a scalar (grey-level) volume.")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"The volume '{volume_node.GetName()}' holds no voxels.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"The volume '{volume_node.GetName()}' is not a single-component (grey-level) image.")
    array = slicer.util.arrayFromVolume(volume_node)
    if array.ndim != 3:
        raise InputError(f"The volume '{volume_node.GetName()}' is not a 3D image.")
    if copy:
        array = np.array(array, copy=True)
    else:
        array = array.view()
        array.flags.writeable = False
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return volume_geometry_from_matrix(matrix_to_numpy(m), array)


def set_node_geometry(volume_node, volume: Volume) -> None:
    """Set the node's IJK-to-RAS matrix from a Volume's grid (voxels untouched)."""
    volume_node.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras(volume)))


def volume_to_node(volume: Volume, scene=None, name: str = "", node=None, class_name: str | None = None):
    """Put a Volume into the scene: a new node (``class_name``, default scalar volume) or ``node``.

    Label volumes: pass ``class_name="vtkMRMLLabelMapVolumeNode"``.
    """
    import slicer
    import slicer.util

    if node is None:
        scene = scene if scene is not None else slicer.mrmlScene
        node = scene.AddNewNodeByClass(class_name or "vtkMRMLScalarVolumeNode", name)
    set_node_geometry(node, volume)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    if node.GetDisplayNode() is None and node.GetScene() is not None:
        node.CreateDefaultDisplayNodes()
    return node


def ras_to_lps_points(points) -> np.ndarray:
    """Flip RAS points to LPS (and back: the flip is its own inverse)."""
    return np.asarray(points, float) @ FLIP
