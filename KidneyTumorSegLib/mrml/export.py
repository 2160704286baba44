"""A corrected segmentation node becomes a KiTS training case, without changing the scene.

Slicer's own Segmentations logic puts the segments on the input volume's grid
(``GenerateMergedLabelmapInReferenceGeometry``: it resamples a segment stored on another grid and
follows parent transforms), one call for all segments with each segment's KiTS label, tumour last so
it wins where an edit made the two overlap. Nothing is added to or changed in the scene: the label
map lives only in memory until it is written by :func:`..export.write_training_case`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..export import _segment_record, segment_label, write_training_case
from ..terminology import STRUCTURE_TAG, TERMINOLOGY_TAG
from .segments import _oriented_image_to_numpy, segment_tag, stored_report, user_edited_segments
from .volumes import volume_from_node


def _segment_tags(segment) -> dict[str, str]:
    tags = {}
    for name in (TERMINOLOGY_TAG, STRUCTURE_TAG):
        value = segment_tag(segment, name)
        if value is not None:
            tags[name] = value
    return tags


def _has_binary_labelmaps(segmentation) -> bool:
    import slicer

    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    return segmentation.GetNumberOfSegments() == 0 or bool(segmentation.ContainsRepresentation(name))


def kits_labels_of_node(segmentation_node, volume_node) -> tuple[np.ndarray, list[dict]]:
    """The node's segments as one 0/1/2 array on the volume's grid, and a record per segment."""
    import slicer
    import vtk

    if segmentation_node is None or volume_node is None:
        raise InputError("Export for training needs both the segmentation and the CT volume it was made on.")
    segmentation = segmentation_node.GetSegmentation()
    if not _has_binary_labelmaps(segmentation):
        raise InputError(
            f"The segmentation '{segmentation_node.GetName()}' holds surfaces but no label maps; show it in "
            "the Segment Editor once (which makes them) and export again."
        )
    edited = set(user_edited_segments(segmentation_node))
    order, records = [], []
    for i in range(segmentation.GetNumberOfSegments()):
        seg_id = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(seg_id)
        tags = _segment_tags(segment)
        label, how = segment_label(segment.GetName(), tags)
        order.append((label, i, seg_id))
        record = _segment_record(segment.GetName(), label, how, tags.get(TERMINOLOGY_TAG), 0,
                                 edited_since_computed=segment.GetName() in edited)
        del record["voxels"]  # overlaps make per-segment counts ambiguous; the case records label counts
        records.append(record)
    shape = slicer.util.arrayFromVolume(volume_node).shape
    labels = np.zeros(shape, np.uint8)
    if order:
        order.sort()  # kidneys first, tumours painted over them
        ids = vtk.vtkStringArray()
        values = vtk.vtkIntArray()
        for label, _, seg_id in order:
            ids.InsertNextValue(seg_id)
            values.InsertNextValue(label)
        image = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
            segmentation_node, volume_node, ids, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, image, values
        )
        merged = _oriented_image_to_numpy(image)
        extent = image.GetExtent()
        if merged.shape != shape or extent[0::2] != (0, 0, 0):
            raise InputError(
                f"The segments of '{segmentation_node.GetName()}' could not be brought onto the grid of "
                f"'{volume_node.GetName()}'; nothing was written."
            )
        labels = np.ascontiguousarray(merged, np.uint8)
    return labels, records


def _file_of(node) -> str | None:
    storage = node.GetStorageNode() if node is not None and hasattr(node, "GetStorageNode") else None
    name = storage.GetFileName() if storage is not None else None
    return str(name) if name else None


def export_training_case(segmentation_node, volume_node, out_dir, case_id=None) -> Path:
    """Write the segmentation (as corrected) and its CT as one KiTS case; returns the case folder.

    The labels are the segments' voxels on the volume's grid; the scene is left exactly as it was.
    """
    labels, records = kits_labels_of_node(segmentation_node, volume_node)
    ct = volume_from_node(volume_node, copy=False)
    report = stored_report(segmentation_node) or {}
    provenance = {
        "source": {
            "from": "3D Slicer (Kidney Tumor Seg: Export for training)",
            "volume": volume_node.GetName(),
            "volume_file": _file_of(volume_node),
            "segmentation": segmentation_node.GetName(),
            "segmentation_file": _file_of(segmentation_node),
        },
        "segments": records,
        "edited_since_computed": user_edited_segments(segmentation_node),
        "computed_with": {k: report[k] for k in ("weights", "version", "device") if k in report},
    }
    return write_training_case(out_dir, ct, ct.with_array(labels), provenance, case_id)
