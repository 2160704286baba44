"""The memory budget: what a run will need, what the computer has, and refusing up front what cannot fit.

A clinician's workstation may hold a 4 GB scan in a fraction of its memory, but a naive pipeline
makes several whole-volume copies (a SimpleITK image, a float32 cast, float32 results) and is killed
by the operating system half-way, losing the user's time. Here:

- :func:`available_bytes` says how much memory the process may still use (``MemAvailable``, the
  container's cgroup limit, the address-space limit, and ``KIDNEY_TUMOR_SEG_MEMORY_LIMIT``);
- :func:`estimate_run_bytes` predicts a run's peak from the image's size (known from the file's
  header before any voxel is read) and the model configuration;
- :func:`check_run_fits` refuses up front, in one sentence, a run that cannot fit.

The budget counts on :mod:`.resampling` working slab by slab (at most ``SLAB_VOXELS`` input voxels
at a time), so the working memory of resampling stays bounded whatever the scan's size.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from .errors import InputError, NotEnoughMemoryError  # noqa: F401  (re-exported for callers)
from .resampling import SLAB_VOXELS

GB = 1024.0**3
MEMORY_LIMIT_ENV = "KIDNEY_TUMOR_SEG_MEMORY_LIMIT"
#: Interpreter, torch, SimpleITK, scipy and the weights loaded, before any image (measured: 0.40 GB).
BASE_BYTES = int(0.5 * GB)


# --- what the computer has -------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """Bytes from ``"3G"``, ``"512M"``, ``"2.5GB"`` or a plain number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a memory size: {text!r}")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other POSIX systems
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (containers, batch schedulers), if one is set."""
    try:
        with open("/proc/self/cgroup") as fh:
            rel = next((ln.strip().split(":", 2)[2] for ln in fh if ln.startswith("0::")), None)
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as fh:
            limit = fh.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as fh:
            current = int(fh.read().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError, StopIteration):
        return None


def _address_space_available() -> int | None:
    """Room left under ``ulimit -v`` (RLIMIT_AS), if one is set."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft in (resource.RLIM_INFINITY, -1):
            return None
        with open("/proc/self/status") as fh:
            vm = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmSize:"))
        return max(0, soft - vm)
    except (ImportError, OSError, ValueError, StopIteration):
        return None


def _user_cap() -> int | None:
    cap = os.environ.get(MEMORY_LIMIT_ENV)
    if cap:
        try:
            return parse_size(cap)
        except ValueError:
            pass
    return None


def available_bytes() -> int | None:
    """Memory this process may still use, in bytes (None when the system does not say).

    The smallest of: the kernel's ``MemAvailable``, room under a cgroup limit, room under the
    address-space limit, and the user's own cap in ``KIDNEY_TUMOR_SEG_MEMORY_LIMIT`` (e.g. ``8G``).
    """
    candidates = [_meminfo_available(), _cgroup_available(), _address_space_available(), _user_cap()]
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def _shortfall(have: int) -> str:
    """Why only ``have`` bytes are there, and what to do: the user's own cap, or the computer."""
    cap = _user_cap()
    if cap is not None and cap <= have:
        return (f"but {MEMORY_LIMIT_ENV}={os.environ.get(MEMORY_LIMIT_ENV)} limits this program to "
                f"{_fmt_gb(cap)}; raise or unset that limit")
    return f"but this computer has {_fmt_gb(have)} available; close other programs or use a computer with more memory"


# --- what a run needs ------------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    """A run's predicted peak (bytes) and its main parts, for the message and the report."""

    total: int
    parts: dict

    @property
    def gb(self) -> float:
        return self.total / GB


def _grid_voxels(extent_mm, spacing_mm) -> int:
    return int(np.prod([math.floor(e / s) + 2 for e, s in zip(extent_mm, spacing_mm)]))


def _network_bytes(config) -> int:
    """Working memory of the largest network call: the segmenter on one patch (calibrated on CPU)."""
    seg = config.segmenter
    patch = int(np.prod(seg.patch_size_xyz))
    # Measured with torch 2 on CPU: 1.34 GB for the paper's 128 x 128 x 80 patch at width 16, the
    # equivalent of 16 full-resolution float32 maps of ``width`` channels, plus a fixed part.
    return int(patch * seg.width * 4 * 16 + 128 * 1024**2)


def _context_pass_bytes(canvas_extent, config, canvas_voxels: int) -> int:
    """The coarse second look (``segmenter.context_scale``): its own canvas, and while its
    probabilities are fused onto the fine canvas, a copy of the fine ones and two resampled channels;
    with a gate, its component labels, three masks and the gated copy (16 bytes a voxel more)."""
    seg = config.segmenter
    if not seg.second_look:
        return 0
    coarse = _grid_voxels(canvas_extent, [s * seg.context_scale for s in seg.spacing_mm])
    gate = 16 if seg.context_gate_ml > 0 else 0
    return coarse * 40 + canvas_voxels * (24 + gate)


def estimate_run_bytes(size_xyz, spacing_xyz, bytes_per_voxel: int, config, keep_image: bool = False
                       ) -> MemoryEstimate:
    """Predicted peak memory of segmenting an image of this size with this model configuration.

    Whole-scan arrays that must exist: while segmenting, the image itself, the label map and up to
    four structure masks (kidney and tumour, each side) on the input grid; while writing, the label
    map, the masks and the write buffers of one output file (the image too when ``keep_image``, for
    a picture). Reading briefly holds the file's buffer and its copy. Working grids (localiser grid,
    segmenter canvas around at most two kidney boxes) and network activations come on top of the
    segmenting phase. Resampling is done tile by tile, so it adds a bounded amount.
    """
    n = int(np.prod([int(s) for s in size_xyz], dtype=object))  # Python ints: a forged header cannot overflow
    extent = [max(1, int(s)) * float(sp) for s, sp in zip(size_xyz, spacing_xyz)]
    loc_voxels = _grid_voxels(extent, config.localiser_grid.spacing_mm)
    seg_sp = config.segmenter.spacing_mm
    # The canvas spans both kidney boxes (kidneys, margins, window padding): at most 30 x 22 x 26 cm.
    canvas_extent = [min(e, c) for e, c in zip(extent, (300.0, 220.0, 260.0))]
    canvas_voxels = _grid_voxels(canvas_extent, seg_sp)
    parts = {
        "libraries": BASE_BYTES,
        "image": n * bytes_per_voxel,  # released before writing unless a picture is asked for
        "labels_and_masks": n * (1 + 4),  # label map, up to four structure masks
        "writing": n * 2,  # the segmentation file's layer and its bytes
        "localiser_grid": loc_voxels * 8,
        "canvas": canvas_voxels * 40,
        "resampling_slabs": SLAB_VOXELS * (bytes_per_voxel + 8),
        "networks": _network_bytes(config),
        "context_pass": _context_pass_bytes(canvas_extent, config, canvas_voxels),
    }
    run_peak = sum(v for k, v in parts.items() if k != "writing")
    write_peak = parts["libraries"] + parts["labels_and_masks"] + parts["writing"] + (
        parts["image"] if keep_image else 0)
    read_peak = BASE_BYTES + 2 * n * bytes_per_voxel  # the reader's buffer and the array copied from it
    return MemoryEstimate(int(max(run_peak, write_peak, read_peak)), parts)


def _fmt_gb(nbytes: float) -> str:
    return f"{nbytes / GB:.1f} GB"


def check_image_fits(size_xyz, bytes_per_voxel: int, source) -> None:
    """Refuse, before reading, an image whose voxels alone (read and copied) exceed free memory."""
    n = int(np.prod([int(s) for s in size_xyz], dtype=object))
    need = 2 * n * int(bytes_per_voxel)
    have = available_bytes()
    if n > 2**40 or (have is not None and need > have):
        shown = " x ".join(str(int(s)) for s in size_xyz)
        where = f", {_shortfall(have)}" if have is not None else ""
        raise NotEnoughMemoryError(
            f"The image {source} declares {shown} voxels, and reading it needs about {_fmt_gb(need)} of "
            f"memory{where}."
        )


def check_run_fits(size_xyz, spacing_xyz, bytes_per_voxel: int, config, source, keep_image: bool = False
                   ) -> MemoryEstimate:
    """Refuse up front a run whose predicted peak exceeds the memory available; return the estimate."""
    est = estimate_run_bytes(size_xyz, spacing_xyz, bytes_per_voxel, config, keep_image)
    have = available_bytes()
    if have is not None and est.total > have:
        shown = " x ".join(str(int(s)) for s in size_xyz)
        raise NotEnoughMemoryError(
            f"Segmenting {source} ({shown} voxels) needs about {_fmt_gb(est.total)} of memory, {_shortfall(have)}."
        )
    return est
