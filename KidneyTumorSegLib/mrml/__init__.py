"""The bridge between the library and Slicer's MRML scene, without any GUI.

Imports only what the ``slicer-core`` wheel also provides (``vtkMRML*`` classes, ``slicer.util``
array helpers, the Segmentations and Terminologies logics), never ``qt``, ``ctk``, ``slicer.app`` or
``slicer.ScriptedLoadableModule``: the same code runs inside Slicer and in the tests here.
"""

from .background import BackgroundSegmentation, CudaProbe, python_executable
from .results import read_results_table, table_rows, update_results_table
from .run import apply_result, results_table_of, segment_volume_node
from .segments import (
    export_structures,
    new_segmentation_node,
    our_segment_ids,
    place_beside,
    segmentation_has_user_edits,
    stored_report,
    user_edited_segments,
    user_segment_ids,
    write_structures,
)
from .volumes import volume_from_node, volume_to_node

__all__ = [
    "BackgroundSegmentation",
    "CudaProbe",
    "apply_result",
    "export_structures",
    "new_segmentation_node",
    "our_segment_ids",
    "place_beside",
    "python_executable",
    "read_results_table",
    "results_table_of",
    "segment_volume_node",
    "segmentation_has_user_edits",
    "stored_report",
    "table_rows",
    "update_results_table",
    "user_edited_segments",
    "user_segment_ids",
    "volume_from_node",
    "volume_to_node",
    "write_structures",
]
