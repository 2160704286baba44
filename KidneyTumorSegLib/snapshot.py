"""A PNG for a quick look: axial and coronal slices through the largest tumour (or the kidneys).

Slices are resampled on LPS-aligned planes at a square pixel size, so the picture is in the
radiological convention (patient's right on the image's left, anterior up on axial, superior up on
coronal) whatever the orientation of the input file. Outlines are drawn in a CT soft-tissue window.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import atomic_output
from .memory import resample_box_chunked
from .volume import Volume

KIDNEY_RGB = (185, 102, 83)
TUMOUR_RGB = (255, 230, 60)
WINDOW = (40.0, 400.0)  # level, width


def _focus_point(labels: Volume) -> np.ndarray:
    """Physical centre of the largest tumour, else of the kidneys, else of the volume."""
    for mask in (labels.array == 2, labels.array > 0):
        if mask.any():
            comps, n = ndimage.label(mask)
            sizes = ndimage.sum(mask, comps, np.arange(1, n + 1))
            c = ndimage.center_of_mass(comps == int(np.argmax(sizes)) + 1)
            return labels.index_to_physical(np.asarray(c)[::-1])
    return labels.index_to_physical((np.asarray(labels.size_xyz) - 1) / 2.0)


def _plane(ct: Volume, labels: Volume, point, axis: int, pixel: float):
    """(ct, labels) 2D arrays on the plane through ``point`` normal to physical ``axis`` (0=x,1=y,2=z)."""
    lo, hi = ct.physical_bounds()
    spacing = [pixel, pixel, pixel]
    origin = lo.copy()
    size = np.maximum(1, np.floor((hi - lo) / pixel).astype(int) + 1)
    origin[axis] = point[axis]
    size[axis] = 1
    # Only the slab of the scan the plane passes through is copied (large scans stay cheap).
    img = resample_box_chunked(ct, origin, size, spacing, "linear", -1024.0).array
    lab = resample_box_chunked(labels, origin, size, spacing, "nearest", 0).array
    if axis == 2:
        return img[0], lab[0]
    return img[::-1, 0, :], lab[::-1, 0, :]  # coronal: superior up


def _render(img: np.ndarray, lab: np.ndarray) -> np.ndarray:
    level, width = WINDOW
    grey = np.clip((img - (level - width / 2)) / width, 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    for value, colour in ((1, KIDNEY_RGB), (2, TUMOUR_RGB)):
        mask = lab >= value if value == 1 else lab == value
        edge = mask & ~ndimage.binary_erosion(mask)
        edge = ndimage.binary_dilation(edge)
        rgb[edge] = colour
    return rgb


def write_snapshot(ct: Volume, labels: Volume, path: str | os.PathLike, title: str = "") -> Path:
    from PIL import Image, ImageDraw

    point = _focus_point(labels)
    pixel = max(0.5, float(min(ct.spacing[:2])))
    panels = [_render(*_plane(ct, labels, point, axis, pixel)) for axis in (2, 1)]
    target = 384
    images = []
    for p in panels:
        im = Image.fromarray(p)
        scale = target / max(im.size)
        images.append(im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))), Image.BILINEAR))
    header = 22
    canvas = Image.new("RGB", (sum(i.width for i in images) + 10, max(i.height for i in images) + header), "black")
    x = 0
    for im, name in zip(images, ("axial", "coronal")):
        canvas.paste(im, (x, header))
        ImageDraw.Draw(canvas).text((x + 4, 4), name, fill=(220, 220, 220))
        x += im.width + 10
    draw = ImageDraw.Draw(canvas)
    draw.text((canvas.width - 180, 4), "R | L   kidney", fill=KIDNEY_RGB)
    draw.text((canvas.width - 60, 4), "tumour", fill=TUMOUR_RGB)
    if title:
        draw.text((140, 4), title[:60], fill=(220, 220, 220))
    path = Path(path)
    with atomic_output(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return path
