"""The whole job on a volume node, in this process (for scripts, tests and the module's self-test).

The GUI runs the same engine in a background process instead (:mod:`.background`); both end in
:func:`apply_result`, so the segmentation node looks the same whichever way it was made.
"""

from __future__ import annotations

from ..errors import InputError
from ..volume import Volume
from .results import update_results_table
from .segments import (
    RESULTS_REFERENCE_ROLE,
    new_segmentation_node,
    place_beside,
    store_report,
    write_structures,
)
from .volumes import volume_from_node


def results_table_of(segmentation_node):
    """The results table node of a segmentation this extension filled (None if there is none)."""
    if segmentation_node is None:
        return None
    return segmentation_node.GetNodeReference(RESULTS_REFERENCE_ROLE)


def apply_result(
    volume_node,
    structures: dict,
    report: dict | None = None,
    segmentation_node=None,
    grid: Volume | None = None,
    closed_surface: bool = True,
):
    """Write a result into the scene: segments (ours replaced, the user's kept) and results table.

    Returns the segmentation node (a new one, beside the volume, unless one is given).
    """
    if volume_node is None or volume_node.GetScene() is None:
        raise InputError("The input volume is no longer in the scene; the result was not loaded.")
    scene = volume_node.GetScene()
    if segmentation_node is None:
        segmentation_node = new_segmentation_node(volume_node)
    elif segmentation_node.GetScene() is None:
        scene.AddNode(segmentation_node)
    write_structures(segmentation_node, structures, volume_node, closed_surface=closed_surface, grid=grid)
    place_beside(segmentation_node, volume_node)
    if report is not None:
        store_report(segmentation_node, report)
        table = results_table_of(segmentation_node)
        if table is None or table.GetScene() is not scene:
            table = update_results_table(
                report, scene=scene, name=f"{segmentation_node.GetName()} results"
            )
            segmentation_node.SetNodeReferenceID(RESULTS_REFERENCE_ROLE, table.GetID())
        else:
            update_results_table(report, table_node=table)
        place_beside(table, volume_node)
    return segmentation_node


def segment_volume_node(
    volumeNode,
    segmentationNode=None,
    device: str = "auto",
    weights=None,
    progress=None,
    cancel=None,
    pipeline=None,
):
    """Segment a CT volume node in this process; returns the segmentation node.

    ``weights``: None (bundled), a file path or a loaded bundle; ``pipeline`` reuses a loaded engine.
    The input volume is only read. A new segmentation node is made unless ``segmentationNode`` is
    given; in a given node our segments are replaced and the user's other segments are kept.
    """
    volume = volume_from_node(volumeNode, copy=True)
    if pipeline is None:
        from ..pipeline import Pipeline

        pipeline = Pipeline.from_weights(weights, device=device)
    result = pipeline.run(volume, progress=progress, cancel=cancel)
    return apply_result(volumeNode, result.structures, result.report, segmentationNode, grid=volume)
