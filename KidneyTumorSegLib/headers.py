"""Pre-flight checks of NIfTI and MetaImage headers, before ITK's C readers see a file.

Fuzzing found that ITK trusts these headers: a MetaImage ``NDims = 99999999999`` crashes the
interpreter, a NIfTI sform with an infinite value hangs it, and a cut-off NIfTI is read without
complaint with garbage in the missing voxels. Only well-formed headers, with as many voxel bytes as
they declare and no NaN voxels, are handed on.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

NOT_READ = "is damaged, truncated or not an image in a format this program reads (NIfTI, NRRD, MHA or DICOM)"


_MET_TYPES = {
    f"MET_{t}{a}" for t in ("CHAR", "UCHAR", "SHORT", "USHORT", "INT", "UINT", "LONG", "ULONG", "LONG_LONG",
                            "ULONG_LONG", "FLOAT", "DOUBLE") for a in ("", "_ARRAY")
}


def _looks_like_metaimage(path: Path, head: bytes) -> bool:
    if path.name.lower().endswith((".mha", ".mhd")):
        return True
    first = head.lstrip()[:40].split(b"=")[0].strip().lower()
    return first in (b"objecttype", b"ndims", b"comment", b"objectsubtype", b"dimsize")


def check_metaimage_header(path: Path) -> None:
    """Validate a MetaImage (.mha/.mhd) header before ITK parses it.

    ITK's MetaIO trusts the header: ``NDims = 99999999999`` crashes the interpreter (a segmentation
    fault found by fuzzing), and wrong value counts are read past. Only headers whose dimensions,
    sizes, geometry and voxel type are well formed reach it.
    """
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if not _looks_like_metaimage(path, head):
        return
    fields: dict[str, str] = {}
    for raw in head.split(b"\n"):
        key, eq, value = raw.decode("latin-1").partition("=")
        if eq:
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break
    else:
        raise InputError(f"The file {path} has a damaged MetaImage header (no ElementDataFile line).")

    def damaged(what: str) -> InputError:
        return InputError(f"The file {path} has a damaged MetaImage header ({what}).")

    def numbers(key: str, count: int, integer: bool = False) -> list[float]:
        try:
            vals = [float(v) for v in fields[key].split()]
        except ValueError:
            raise damaged(f"{key} is not numeric") from None
        if len(vals) != count or not all(np.isfinite(vals)) or (integer and any(v != int(v) for v in vals)):
            raise damaged(f"{key} = {fields[key][:40]!r}")
        return vals

    if "ndims" not in fields or "dimsize" not in fields:
        raise damaged("no NDims or DimSize")
    (ndims,) = numbers("ndims", 1, integer=True)
    if not 1 <= ndims <= 5:
        raise damaged(f"NDims = {fields['ndims'][:40]}")
    ndims = int(ndims)
    if any(not 1 <= d < 2**31 for d in numbers("dimsize", ndims, integer=True)):
        raise damaged(f"DimSize = {fields['dimsize'][:40]}")
    for key in ("elementspacing", "elementsize", "offset", "position", "origin", "centerofrotation"):
        if key in fields and any(v <= 0 for v in numbers(key, ndims)) and key in ("elementspacing", "elementsize"):
            raise damaged(f"{key} = {fields[key][:40]}")
    for key in ("transformmatrix", "rotation", "orientation"):
        if key in fields:
            m = np.asarray(numbers(key, ndims * ndims)).reshape(ndims, ndims)
            if np.abs(m).max() > 2 or not np.allclose(m.T @ m, np.eye(ndims), atol=1e-2):  # ITK hangs on some
                raise damaged(f"{key} is not a rotation")
    if fields.get("elementtype", "").upper() not in _MET_TYPES:
        raise damaged(f"ElementType = {fields.get('elementtype', '')[:40]!r}")
    data_file = fields["elementdatafile"]
    if not data_file or len(data_file) > 1024 or any(ord(c) < 32 and c != "\t" for c in data_file):
        raise damaged("ElementDataFile is not a file name")  # a control character here crashes ITK
    first = data_file.split()[0]
    if first.upper() not in ("LOCAL", "LIST") and "%" not in first:
        data_path = Path(first) if os.path.isabs(first) else path.parent / first
        if not data_path.is_file():
            raise InputError(f"The file {path} keeps its voxels in {data_path}, which does not exist.")
    for key in ("elementnumberofchannels", "headersize", "compresseddatasize"):
        if key in fields:
            (v,) = numbers(key, 1, integer=True)
            if not -1 <= v < 2**40 or (key == "elementnumberofchannels" and not 1 <= v <= 64):
                raise damaged(f"{key} = {fields[key][:40]}")


@dataclass
class _NiftiLayout:
    offset: int  # vox_offset: where the voxels start
    nbytes: int  # bytes of voxel data the header declares
    float_dtype: np.dtype | None  # the voxels' type when floating point (NaN is possible)


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of real floating-point voxels


def _nifti_layout(head: bytes) -> _NiftiLayout | None:
    """Where a single-file NIfTI-1/2 keeps its voxels, or None if ``head`` is not such a header."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348 and head[344:348] == b"n+1\0":
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540 and head[4:8] == b"n+2\0":
            dims = struct.unpack(endian + "8q", head[16:80])
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        ndim = dims[0]
        if not 1 <= ndim <= 7 or bitpix <= 0 or not np.isfinite(vox_offset) or vox_offset < 0:
            return None
        n = 1
        for d in dims[1 : ndim + 1]:
            n *= max(1, int(d))
        code = _NIFTI_FLOATS.get(int(datatype))
        return _NiftiLayout(int(vox_offset), n * int(bitpix) // 8, np.dtype(endian + code) if code else None)
    return None


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    return (gzip.open(path, "rb") if compressed else open(path, "rb")), compressed


_NIFTI_TYPES = {2, 4, 8, 16, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304}


def check_nifti_header(path: Path) -> None:
    """Validate a NIfTI-1/2 (or Analyze) header before ITK parses it.

    Fuzzing found that ITK hangs forever on an sform holding an infinite value, and silently
    substitutes 1 mm for a NaN or zero voxel size; such headers are refused here instead.
    """
    try:
        fh, _ = _open_maybe_gzip(path)
        with fh:
            head = fh.read(544)
    except (OSError, EOFError, zlib.error):
        return  # not a readable gzip stream: ITK's own reader reports it
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            pixdim = struct.unpack(endian + "8f", head[76:108])
            vox_offset, slope, inter = struct.unpack(endian + "3f", head[108:120])
            nifti = head[344:348] in (b"n+1\0", b"ni1\0")
            qform, sform = struct.unpack(endian + "2h", head[252:256])
            quatern = struct.unpack(endian + "6f", head[256:280])
            srow = struct.unpack(endian + "12f", head[280:328])
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            pixdim = struct.unpack(endian + "8d", head[104:168])
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
            slope, inter = struct.unpack(endian + "2d", head[176:192])
            nifti = head[4:8] in (b"n+2\0", b"ni2\0")
            qform, sform = struct.unpack(endian + "2i", head[344:352])
            quatern = struct.unpack(endian + "6d", head[352:400])
            srow = struct.unpack(endian + "12d", head[400:496])
        else:
            continue
        what = None
        ndim = dims[0]
        if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1 : ndim + 1]):
            what = f"dimensions {list(dims[: max(1, min(ndim, 7)) + 1])}"
        elif datatype not in _NIFTI_TYPES:
            what = f"voxel type code {datatype}"
        elif not all(np.isfinite(pixdim[: ndim + 1])) or any(v == 0 for v in pixdim[1 : min(ndim, 3) + 1]):
            what = "voxel size " + " ".join(f"{v:g}" for v in pixdim[1 : min(ndim, 3) + 1])
        elif not np.isfinite([vox_offset, slope, inter]).all() or vox_offset < 0:
            what = "data offset or intensity scaling"
        elif nifti and qform > 0 and not np.isfinite(quatern).all():
            what = "qform orientation"
        elif nifti and sform > 0 and not np.isfinite(srow).all():
            what = "sform orientation"
        if what is not None:
            raise InputError(f"The file {path} has a damaged NIfTI header ({what} is not valid).")
        return


def _gzip_length(path: Path, limit: int) -> int:
    """Decompressed length of a gzip file, counting at most ``limit`` bytes (raises on damage)."""
    total = 0
    with gzip.open(path, "rb") as fh:
        while total < limit:
            chunk = fh.read(min(8 << 20, limit - total))
            if not chunk:
                break
            total += len(chunk)
    return total


def _nifti_non_finite(path: Path, layout: _NiftiLayout) -> int:
    """NaN and infinite voxels in a floating-point NIfTI, counted in the file itself, 8 MB at a time.

    ITK's NIfTI reader silently turns them into 0, which would make a damaged scan look whole.
    """
    item = layout.float_dtype.itemsize
    bad = 0
    fh, _ = _open_maybe_gzip(path)
    with fh:
        fh.seek(layout.offset)
        left = layout.nbytes
        while left > 0:
            chunk = fh.read(min(8 << 20, left) // item * item or item)
            if len(chunk) < item:
                break
            arr = np.frombuffer(chunk[: len(chunk) // item * item], dtype=layout.float_dtype)
            bad += int(arr.size - np.count_nonzero(np.isfinite(arr)))
            left -= len(chunk)
    return bad


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI file holding fewer voxel bytes than its header declares, or NaN voxels.

    ITK reads a cut-off NIfTI without an error and fills the missing voxels with whatever memory
    held. For ``.nii.gz`` the gzip trailer's length is compared first (cheap); only when it
    disagrees is the stream decompressed to count (multi-member files), which also catches a
    cut-off stream.
    """
    try:
        fh, compressed = _open_maybe_gzip(path)
        with fh:
            head = fh.read(544)
    except (OSError, EOFError, zlib.error):
        raise InputError(f"The file {path} {NOT_READ}.") from None
    layout = _nifti_layout(head)
    if layout is None:
        return  # not NIfTI (ITK chose another reader); that reader checks its own data
    need = layout.offset + layout.nbytes
    have = need
    if not compressed:
        have = path.stat().st_size
    else:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", fh.read(4))[0]
        if isize != need % 2**32:
            try:
                have = _gzip_length(path, need)
            except (OSError, EOFError, zlib.error):
                raise InputError(
                    f"The file {path} is truncated or damaged (its compressed data end early)."
                ) from None
    if have < need:
        raise InputError(
            f"The file {path} is truncated: its header declares {need} bytes but it holds only {have}."
        )
    if layout.float_dtype is not None:
        try:
            bad = _nifti_non_finite(path, layout)
        except (OSError, EOFError, zlib.error):
            raise InputError(f"The file {path} is truncated or damaged (its compressed data end early).") from None
        if bad:
            raise InputError(
                f"The image {path} holds {bad} voxels that are NaN or infinite; "
                "a CT needs a finite value in every voxel."
            )
