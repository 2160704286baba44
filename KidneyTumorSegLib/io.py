"""Reading and writing volumes (NIfTI, NRRD, MHA, DICOM folders) with SimpleITK.

Reading honours each file's direction cosines; writing goes to a temporary file beside the target
and is renamed into place, so a cancelled or failed run never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Volume

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def _dicom_series_files(folder: Path) -> list[str]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"The folder {folder} holds no DICOM image series.")
    # The largest series is the one a user means (scouts and dose reports are small).
    best = max(series, key=lambda s: len(reader.GetGDCMSeriesFileNames(str(folder), s)))
    return list(reader.GetGDCMSeriesFileNames(str(folder), best))


def read_image(path: str | os.PathLike):
    """Read ``path`` (a file or a DICOM folder) as a SimpleITK image, with clear errors."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"The input {path} does not exist.")
    try:
        if path.is_dir():
            files = _dicom_series_files(path)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            return reader.Execute()
        if path.stat().st_size == 0:
            raise InputError(f"The file {path} is empty.")
        return sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as err:  # SimpleITK reports every reader failure this way
        first = str(err).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "error" in ln), first[-1] if first else "")
        detail = detail.split(":")[-1].strip() if detail else "unknown format"
        raise InputError(
            f"The file {path} could not be read as a medical image ({detail or 'unknown format'})."
        ) from None


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D scalar volume; 2D, 4D, vector or non-finite images are refused clearly."""
    import SimpleITK as sitk

    image = read_image(path)
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim == 2 or (dim == 3 and min(image.GetSize()) == 1 and image.GetSize()[2] == 1):
        raise InputError(f"The image {path} is 2D; a 3D CT volume is needed.")
    if dim != 3:
        raise InputError(f"The image {path} has {dim} dimensions; a single 3D CT volume is needed.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"The image {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(colour or vector); a scalar CT volume is needed."
        )
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(image)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise InputError(f"The image {path} holds {bad} voxels that are NaN or infinite.")
    try:
        return Volume.from_sitk(image)
    except ValueError as err:
        raise InputError(f"The image {path} has an unusable geometry: {err}.") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the suffix), atomically."""
    import SimpleITK as sitk

    path = Path(path)
    with atomic_output(path) as tmp:
        sitk.WriteImage(volume.to_sitk(), str(tmp), compress)
    return path
