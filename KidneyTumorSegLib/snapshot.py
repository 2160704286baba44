"""A picture for a quick look: axial and coronal slices through the largest tumour (or the kidneys).

Slices are resampled on LPS-aligned planes at a square pixel size, so the picture is in the
radiological convention (patient's right on the image's left, anterior up on axial, superior up on
coronal) whatever the orientation of the input file. Outlines are drawn in a CT soft-tissue window;
orientation letters on each panel's edges and the slice's position (RAS mm, as Slicer shows it) say
how to read it. The format is the one the file name's suffix asks for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import InputError
from .io import atomic_output
from .resampling import AIR_HU, resample_box_chunked
from .volume import Volume

KIDNEY_RGB = (185, 102, 83)
TUMOUR_RGB = (255, 230, 60)
MARKER_RGB = (90, 200, 255)  # orientation letters: no grey of the CT window, no outline colour
WINDOW = (40.0, 400.0)  # level, width
#: File suffixes a snapshot may have, and the format each is written in.
SNAPSHOT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def snapshot_format(path) -> str:
    """The picture format a file name asks for; an unknown suffix is refused, not written as PNG."""
    suffix = Path(path).suffix.lower()
    if suffix not in SNAPSHOT_FORMATS:
        raise InputError(f"The snapshot {path} must end in one of {', '.join(SNAPSHOT_FORMATS)}.")
    return SNAPSHOT_FORMATS[suffix]


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
    img = resample_box_chunked(ct, origin, size, spacing, "linear", AIR_HU).array
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


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _mark(draw, xy, text: str, font, anchor: str, colour=MARKER_RGB) -> None:
    """A letter legible on bright and dark tissue alike: coloured, with a black rim."""
    try:
        draw.text(xy, text, fill=colour, font=font, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))
    except (ValueError, TypeError):  # bitmap fonts take no anchor or rim
        draw.text(xy, text, fill=colour, font=font)


HEADER = 38  # pixels above the panels: panel names and positions, then the title and the legend
#: Per panel: name, the letters on its (left, right, top, bottom) edges, and the RAS axis of its position.
PANELS = (("axial", ("R", "L", "A", "P"), "S"), ("coronal", ("R", "L", "S", "I"), "A"))


def panel_captions(point) -> list[str]:
    """Each panel's name and the position of its plane in RAS mm, as Slicer's slice views show it
    (axial: S = LPS z; coronal: A = -LPS y)."""
    positions = (float(point[2]), -float(point[1]))
    return [f"{name} {axis} {pos:.1f} mm" for (name, _, axis), pos in zip(PANELS, positions)]


def write_snapshot(ct: Volume, labels: Volume, path: str | os.PathLike, title: str = "") -> Path:
    from PIL import Image, ImageDraw

    fmt = snapshot_format(path)
    point = _focus_point(labels)
    pixel = max(0.5, float(min(ct.spacing[:2])))
    panels = [_render(*_plane(ct, labels, point, axis, pixel)) for axis in (2, 1)]
    captions = panel_captions(point)
    target = 384
    images = []
    for p in panels:
        im = Image.fromarray(p)
        scale = target / max(im.size)
        images.append(im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))), Image.BILINEAR))
    header = HEADER
    canvas = Image.new("RGB", (sum(i.width for i in images) + 10, max(i.height for i in images) + header), "black")
    draw = ImageDraw.Draw(canvas)
    small, letters = _font(12), _font(16)
    x = 0
    for im, (_, (left, right, top, bottom), _), caption in zip(images, PANELS, captions):
        canvas.paste(im, (x, header))
        draw.text((x + 4, 4), caption, fill=(220, 220, 220), font=small)
        mid_x, mid_y, y1 = x + im.width // 2, header + im.height // 2, header + im.height
        _mark(draw, (x + 4, mid_y), left, letters, "lm")
        _mark(draw, (x + im.width - 4, mid_y), right, letters, "rm")
        _mark(draw, (mid_x, header + 4), top, letters, "mt")
        _mark(draw, (mid_x, y1 - 4), bottom, letters, "mb")
        x += im.width + 10
    draw.text((canvas.width - 110, 20), "kidney", fill=KIDNEY_RGB, font=small)
    draw.text((canvas.width - 55, 20), "tumour", fill=TUMOUR_RGB, font=small)
    if title:
        draw.text((4, 20), title[:70], fill=(220, 220, 220), font=small)
    path = Path(path)
    with atomic_output(path, suffix=path.suffix) as tmp:
        options = {"quality": 92} if fmt == "JPEG" else {}
        canvas.save(tmp, format=fmt, **options)
    return path
