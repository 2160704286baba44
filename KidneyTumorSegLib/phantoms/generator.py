"""Public API: a synthetic contrast-enhanced abdominal CT around any kidney/tumour label map.

``make_phantom(labels, seed)`` returns a HU volume on exactly the label's grid.  The anatomy is drawn
on a coarse axis-aligned LPS grid (smooth shapes, cheap), rendered to HU with randomised tissue
intensities and textures, blurred by the scanner's PSF and slice profile, sampled onto the caller's
grid, where the kidneys and tumours are rendered voxel for voxel from the labels, and correlated
noise is added.  The labels themselves are never touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..resampling import to_reference
from ..volume import Volume
from . import tissues as ts
from .anatomy import build_anatomy
from .intensity import PHASES, apply_global, draw_intensities
from .renal import label_box, render_kidneys
from .scanner import add_noise, bias_field, blur_coarse, draw_scanner, streaks
from .shapes import smooth_noise


@dataclass
class PhantomConfig:
    """Knobs of the generator; the defaults give realistic, widely randomised phantoms."""

    phase: str | None = None  # None: drawn; else one of PHASES
    work_spacing_mm: float = 1.6  # in-plane spacing of the coarse anatomy grid
    spread: float = 1.3  # widening of tissue HU ranges around literature values (1 = literature)
    noise_sd_range: tuple[float, float] = (8.0, 25.0)
    streak_prob: float = 0.35
    oral_contrast_prob: float = 0.35
    scanner: bool = True  # False: no blur, noise, bias or streaks (for checks of tissue means)
    dtype: str = "int16"  # "int16" (clipped to -1024..3071, like scanners) or "float32"
    tissue_map: bool = True  # return info["tissue_map"] on the caller's grid
    # None: the slice thickness follows the grid; (lo, hi) mm: drawn from this range (see draw_scanner)
    slice_thickness_mm: tuple[float, float] | None = None


def _validate(labels: Volume) -> None:
    if not isinstance(labels, Volume):
        raise TypeError("labels must be a KidneyTumorSegLib.volume.Volume")
    a = labels.array
    bad = a.size and (a.min() < 0 or a.max() > 2)
    if not bad and a.dtype.kind == "f":
        bad = bool(np.any(a != np.rint(a)))
    if bad:
        raise InputError("The label map holds values other than 0 (background), 1 (kidney) and 2 (tumour).")


def _slice_axis(vol: Volume) -> int:
    """Array axis (0, 1, 2) of the index axis closest to the patient's z."""
    c = int(np.argmax(np.abs(vol.direction[2, :])))
    return 2 - c


def _texture(cv, draw, rng) -> np.ndarray:
    """Coarse HU image: per-tissue mean + textured deviations (striated muscle, fat septa, mottled
    faeces with gas, lung vessels, organ heterogeneity)."""
    t = cv.tissue
    means = apply_global(draw)
    sds = draw.sd
    n1 = smooth_noise(rng, t.shape, 0.7)
    n2 = smooth_noise(rng, t.shape, 2.0)
    ct = means[t] + sds[t] * (0.75 * n1 + 0.45 * n2)
    mus = t == ts.MUSCLE
    striae = smooth_noise(rng, t.shape, (3.0, 0.6, 0.6))
    ct[mus] += sds[ts.MUSCLE] * 0.8 * striae[mus]
    marbling = rng.uniform(0, 1)  # intramuscular fat in older patients
    ct[mus & (striae > 2.4 - marbling)] = means[ts.FAT] * 0.5
    fat = t == ts.FAT
    septa = fat & (np.abs(n2) < rng.uniform(0.03, 0.09)) & cv.inside
    ct[septa] += rng.uniform(30, 80)
    fec = t == ts.FECES
    ct[fec & (n1 > rng.uniform(0.8, 1.6))] = rng.uniform(-900, -500)
    lung = t == ts.LUNG
    ct[lung & (n1 > 2.1)] = means[ts.HEART_BLOOD] * 0.6
    for organ in (ts.LIVER, ts.SPLEEN, ts.PANCREAS):
        m = t == organ
        ct[m] += sds[organ] * 0.8 * n2[m]
    return ct.astype(np.float32)


def make_phantom(labels: Volume, seed: int, config: PhantomConfig | None = None) -> tuple[Volume, dict]:
    """A synthetic contrast-enhanced CT (HU) on exactly the grid of ``labels``.

    Returns ``(ct, info)``; ``info`` holds the contrast ``phase``, the drawn mean HU of every tissue
    (``tissues``), the ``seed``, scanner settings, and ``tissue_map`` (uint8 tissue ids, see
    ``phantoms.tissues.TISSUE_NAMES``) when ``config.tissue_map``.
    """
    cfg = config or PhantomConfig()
    if cfg.phase is not None and cfg.phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {cfg.phase!r}")
    _validate(labels)
    r_int, r_anat, r_tex, r_scan, r_kid, r_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 7]).spawn(6)
    )
    draw = draw_intensities(r_int, cfg.phase, cfg.spread)
    cv = build_anatomy(labels, r_anat, cfg.work_spacing_mm, draw.phase, cfg.oral_contrast_prob)
    g = cv.grid
    ct = _texture(cv, draw, r_tex)
    sax = _slice_axis(labels)
    c = 2 - sax
    slice_sp = labels.spacing[c]
    sc = draw_scanner(r_scan, slice_sp, cfg.noise_sd_range, cfg.streak_prob, cfg.slice_thickness_mm)
    if cfg.scanner:
        ct += bias_field(r_scan, ct.shape, cv.depth, cv.inside, sc)
        if sc.streaks:
            ct += streaks(r_scan, cv.tissue, g, cv.inside)
        ct = blur_coarse(ct, g.spacing, sc)
    out = to_reference(ct, g, labels, order=1)
    means = apply_global(draw)
    # kidneys and tumours on the caller's grid
    sig = np.zeros(3)
    if cfg.scanner:
        for a in range(3):
            cidx = 2 - a
            sig[a] = (sc.thickness_mm / 2.355 if a == sax else sc.psf_mm) / labels.spacing[cidx]
    margin = [int(np.ceil(3 * s)) + 2 for s in sig]
    box = label_box(labels, margin)
    tid_k = None
    if box is not None:
        hu_k, tid_k = render_kidneys(labels, box, cv.lay, means, draw.sd, draw.tumour_type, r_kid)
        region = out[box]
        comp = np.where(np.isnan(hu_k), region, hu_k)
        if cfg.scanner:
            comp = ndi.gaussian_filter(comp, sig, mode="nearest", truncate=3.0)
        region[...] = comp
    if cfg.scanner:
        z_of_slice = labels.origin[2] + labels.direction[2, c] * slice_sp * np.arange(labels.array.shape[sax])
        area = cv.inside.sum(axis=(1, 2)).astype(float)
        med = float(np.median(area[area > 0])) if np.any(area > 0) else 1.0
        fac = np.clip(np.sqrt(np.maximum(area, 1) / med), 0.75, 1.4)
        add_noise(out, sax, sc, r_noise, np.interp(z_of_slice, g.z, fac))
    if cfg.dtype == "int16":
        np.rint(out, out=out)
        np.maximum(out, -1024, out=out)
        np.minimum(out, 3071, out=out)
        out = out.astype(np.int16)
    else:
        out = out.astype(np.float32, copy=False)
    info = {
        "phase": draw.phase,
        "seed": int(seed),
        "tissues": {name: float(means[i]) for i, name in enumerate(ts.TISSUE_NAMES)},
        "tissue_sd": {name: float(draw.sd[i]) for i, name in enumerate(ts.TISSUE_NAMES)},
        "tumour_type": draw.tumour_type,
        "bolus": draw.bolus,
        "gain": draw.gain,
        "offset": draw.offset,
        "oral_contrast": cv.extra["oral"],
        "scanner": asdict(sc) if cfg.scanner else None,
    }
    if cfg.tissue_map:
        tmap = to_reference(cv.tissue, g, labels, order=0, dtype=np.uint8)
        if box is not None:
            organ = labels.array[box] > 0
            tmap[box][organ] = tid_k[organ]
        info["tissue_map"] = tmap
    return labels.with_array(out), info

