"""The bridge between the library and Slicer's MRML scene, without any GUI.

Imports only what the ``slicer-core`` wheel also provides (``vtkMRML*`` classes, ``slicer.util``
array helpers, the Segmentations and Terminologies logics), never ``qt``, ``ctk``, ``slicer.app`` or
``slicer.ScriptedLoadableModule``: the same code runs inside Slicer and in the tests here.
"""

from .background import BackgroundSegmentation, CudaProbe, python_executable
from .export import export_training_case, kits_labels_of_node
from .install import BackgroundInstall, describe_plan, install_plan, install_plan_here
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
    "BackgroundInstall",
    "BackgroundSegmentation",
    "CudaProbe",
    "apply_result",
    "describe_plan",
    "export_training_case",
    "export_structures",
    "install_plan",
    "install_plan_here",
    "kits_labels_of_node",
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
