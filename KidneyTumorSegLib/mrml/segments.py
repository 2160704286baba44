"""Structures -> segments of a segmentation node, and back.

One segment per structure and side, with name, colour, terminology and two tags of ours: the
structure key (which marks the segment as written by this extension) and a fingerprint of its voxels
as written (which reveals later edits). Our segments are replaced on every run; any other segment in
the node is the user's and is left exactly as it is.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from ..errors import InputError, KidneyTumorSegError
from ..segfile import mask_bbox, mask_fingerprint, pack_layers
from ..terminology import FINGERPRINT_TAG, STRUCTURE_TAG, STRUCTURES, ordered_keys
from ..volume import Volume
from .volumes import matrix_to_numpy, numpy_to_matrix, volume_from_node

log = logging.getLogger("KidneyTumorSeg")

# Node attribute: the structure keys the last run wrote (to notice segments the user deleted).
WRITTEN_ATTRIBUTE = "KidneyTumorSeg.structures"
# Node attribute: the engine's report of the last run (JSON).
REPORT_ATTRIBUTE = "KidneyTumorSeg.report"
# Node reference role from the segmentation to its results table.
RESULTS_REFERENCE_ROLE = "KidneyTumorSeg.results"


def _binary_labelmap_name() -> str:
    import slicer

    return slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


def _closed_surface_name() -> str:
    import slicer

    return slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()


def segment_tag(segment, name: str) -> str | None:
    """A segment's tag value, or None when the tag is absent."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def _source_representation(segmentation) -> str:
    getter = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
    return getter()


def our_segment_ids(segmentation_node) -> dict[str, str]:
    """Structure key -> segment ID of the segments this extension wrote in the node."""
    seg = segmentation_node.GetSegmentation()
    out = {}
    for i in range(seg.GetNumberOfSegments()):
        seg_id = seg.GetNthSegmentID(i)
        key = segment_tag(seg.GetSegment(seg_id), STRUCTURE_TAG)
        if key:
            out[key] = seg_id
    return out


def user_segment_ids(segmentation_node) -> list[str]:
    """IDs of the segments that are not ours (kept untouched by every run)."""
    seg = segmentation_node.GetSegmentation()
    ours = set(our_segment_ids(segmentation_node).values())
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments()) if seg.GetNthSegmentID(i) not in ours]


# --- voxels of a segment ------------------------------------------------------------------------
def _oriented_image_to_numpy(image) -> np.ndarray:
    from vtk.util import numpy_support

    e = image.GetExtent()
    shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    if min(shape) <= 0 or image.GetPointData().GetScalars() is None:
        return np.zeros((0, 0, 0), np.uint8)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def _segment_mask_and_offset(segmentation_node, segment_id: str):
    """The segment's binary labelmap: bool array (z, y, x), extent start (i, j, k), image-to-RAS matrix."""
    import slicer
    import vtk

    image = slicer.vtkOrientedImageData()
    ok = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, image, False
    )
    if not ok:
        return None, None, None
    arr = _oriented_image_to_numpy(image)
    e = image.GetExtent()
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    # The representation may be the shared layer (all segments' label values) or already binary.
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    mask = arr == label
    if not mask.any() and arr.max(initial=0) == 1:
        mask = arr > 0
    return mask, (e[0], e[2], e[4]), matrix_to_numpy(m)


def segment_fingerprint(segmentation_node, segment_id: str) -> str | None:
    """Fingerprint of the segment's current voxels (comparable with the one stored when written)."""
    mask, offset, _ = _segment_mask_and_offset(segmentation_node, segment_id)
    if mask is None:
        return None
    return mask_fingerprint(mask, offset)


def user_edited_segments(segmentation_node) -> list[str]:
    """Names of our segments whose voxels changed since we wrote them, or that were deleted.

    The user's own segments are never in this list: a run leaves them untouched anyway.
    """
    if segmentation_node is None:
        return []
    seg = segmentation_node.GetSegmentation()
    ours = our_segment_ids(segmentation_node)
    edited = []
    for seg_id in ours.values():
        segment = seg.GetSegment(seg_id)
        stored = segment_tag(segment, FINGERPRINT_TAG)
        if stored is None or segment_fingerprint(segmentation_node, seg_id) != stored:
            edited.append(segment.GetName())
    written = segmentation_node.GetAttribute(WRITTEN_ATTRIBUTE)
    for key in (written.split(",") if written else []):
        if key and key not in ours:
            entry = STRUCTURES.get(key)
            edited.append(f"{entry.name if entry else key} (deleted)")
    return edited


def segmentation_has_user_edits(segmentation_node) -> bool:
    """True when running again would overwrite corrections the user made to our segments."""
    return bool(user_edited_segments(segmentation_node))


# --- writing ------------------------------------------------------------------------------------
def _layer_image(layer: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """A vtkOrientedImageData on the reference grid, cropped to the layer's content."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    i0, i1, j0, j1, k0, k1 = mask_bbox(layer > 0)
    crop = np.ascontiguousarray(layer[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1])
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_ras_matrix))
    image.SetExtent(i0, i1, j0, j1, k0, k1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = crop.ravel()
    return image


def _check_transform(segmentation_node, volume_node) -> None:
    """Our voxels are on the volume's grid: the segmentation must sit under the same transform."""
    vol_tf = volume_node.GetParentTransformNode()
    seg_tf = segmentation_node.GetParentTransformNode()
    if vol_tf is seg_tf:
        return
    if user_segment_ids(segmentation_node):
        raise KidneyTumorSegError(
            f"The segmentation '{segmentation_node.GetName()}' is under a different transform than the "
            f"volume '{volume_node.GetName()}' and holds other segments; choose a new output segmentation."
        )
    segmentation_node.SetAndObserveTransformNodeID(vol_tf.GetID() if vol_tf else None)


def write_structures(
    segmentation_node,
    structures: dict[str, np.ndarray],
    volume_node,
    closed_surface: bool = True,
    grid: Volume | None = None,
) -> dict[str, str]:
    """Replace our segments in ``segmentation_node`` with ``structures`` (key -> bool mask (z, y, x)).

    The masks lie on ``volume_node``'s voxel grid (``grid``, when given, must be that grid). The
    user's other segments are kept as they are. Returns structure key -> segment ID.
    """
    import slicer
    import vtk

    if grid is None:
        grid = volume_from_node(volume_node, copy=False)
    items = []
    for key in ordered_keys(structures):
        mask = np.asarray(structures[key])
        if mask.shape != grid.array.shape:
            raise InputError(
                f"The structure {key} has shape {mask.shape}, but the volume grid is {grid.array.shape}."
            )
        mask = mask.astype(bool, copy=False)
        if mask.any():
            items.append((key, mask))
    seg = segmentation_node.GetSegmentation()
    if seg.GetNumberOfSegments() == 0:
        setter = getattr(seg, "SetSourceRepresentationName", None) or seg.SetMasterRepresentationName
        setter(_binary_labelmap_name())
    elif _source_representation(seg) != _binary_labelmap_name() and user_segment_ids(segmentation_node):
        raise KidneyTumorSegError(
            f"The segmentation '{segmentation_node.GetName()}' is edited as surfaces, not as a label map; "
            "choose a new output segmentation."
        )
    _check_transform(segmentation_node, volume_node)

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    ijk_to_ras = matrix_to_numpy(m)
    layers, where = pack_layers([mask for _, mask in items])
    images = [_layer_image(layer, ijk_to_ras) for layer in layers]

    was_modifying = segmentation_node.StartModify()
    try:
        previous = our_segment_ids(segmentation_node)
        for seg_id in previous.values():
            seg.RemoveSegment(seg_id)
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        written: dict[str, str] = {}
        for (key, mask), (layer, label) in zip(items, where):
            entry = STRUCTURES.get(key)
            segment = slicer.vtkSegment()
            segment.SetName(entry.name if entry else key)
            segment.SetNameAutoGenerated(False)
            if entry:
                segment.SetColor(*entry.color)
                segment.SetColorAutoGenerated(False)
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry.terminology)
            segment.SetTag(STRUCTURE_TAG, key)
            segment.SetTag(FINGERPRINT_TAG, mask_fingerprint(mask))
            segment.SetLabelValue(label)
            segment.AddRepresentation(_binary_labelmap_name(), images[layer])
            seg_id = previous.get(key, key)
            if seg.GetSegment(seg_id) is not None:
                seg_id = seg.GenerateUniqueSegmentID(key)
            if not seg.AddSegment(segment, seg_id):
                raise KidneyTumorSegError(f"The segment {segment.GetName()} could not be added to the segmentation.")
            written[key] = seg_id
        segmentation_node.SetAttribute(WRITTEN_ATTRIBUTE, ",".join(written))
    finally:
        segmentation_node.EndModify(was_modifying)

    if segmentation_node.GetDisplayNode() is None and segmentation_node.GetScene() is not None:
        segmentation_node.CreateDefaultDisplayNodes()
    if closed_surface and written:
        segmentation_node.CreateClosedSurfaceRepresentation()
    return written


def place_beside(node, reference_node) -> None:
    """Put ``node`` under the same subject-hierarchy parent (patient/study/folder) as the reference.

    Does nothing when the scene has no subject hierarchy node (a bare scene outside Slicer).
    """
    scene = reference_node.GetScene() if reference_node is not None else None
    if scene is None or node.GetScene() is not scene:
        return
    sh = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
    if sh is None:
        return
    ref_item = sh.GetItemByDataNode(reference_node)
    if not ref_item:
        return
    parent = sh.GetItemParent(ref_item)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(parent, node)
    elif sh.GetItemParent(item) != parent:
        sh.SetItemParent(item, parent)


def new_segmentation_node(volume_node, name: str | None = None):
    """A new segmentation node named after the volume, beside it in the subject hierarchy."""
    scene = volume_node.GetScene()
    if scene is None:
        raise InputError("The input volume is not in a scene.")
    node = scene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", name or scene.GenerateUniqueName(f"{volume_node.GetName()} kidneys")
    )
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    place_beside(node, volume_node)
    return node


def store_report(segmentation_node, report: dict) -> None:
    segmentation_node.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report, sort_keys=True))


def stored_report(segmentation_node) -> dict | None:
    text = segmentation_node.GetAttribute(REPORT_ATTRIBUTE) if segmentation_node is not None else None
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


# --- reading back -------------------------------------------------------------------------------
def export_structures(segmentation_node, reference_volume_node, keys_only_ours: bool = False) -> dict[str, np.ndarray]:
    """Every segment as a bool mask on the reference volume's grid (resampled by Slicer if needed).

    Keys: structure key for our segments, segment name otherwise. Uses a temporary label volume.
    """
    import slicer

    scene = segmentation_node.GetScene()
    seg = segmentation_node.GetSegmentation()
    ours = {v: k for k, v in our_segment_ids(segmentation_node).items()}
    out: dict[str, np.ndarray] = {}
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__KidneyTumorSeg_export__")
    try:
        for i in range(seg.GetNumberOfSegments()):
            seg_id = seg.GetNthSegmentID(i)
            if keys_only_ours and seg_id not in ours:
                continue
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, [seg_id], label_node, reference_volume_node
            )
            if not ok:
                raise KidneyTumorSegError(f"The segment {seg.GetSegment(seg_id).GetName()} could not be exported.")
            arr = slicer.util.arrayFromVolume(label_node)
            out[ours.get(seg_id, seg.GetSegment(seg_id).GetName())] = np.array(arr > 0)
    finally:
        display = label_node.GetDisplayNode()
        color = display.GetColorNode() if display is not None else None
        scene.RemoveNode(label_node)
        if color is not None and color.GetName().startswith("__KidneyTumorSeg_export__"):
            scene.RemoveNode(color)
    return out


def closed_surface_points(segmentation_node, segment_id: str) -> int:
    """Number of points of the segment's closed surface (0 when it has none)."""
    poly = segmentation_node.GetClosedSurfaceInternalRepresentation(segment_id)
    return 0 if poly is None else int(poly.GetNumberOfPoints())


def has_closed_surfaces(segmentation_node) -> bool:
    seg = segmentation_node.GetSegmentation()
    return seg.ContainsRepresentation(_closed_surface_name())
