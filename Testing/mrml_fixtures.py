"""A real MRML scene for tests, set up the way the Slicer application sets up its own.

``vtkMRMLScene`` + ``vtkSlicerApplicationLogic``, with the colour, volumes, terminologies,
segmentations and subject-hierarchy logics registered through ``SetModuleLogic`` and
``slicer.mrmlScene`` pointing at the scene; everything is torn down afterwards. Import the fixtures
into a test module with ``from mrml_fixtures import mrml_scene, make_volume  # noqa: F401``.
"""

from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.volume import Volume

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML as a wheel) is not installed")

from KidneyTumorSegLib.mrml.segments import _layer_image  # noqa: E402
from KidneyTumorSegLib.mrml.volumes import matrix_to_numpy  # noqa: E402

LOGICS = (
    ("Colors", "vtkSlicerColorLogic"),
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Terminologies", "vtkSlicerTerminologiesModuleLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
)


class SceneEnv:
    """The scene plus its application logic and module logics (as Slicer's ``slicer.app`` holds them)."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.logics = {}
        for name, class_name in LOGICS:
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[name] = logic

    def close(self):
        self.scene.Clear(True)
        for name, logic in reversed(list(self.logics.items())):
            self.app_logic.SetModuleLogic(name, None)
            logic.SetMRMLScene(None)
        self.app_logic.SetMRMLScene(None)


@pytest.fixture
def mrml_env():
    env = SceneEnv()
    had = hasattr(slicer, "mrmlScene")
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = env.scene
    try:
        yield env
    finally:
        env.close()
        if had:
            slicer.mrmlScene = previous
        else:
            del slicer.mrmlScene


@pytest.fixture
def mrml_scene(mrml_env):
    return mrml_env.scene


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def oblique_volume(shape_zyx=(24, 40, 48), seed=0) -> Volume:
    """A small CT-like volume on an oblique, anisotropic grid with a non-trivial origin."""
    rng = np.random.default_rng(seed)
    direction = rotation("z", 17.0) @ rotation("x", -9.0)
    array = rng.integers(-200, 300, size=shape_zyx).astype(np.int16)
    return Volume(array, spacing=(0.78, 0.91, 2.5), origin=(-81.5, 43.25, 117.0), direction=direction)


def box_structures(shape_zyx) -> dict[str, np.ndarray]:
    """Hand-made structure masks with known voxel counts: two kidneys, a tumour in the right one."""
    z, y, x = shape_zyx
    kr = np.zeros(shape_zyx, bool)
    kl = np.zeros(shape_zyx, bool)
    tr = np.zeros(shape_zyx, bool)
    kr[z // 4 : z // 2 + 2, y // 4 : y // 2, 2 : x // 2 - 2] = True
    kl[z // 4 : 3 * z // 4, y // 3 : 2 * y // 3, x // 2 + 2 : x - 3] = True
    tr[z // 4 + 1 : z // 4 + 4, y // 4 + 1 : y // 4 + 5, 3:8] = True
    kr &= ~tr
    return {"kidney_right": kr, "kidney_left": kl, "tumour_right": tr}


def vtk_matrix(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_to_numpy(m)


def node_state(scene) -> dict:
    """IDs and MTimes of every node, to prove which nodes a run touched."""
    out = {}
    for i in range(scene.GetNumberOfNodes()):
        n = scene.GetNthNode(i)
        out[n.GetID()] = n.GetMTime()
    return out


def add_user_segment(node, volume_node, mask, name="My notes", color=(0.1, 0.2, 0.9)) -> str:
    """A segment made the way the Segment Editor makes one (empty segment, then a labelmap)."""
    seg_id = node.GetSegmentation().AddEmptySegment("", name, color)
    image = _layer_image(mask.astype(np.uint8), vtk_matrix(volume_node))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, node, seg_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )
    return seg_id
