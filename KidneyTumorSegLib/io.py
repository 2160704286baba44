"""Reading and writing volumes (NIfTI, NRRD, MHA, DICOM folders) with SimpleITK.

Reading honours each file's direction cosines; writing goes to a temporary file beside the target
and is renamed into place (:func:`atomic_output`, every writer of the library uses it), so a
cancelled or failed run never leaves a half-written output; inside :func:`outputs_together` a
run's outputs are renamed into place all together at the end, or not at all.

Whatever a file holds, reading ends in a :class:`Volume` or an :class:`InputError` whose message is
one sentence naming the file: the header is read first (dimension, voxel type and size are checked
before any voxel is read, and an image too large for the free memory is refused), NIfTI files are
checked for truncation (ITK reads a cut-off NIfTI without complaint and fills the rest with
garbage), and the geometry is checked for finite, non-degenerate values.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .headers import NOT_READ as _NOT_READ
from .headers import check_metaimage_header, check_nifti, check_nifti_header
from .volume import Volume

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


@dataclass
class ImageInfo:
    """What a file's header says, known before any voxel is read."""

    size: tuple[int, ...]  # along i, j, k (and more)
    spacing: tuple[float, ...]
    dimension: int
    components: int
    pixel_id: int
    pixel_type: str
    bytes_per_voxel: int
    image_io: str = ""
    files: tuple[str, ...] = ()  # the DICOM series' files, for a folder
    series: object = None  # for a folder, the dicom.Choice: which series, why, and what else it holds

    @property
    def voxels(self) -> int:
        return int(np.prod([int(s) for s in self.size], dtype=object))


def _scalar_pixel_bytes(pixel_id: int) -> int | None:
    """Bytes per component of a real-valued pixel type (None for complex, label or unknown types)."""
    import SimpleITK as sitk

    table = {
        sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2,
        sitk.sitkUInt32: 4, sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8,
        sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
        sitk.sitkVectorUInt8: 1, sitk.sitkVectorInt8: 1, sitk.sitkVectorUInt16: 2, sitk.sitkVectorInt16: 2,
        sitk.sitkVectorUInt32: 4, sitk.sitkVectorInt32: 4, sitk.sitkVectorUInt64: 8, sitk.sitkVectorInt64: 8,
        sitk.sitkVectorFloat32: 4, sitk.sitkVectorFloat64: 8,
    }
    return table.get(pixel_id)


def _reason(err: BaseException) -> str:
    """A plain reason for a reader failure (ITK's own text is multi-line and developer-facing)."""
    text = str(err)
    if "Unable to determine ImageIO reader" in text:
        return "is not in a format this program reads (NIfTI, NRRD, MHA or a DICOM folder)"
    if "Permission denied" in text:
        return "cannot be opened (permission denied)"
    if isinstance(err, (MemoryError, OverflowError)) or "bad_alloc" in text or "allocate" in text.lower():
        return "declares more voxels than this computer can hold in memory"
    return _NOT_READ


def _is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:132] == b"DICM"


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what C/C++ readers print straight to the process's stderr (ITK, MetaIO, NIfTI lib).

    Their lines ("MetaImage: M_ReadElementsData: data not read completely ...") would otherwise
    appear beside the one-sentence error the command line prints. Only used by the command line.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (embedded interpreters)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _check_path(path: Path) -> None:
    if not path.exists():
        if path.is_symlink():
            raise InputError(f"The input {path} is a link to a file that does not exist.")
        raise InputError(f"The input {path} does not exist.")
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"The folder {path} cannot be read (permission denied).")
        return
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise InputError(f"The input {path} is not a regular file or folder.")
    if path.stat().st_size == 0:
        raise InputError(f"The file {path} is empty.")
    if not os.access(path, os.R_OK):
        raise InputError(f"The file {path} cannot be read (permission denied).")


def read_image_information(path: str | os.PathLike, series: str | None = None) -> ImageInfo:
    """The header of ``path`` (file or DICOM folder), without reading voxels; clear errors.

    For a folder, the series is the one :func:`dicom.choose_series` picks (or ``series``, a Series
    Instance UID or a series number); ``info.series`` says which and why.
    """
    import SimpleITK as sitk

    from .dicom import choose_series

    path = Path(path)
    _check_path(path)
    files: tuple[str, ...] = ()
    choice = None
    reader = sitk.ImageFileReader()
    try:
        if path.is_dir():
            choice = choose_series(path, series)
            files = choice.series.files
            reader.SetFileName(files[0])
        else:
            check_metaimage_header(path)
            check_nifti_header(path)
            reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())
        spacing = tuple(float(s) for s in reader.GetSpacing())
        pixel_id = int(reader.GetPixelID())
        components = int(reader.GetNumberOfComponents())
        image_io = str(reader.GetImageIO())
    except InputError:
        raise
    except (RuntimeError, MemoryError, OverflowError, ValueError) as err:
        raise InputError(f"The file {path} {_reason(err)}.") from None
    if files:  # a series: one file per slice
        if len(size) == 2 or (len(size) == 3 and size[2] == 1):
            size = (size[0], size[1], len(files))
            spacing = (spacing[0], spacing[1], spacing[2] if len(spacing) > 2 else 1.0)
    per = _scalar_pixel_bytes(pixel_id)
    if per is None:
        raise InputError(
            f"The image {path} has voxels of type {sitk.GetPixelIDValueAsString(pixel_id)}; "
            "a CT needs real-valued (integer or floating-point) voxels."
        )
    return ImageInfo(size, spacing, len(size), components, pixel_id,
                     sitk.GetPixelIDValueAsString(pixel_id), per * max(1, components), image_io, files, choice)


def read_image(path: str | os.PathLike, info: ImageInfo | None = None):
    """Read ``path`` (a file or a DICOM folder) as a SimpleITK image, with clear errors."""
    import SimpleITK as sitk

    path = Path(path)
    if info is None:
        info = read_image_information(path)
    try:
        if info.files:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(list(info.files))
            return reader.Execute()
        check_nifti(path)
        return sitk.ReadImage(str(path))
    except InputError:
        raise
    except (RuntimeError, MemoryError, OverflowError, ValueError) as err:
        raise InputError(f"The file {path} {_reason(err)}.") from None


def _check_geometry(image, path: Path) -> None:
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise InputError(f"The image {path} has an unusable voxel spacing {tuple(spacing.round(6))}.")
    if not np.all(np.isfinite(origin)) or np.max(np.abs(origin)) > 1e7:
        raise InputError(f"The image {path} has an unusable origin {tuple(origin.round(3))}.")
    if not np.all(np.isfinite(direction)) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-2):
        raise InputError(f"The image {path} has a skewed or degenerate direction matrix, which no CT has.")


def _count_non_finite(array: np.ndarray, slab: int = 8) -> int:
    """Non-finite voxels, counted a few slices at a time (no whole-scan boolean copy)."""
    bad = 0
    for k in range(0, array.shape[0], slab):
        part = array[k : k + slab]
        bad += int(part.size - np.count_nonzero(np.isfinite(part)))
    return bad


def read_volume(path: str | os.PathLike, info: ImageInfo | None = None, series: str | None = None) -> Volume:
    """Read a 3D scalar volume; 2D, 4D, vector, non-finite or too large images are refused clearly.

    ``info``: the header already read by :func:`read_image_information`, so that a caller that
    looked at it first (the CLI's memory check) does not read it, or scan a DICOM folder, twice.
    ``series``: for a DICOM folder, the Series Instance UID or series number to read.
    """
    import SimpleITK as sitk

    from .memory import NotEnoughMemoryError, check_image_fits

    path = Path(path)
    info = info or read_image_information(path, series)
    size = list(info.size)
    while len(size) > 3 and size[-1] == 1:  # a 4D file holding one volume
        size.pop()
    dim = len(size)
    if dim == 2 or (dim == 3 and size[2] == 1):
        if not info.files and _is_dicom_file(path):
            raise InputError(f"The file {path} is a single DICOM slice; give the folder holding the whole series.")
        raise InputError(f"The image {path} is 2D; a 3D CT volume is needed.")
    if dim != 3:
        raise InputError(f"The image {path} has {dim} dimensions; a single 3D CT volume is needed.")
    if info.components != 1:
        raise InputError(
            f"The image {path} has {info.components} components per voxel "
            "(colour or vector); a scalar CT volume is needed."
        )
    if min(size) < 1:
        raise InputError(f"The image {path} declares no voxels.")
    check_image_fits(size, info.bytes_per_voxel, path)

    image = read_image(path, info)
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3 or image.GetSize()[2] == 1:  # the header and the voxels disagree: trust neither
        raise InputError(f"The image {path} is not a 3D volume.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The image {path} has several components per voxel; a scalar CT volume is needed.")
    if image.GetPixelIDTypeAsString().startswith("vector"):
        image = sitk.VectorIndexSelectionCast(image, 0)
    _check_geometry(image, path)
    geometry = (image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3))
    try:
        array = sitk.GetArrayFromImage(image)
    except MemoryError:
        raise NotEnoughMemoryError(f"The image {path} does not fit in the memory this computer has free.") from None
    del image  # the reader's buffer goes before anything else is allocated
    if array.dtype.kind == "f":
        bad = _count_non_finite(array)
        if bad:
            raise InputError(
                f"The image {path} holds {bad} voxels that are NaN or infinite; "
                "a CT needs a finite value in every voxel."
            )
    try:
        return Volume(array, *geometry)
    except ValueError as err:
        raise InputError(f"The image {path} has an unusable geometry ({err}).") from None


class _OutputGroup:
    """Finished temporary files waiting to be renamed onto their targets all at once."""

    def __init__(self):
        self.staged: list[tuple[str, Path]] = []
        self.created: list[Path] = []  # folders made for the outputs, removed again if nothing lands

    def commit(self) -> None:
        """Rename every staged file into place, holding Ctrl-C and SIGTERM back meanwhile."""
        blocked = {signal.SIGINT, signal.SIGTERM}
        can_block = hasattr(signal, "pthread_sigmask")
        if can_block:
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            for tmp, final in self.staged:
                os.replace(tmp, final)
            self.staged, self.created = [], []
        finally:
            if can_block:
                # A Ctrl-C that came during the renames is too late to cancel: the outputs are whole.
                for sig in signal.sigpending() & blocked:
                    signal.sigwait({sig})
                signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)

    def discard(self) -> None:
        for tmp, _ in self.staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for folder in self.created:  # deepest first; a folder something else wrote into stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.staged, self.created = [], []


_GROUP: contextvars.ContextVar[_OutputGroup | None] = contextvars.ContextVar("output_group", default=None)


@contextlib.contextmanager
def outputs_together():
    """Every :func:`atomic_output` inside the block lands at the block's end, all together, or none does.

    A failure or Ctrl-C inside the block removes every staged file (and the folders made for them)
    and leaves whatever the targets held before untouched; signals are held back during the
    renames, so a run's outputs appear all together or not at all.
    """
    group = _OutputGroup()
    token = _GROUP.set(group)
    try:
        yield
        group.commit()
    finally:
        _GROUP.reset(token)
        group.discard()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds
    (inside :func:`outputs_together`, when the whole group succeeds).

    The temporary file is hidden (``.name.XXXX.suffix``) and removed whatever happens, Ctrl-C
    included, so an interrupted or failed write leaves any earlier ``path`` exactly as it was.
    """
    path = Path(path)
    group = _GROUP.get()
    if group is not None:
        group.created += [d for d in [path.parent, *path.parent.parents] if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    handed_to_group = False
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); the result gets the permissions any new file
        # of the user would get, so colleagues and Slicer can read it as usual.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if group is None:
            os.replace(tmp, path)
        else:
            group.staged.append((tmp, path))  # the group renames it into place, or removes it
            handed_to_group = True
    finally:
        if not handed_to_group:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the suffix), atomically."""
    import SimpleITK as sitk

    path = Path(path)
    with atomic_output(path) as tmp:
        sitk.WriteImage(volume.to_sitk(), str(tmp), compress)
    return path
