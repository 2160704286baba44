"""Render the extension's screenshot and the Sample Data thumbnail from a real result.

The sample CT (the synthetic phantom Slicer's Sample Data module offers) is segmented with the
bundled weights on the CPU; the screenshot shows the library's own snapshot (axial and coronal
slices with outlines) beside a VTK rendering of the segmented surfaces in Slicer's colours, and
the volumes from the run's report. Re-run after changing the weights::

    python scripts/make_screenshots.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def surfaces_picture(labels, size=(560, 560)) -> np.ndarray:
    """Kidneys (see-through) and tumours (opaque) as smoothed surfaces, seen from the front."""
    import vtk
    from vtk.util import numpy_support

    from KidneyTumorSegLib.segfile import ijk_to_ras
    from KidneyTumorSegLib.terminology import KIDNEY_RGB, TUMOUR_RGB

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.11, 0.12, 0.16)
    window.AddRenderer(renderer)
    matrix = vtk.vtkMatrix4x4()
    m = ijk_to_ras(labels)
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(m[r, c]))
    for values, rgb, opacity in (((1, 2), KIDNEY_RGB, 0.45), ((2,), TUMOUR_RGB, 1.0)):
        mask = np.isin(labels.array, values).astype(np.uint8)
        if not mask.any():
            continue
        image = vtk.vtkImageData()
        nz, ny, nx = mask.shape
        image.SetDimensions(nx, ny, nz)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.ravel(), deep=True))
        surface = vtk.vtkDiscreteFlyingEdges3D()
        surface.SetInputData(image)
        surface.SetValue(0, 1)
        smooth = vtk.vtkWindowedSincPolyDataFilter()
        smooth.SetInputConnection(surface.GetOutputPort())
        smooth.SetNumberOfIterations(20)
        smooth.SetPassBand(0.05)
        smooth.NormalizeCoordinatesOn()
        transform = vtk.vtkTransform()
        transform.SetMatrix(matrix)
        to_ras = vtk.vtkTransformPolyDataFilter()
        to_ras.SetInputConnection(smooth.GetOutputPort())
        to_ras.SetTransform(transform)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(to_ras.GetOutputPort())
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*(c / 255.0 for c in rgb))
        actor.GetProperty().SetOpacity(opacity)
        actor.GetProperty().SetSpecular(0.3)
        renderer.AddActor(actor)
    camera = renderer.GetActiveCamera()
    renderer.ResetCamera()
    focal = np.array(camera.GetFocalPoint())
    distance = camera.GetDistance()
    camera.SetPosition(*(focal + np.array([0.0, distance, 0.0])))  # anterior view: patient's right on the left
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.05)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    return np.ascontiguousarray(rgb)


def sample_thumbnail(ct, truth, path: Path) -> None:
    """The axial slice with most kidney in a soft-tissue window, for the Sample Data button."""
    from PIL import Image

    array = ct.array[int(np.argmax((truth.array > 0).sum(axis=(1, 2))))].astype(float)
    level, width = 40.0, 400.0
    grey = np.clip((array - (level - width / 2)) / width, 0, 1) * 255
    image = Image.fromarray(grey.astype(np.uint8)[:, ::-1] if ct.direction[0, 0] < 0 else grey.astype(np.uint8))
    image.resize((128, 128), Image.LANCZOS).save(path, optimize=True)


def main(argv=None) -> int:
    from PIL import Image, ImageDraw

    from KidneyTumorSegLib.pipeline import Pipeline
    from KidneyTumorSegLib.report import summary_text
    from KidneyTumorSegLib.sample import make_sample_ct
    from KidneyTumorSegLib.snapshot import write_snapshot

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "Resources"), help="the Resources folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "Screenshots").mkdir(parents=True, exist_ok=True)

    ct, truth = make_sample_ct()
    result = Pipeline.from_weights(None, device="cpu").run(ct)
    with tempfile.TemporaryDirectory() as tmp:
        write_snapshot(ct, result.labels, Path(tmp) / "slices.png", title="Sample CT (synthetic phantom)")
        slices = Image.open(Path(tmp) / "slices.png").convert("RGB")
    surfaces = Image.fromarray(surfaces_picture(result.labels, size=(slices.height, slices.height)))
    lines = summary_text(result.report).splitlines()[:2]
    header = 26 + 20 * len(lines)
    sheet = Image.new("RGB", (slices.width + surfaces.width, slices.height + header), (28, 30, 40))
    sheet.paste(slices, (0, header))
    sheet.paste(surfaces, (slices.width, header))
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 6), "Kidney Tumor Seg: one click on the Sample Data CT (a synthetic phantom, not a patient)",
              fill=(235, 235, 235))
    for i, line in enumerate(lines):
        draw.text((10, 26 + 20 * i), line, fill=(200, 210, 230))
    sheet.save(out / "Screenshots" / "KidneyTumorSeg-1.png", optimize=True)
    sample_thumbnail(ct, truth, out / "Icons" / "KidneyTumorSegPhantom.png")
    print(f"wrote {out / 'Screenshots' / 'KidneyTumorSeg-1.png'} ({sheet.width} x {sheet.height}) and the thumbnail")
    return 0


if __name__ == "__main__":
    sys.exit(main())
