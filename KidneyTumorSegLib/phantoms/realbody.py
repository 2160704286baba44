"""Synthetic CTs painted from real whole-anatomy label maps (TotalSegmentator-style bodies).

Our procedural generator draws every organ around the kidneys itself, and networks trained on it
learned the generator. Here the surroundings are a real patient's: a TotalSegmentator label map
gives the true shape and position of the liver, spleen, bowel, vertebrae, ribs, pelvis, psoas and
back muscles; the body's own kidneys are replaced by a KiTS kidney/tumour mask moved to where each
kidney lay, so the kidney labels stay exact. Every draw deforms the body (per-axis scaling,
rotation, elastic warp, a random field of view along z), paints tissues with contrast-phase HU,
unenhanced HU or, in a share of cases, independent random intensities per tissue (so that shape,
not one intensity recipe, is what the networks can rely on), and simulates a scanner (slice
thickness, pixel size, noise, blur).

    body = read_body("s0001/labels.nii.gz")          # phantoms.bodies: TotalSegmentator ids
    ct, labels, info = paint_body(body, kits_mask, seed=3, spacing_mm=(2.0, 2.0, 2.0))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..volume import Volume
from . import tissues as ts
from .bodies import _CLASS_IDS, Body
from .intensity import HU_TABLE, PHASES, apply_global, draw_intensities
from .layout import Layout, find_kidneys
from .renal import label_box, render_kidneys
from .shapes import Grid, smooth_noise

UNENHANCED = "unenhanced"
RANDOM = "random"


# --- spatial augmentation ---------------------------------------------------------------------
def _random_affine(rng: np.random.Generator, strength: float) -> np.ndarray:
    """3 x 3 LPS matrix: per-axis scaling (body size, AP depth), rotation about z, small tilts."""
    s = np.exp(rng.normal(0.0, 0.08 * strength, 3))
    s[1] *= np.exp(rng.normal(0.0, 0.06 * strength))  # AP depth varies most between patients
    az, ax, ay = np.deg2rad(rng.normal(0.0, [8.0, 5.0, 4.0]) * strength)
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return rz @ rx @ ry @ np.diag(s)


def _elastic(rng, shape, spacing_zyx, amplitude_mm: float, sigma_mm: float) -> list[np.ndarray]:
    """Smooth displacement fields (mm) per axis (z, y, x)."""
    sig = [sigma_mm / s for s in spacing_zyx]
    return [amplitude_mm * smooth_noise(rng, shape, sig) for _ in range(3)]


def warp_body(body: Body, rng: np.random.Generator, spacing_mm, strength: float = 1.0,
              z_fov_mm: tuple[float, float] | None = None) -> Volume:
    """The body's label map deformed (affine + elastic) onto a canonical grid at ``spacing_mm``,
    cropped along z to a random field of view of ``z_fov_mm`` (lo, hi) mm when given."""
    lab = body.labels
    lo, hi = lab.physical_bounds()
    centre = 0.5 * (lo + hi)
    a = _random_affine(rng, strength)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    moved = (corners - centre) @ a.T + centre
    olo, ohi = moved.min(0), moved.max(0)
    if z_fov_mm is not None:
        extent = ohi[2] - olo[2]
        fov = min(extent, rng.uniform(*z_fov_mm))
        z0 = olo[2] + rng.uniform(0.0, extent - fov)
        olo[2], ohi[2] = z0, z0 + fov
    sp = np.asarray(spacing_mm, float)
    size = np.maximum(2, np.ceil((ohi - olo) / sp).astype(int) + 1)
    zz, yy, xx = [olo[i] + sp[i] * np.arange(size[i]) for i in (2, 1, 0)]
    shape = (size[2], size[1], size[0])
    disp = _elastic(rng, shape, sp[::-1], rng.uniform(2.0, 7.0) * strength, rng.uniform(25.0, 45.0))
    inv = np.linalg.inv(a)
    # output point p -> source point centre + inv (p - centre) + displacement
    px = xx[None, None, :] - centre[0]
    py = yy[None, :, None] - centre[1]
    pz = zz[:, None, None] - centre[2]
    src = [centre[i] + inv[i, 0] * px + inv[i, 1] * py + inv[i, 2] * pz + disp[2 - i] for i in range(3)]
    m = np.linalg.inv(lab.index_to_physical_matrix()[:3, :3])
    rel = [src[i] - lab.origin[i] for i in range(3)]
    ijk = [m[r, 0] * rel[0] + m[r, 1] * rel[1] + m[r, 2] * rel[2] for r in range(3)]
    out = ndi.map_coordinates(lab.array, [ijk[2], ijk[1], ijk[0]], order=0, mode="constant", cval=0)
    return Volume(out.astype(np.uint8), tuple(sp), tuple(olo), np.eye(3))


# --- kidneys from KiTS masks --------------------------------------------------------------------
def _sides_of(mask: np.ndarray, grid_x: np.ndarray, midline_x: float | None = None) -> dict[str, np.ndarray]:
    """A KiTS mask's labels split into its right and left kidney (LPS: right has the smaller x).

    Two kidneys are split half-way between them; a single kidney goes to the side of the scan's
    midline it lay on (``midline_x``; the mask grid's centre when unknown), so its hilum still faces
    the spine after it is moved."""
    comp, n = ndi.label(mask > 0)
    if n == 0:
        return {}
    sizes = ndi.sum(mask > 0, comp, np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1]
    xs = [float(grid_x[np.nonzero(comp == i + 1)[2]].mean()) for i in order[:2]]
    if len(xs) == 2 and abs(xs[0] - xs[1]) > 50:
        split = 0.5 * (xs[0] + xs[1])
        right = grid_x[None, None, :] < split
        parts = {"right": np.where(right, mask, 0), "left": np.where(~right, mask, 0)}
        return {k: v.astype(np.uint8) for k, v in parts.items() if v.any()}
    mid = float(grid_x.mean()) if midline_x is None else float(midline_x)
    return {"right" if xs[0] < mid else "left": mask.copy()}


@dataclass(frozen=True)
class Displacement:
    """One kidney moved from its fossa, in voxels of the painting grid: ``down`` slices caudally and
    ``medial`` columns towards the midline (a low or pelvic kidney); or, ``removed``, taken out
    altogether (a solitary kidney on the other side, as after a nephrectomy)."""

    side: str
    down: int
    medial: int
    removed: bool = False


def _paste(labels: np.ndarray, part: np.ndarray, shift) -> None:
    """``part``'s labels (on the same grid) moved by ``shift`` voxels into ``labels``; what leaves the grid is lost."""
    zyx = np.argwhere(part > 0)
    dst = zyx + np.asarray(shift, int)
    ok = np.all((dst >= 0) & (dst < np.asarray(labels.shape)), axis=1)
    dst, src = dst[ok], part[tuple(zyx[ok].T)]
    labels[tuple(dst.T)] = np.maximum(labels[tuple(dst.T)], src)


def place_kidneys(tissue_ids: np.ndarray, body_ids: np.ndarray, body: Body, kits: Volume | None,
                  rng: np.random.Generator, kits_midline_x: float | None = None,
                  displaced: Displacement | None = None) -> np.ndarray:
    """Labels 0/1/2 on the grid: each body kidney replaced by the same side of ``kits`` (moved so the
    centres coincide), or kept as the body's own kidney shape when ``kits`` is None or lacks it.
    The removed body kidney becomes perirenal fat; the inserted kidney overwrites soft organs.
    ``displaced`` moves one side's kidney further, away from the body's kidney position, or removes it."""
    labels = np.zeros(body_ids.shape, np.uint8)
    kits_sides = {}
    if kits is not None:
        kx = kits.origin[0] + kits.spacing[0] * np.arange(kits.array.shape[2])
        kits_sides = _sides_of(kits.array, kx, kits_midline_x)
    for side, kid in body.kidney_ids.items():
        own = body_ids == kid
        if not own.any():
            continue
        tissue_ids[own] = ts.FAT
        if displaced is not None and displaced.side == side and displaced.removed:
            continue  # its fossa stays perirenal fat
        part = kits_sides.get(side)
        move = np.zeros(3, int)
        if displaced is not None and displaced.side == side:  # LPS: +z superior, the right side at low x
            move = np.array([-displaced.down, 0, displaced.medial if side == "right" else -displaced.medial])
        if part is None:  # the body's own kidney, moved only if displaced
            _paste(labels, own.astype(np.uint8), move)
            continue
        zyx = np.argwhere(part > 0)
        # voxel offset, kits and body grids share the spacing (both canonical at the same spacing)
        shift = np.round(np.argwhere(own).mean(0) - zyx.mean(0) + rng.normal(0.0, 2.0, 3)).astype(int)
        _paste(labels, part, shift + move)
    kidney = labels > 0
    bone = np.isin(tissue_ids, (ts.CORTICAL, ts.CANCELLOUS))
    labels[bone & kidney] = 0  # a kidney never pushes through a vertebra or rib
    return labels


# --- tissues with structure -----------------------------------------------------------------------
def _shell(mask: np.ndarray, spacing_zyx, thickness_mm: float) -> np.ndarray:
    d = ndi.distance_transform_edt(mask, sampling=spacing_zyx)
    return mask & (d <= thickness_mm)


def _in_plane_distance(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """Distance (mm) to ``mask`` within each axial slice (a huge z spacing keeps EDT in-plane)."""
    return ndi.distance_transform_edt(~mask, sampling=(1e4, spacing_zyx[1], spacing_zyx[2]))


def body_tissues(ids: np.ndarray, body: Body, spacing_zyx, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue ids on the warped grid, and the body mask.

    The label maps have no body outline, fat or abdominal wall: the labelled structures are closed
    into a visceral region, surrounded by a muscular wall and a subcutaneous fat layer of drawn
    thickness and skin. Bones get a cortical shell, the heart a myocardium, bowel a wall around
    fluid, gas or faeces.
    """
    lut = body.lut
    t = lut[ids]
    labelled = ids > 0
    # visceral region: labelled structures closed per slice (gaps of a few cm are fat between organs)
    close_mm = rng.uniform(18.0, 30.0)
    d_out = _in_plane_distance(labelled, spacing_zyx)
    core = d_out <= close_mm
    d_in = _in_plane_distance(~core, spacing_zyx)
    visceral = d_in > close_mm * 0.9
    visceral |= labelled
    for k in range(visceral.shape[0]):
        visceral[k] = ndi.binary_fill_holes(visceral[k])
    d_v = _in_plane_distance(visceral, spacing_zyx)
    wall = rng.uniform(6.0, 14.0)
    subcut = rng.uniform(6.0, 45.0)
    skin = 2.0
    inside = d_v <= wall + subcut + skin
    t = np.where(labelled, t, 0).astype(np.uint8)
    un = ~labelled
    t[un & visceral] = ts.FAT
    t[un & ~visceral & (d_v <= wall)] = ts.MUSCLE
    t[un & (d_v > wall) & (d_v <= wall + subcut)] = ts.FAT
    t[un & (d_v > wall + subcut) & inside] = ts.SKIN
    t[~inside] = ts.AIR
    # bones: cortical shell around cancellous marrow
    bone = t == _CLASS_IDS["bone"]
    t[bone] = ts.CANCELLOUS
    t[_shell(bone, spacing_zyx, rng.uniform(1.5, 3.0))] = ts.CORTICAL
    heart = t == _CLASS_IDS["heart"]
    t[heart] = ts.HEART_BLOOD
    t[_shell(heart, spacing_zyx, rng.uniform(5.0, 10.0))] = ts.MYOCARDIUM
    blob = smooth_noise(rng, t.shape, [8.0 / s for s in spacing_zyx])
    for cls, contents in ((_CLASS_IDS["bowel"], (ts.BOWEL_FLUID, ts.BOWEL_GAS, ts.ORAL_CONTRAST)),
                          (_CLASS_IDS["colon"], (ts.FECES, ts.BOWEL_GAS, ts.BOWEL_FLUID))):
        m = t == cls
        if not m.any():
            continue
        t[m] = contents[0]
        t[m & (blob > rng.uniform(0.3, 1.2))] = contents[1]
        if rng.random() < 0.35:
            t[m & (blob < -rng.uniform(0.2, 1.0))] = contents[2]
        t[_shell(m, spacing_zyx, rng.uniform(2.0, 4.0))] = ts.BOWEL_WALL
    # fat is never pure: septa and small soft-tissue strands in the mesentery
    fat = t == ts.FAT
    strands = fat & visceral & (np.abs(blob) < rng.uniform(0.02, 0.1))
    t[strands] = ts.SOFT_TISSUE
    t[t == _CLASS_IDS["kidney"]] = ts.FAT  # any kidney id left (cysts of a replaced kidney)
    return t, inside


def _draw(rng: np.random.Generator, mode: str, spread: float):
    """Tissue means and SDs for a contrast phase, an unenhanced scan (``UNENHANCED``) or random
    contrasts (``RANDOM``: every tissue but air, gas and lung an independent draw)."""
    phase = mode if mode in PHASES else "nephrographic"
    draw = draw_intensities(rng, phase, spread)
    if mode == UNENHANCED:
        for i, name in enumerate(ts.TISSUE_NAMES):
            (u0, u1), _enh, _sd = HU_TABLE[name]
            draw.mean[i] = rng.uniform(u0, u1)
        draw.mean[ts.MEDULLA] = draw.mean[ts.CORTEX] + rng.uniform(-4, 2)
        draw.mean[ts.TUMOUR] = draw.mean[ts.CORTEX] + rng.uniform(-15, 12)
        draw.phase = UNENHANCED
    elif mode == RANDOM:
        keep = {ts.AIR, ts.BOWEL_GAS, ts.LUNG}
        for i in range(len(ts.TISSUE_NAMES)):
            if i not in keep:
                draw.mean[i] = rng.uniform(-150.0, 400.0)
        draw.phase = RANDOM
    return draw


def draw_mode(rng: np.random.Generator, weights) -> str:
    """A contrast phase, ``UNENHANCED`` or ``RANDOM`` by the (contrast, unenhanced, random) weights."""
    w = np.asarray(weights, float)
    kind = int(rng.choice(3, p=w / w.sum()))
    if kind == 0:
        return PHASES[int(rng.choice(len(PHASES), p=[0.3, 0.5, 0.2]))]
    return (UNENHANCED, RANDOM)[kind - 1]


@dataclass
class PaintConfig:
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    # share of contrast-phase, unenhanced and random-contrast draws
    mode_weights: tuple[float, float, float] = (0.6, 0.25, 0.15)
    spread: float = 1.3
    deform: float = 1.0
    z_fov_mm: tuple[float, float] | None = (180.0, 700.0)
    slice_thickness_mm: tuple[float, float] = (0.5, 5.0)
    pixel_mm: tuple[float, float] = (0.5, 3.0)
    noise_sd: tuple[float, float] = (6.0, 30.0)  # at 0.75 mm pixels and 1 mm slices
    table_prob: float = 0.5
    # (lo, hi) mm: one kidney, of a random side, moved this far caudally (and up to 30 % of its
    # distance to the midline medially), as a low or pelvic kidney lies; None: kidneys where the body has them
    displaced_kidney_mm: tuple[float, float] | None = None
    # one kidney, of a random side, removed (its fossa left as fat): a solitary kidney, as after a
    # nephrectomy; not together with displaced_kidney_mm
    missing_kidney: bool = False

    def __post_init__(self):
        if self.missing_kidney and self.displaced_kidney_mm:
            raise ValueError("a painted body has one kidney displaced or one kidney missing, not both")


def _displacement(rng: np.random.Generator, cfg: PaintConfig, ids: np.ndarray, body: Body, sp_zyx) -> Displacement | None:
    """The drawn displacement of one of the body's kidneys, in voxels (None without kidneys)."""
    sides = [side for side, kid in sorted(body.kidney_ids.items()) if (ids == kid).any()]
    if not sides:
        return None
    side = str(rng.choice(sides))
    if cfg.missing_kidney:
        return Displacement(side, 0, 0, removed=True)
    own_x = np.argwhere(ids == body.kidney_ids[side])[:, 2].mean()
    body_x = np.argwhere(ids > 0)[:, 2].mean()
    down_mm = rng.uniform(*cfg.displaced_kidney_mm)
    medial_vox = rng.uniform(0.0, 0.3) * abs(body_x - own_x)
    return Displacement(side, int(round(down_mm / sp_zyx[0])), int(round(medial_vox)))


def paint_body(body: Body, kits: Volume | None, seed: int, config: PaintConfig | None = None,
               kits_midline_x: float | None = None) -> tuple[Volume, Volume, dict]:
    """A synthetic CT (float32 HU) and its 0/1/2 labels on one canonical grid, and what was drawn.

    ``kits``: a KiTS mask on a canonical grid of the same spacing (None keeps the body's kidneys);
    ``kits_midline_x``: the LPS x of the midline of the scan the mask was drawn on (see ``_sides_of``).
    """
    cfg = config or PaintConfig()
    # seven streams; the seventh (displacement) leaves the first six, and so every other draw, unchanged
    r_warp, r_tis, r_kid, r_int, r_tex, r_scan, r_move = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 11]).spawn(7))
    ids_vol = warp_body(body, r_warp, cfg.spacing_mm, cfg.deform, cfg.z_fov_mm)
    ids = ids_vol.array
    sp_zyx = tuple(cfg.spacing_mm[::-1])
    tissue, inside = body_tissues(ids, body, sp_zyx, r_tis)
    grid = Grid(*[ids_vol.origin[i] + cfg.spacing_mm[i] * np.arange(ids.shape[2 - i]) for i in range(3)])
    moved = cfg.displaced_kidney_mm or cfg.missing_kidney
    displaced = _displacement(r_move, cfg, ids, body, sp_zyx) if moved else None
    labels = place_kidneys(tissue, ids, body, kits, r_kid, kits_midline_x, displaced)
    if cfg.table_prob and r_tis.random() < cfg.table_prob:
        rows = np.nonzero(inside.any(axis=(0, 2)))[0]
        if rows.size:
            y0 = rows.max() + int(r_tis.integers(1, 6))
            tissue[:, y0 : y0 + int(r_tis.integers(3, 8)), :] = ts.TABLE
    draw = _draw(r_int, draw_mode(r_int, cfg.mode_weights), cfg.spread)
    means = apply_global(draw)
    sds = draw.sd
    n1 = smooth_noise(r_tex, tissue.shape, 0.7)
    n2 = smooth_noise(r_tex, tissue.shape, 2.5)
    ct = means[tissue] + sds[tissue] * (0.75 * n1 + 0.45 * n2)
    # kidneys and tumours with their inner structure (cortex, medulla, sinus, collecting system)
    if labels.any():
        lab_vol = Volume(labels, cfg.spacing_mm, ids_vol.origin, np.eye(3))
        kid_grid = labels > 0
        kidneys = find_kidneys(kid_grid, grid, float(grid.x.mean()))
        x0 = float(np.mean([k.centre[0] for k in kidneys])) if len(kidneys) == 2 else float(grid.x.mean())
        lay = Layout(x0=x0, y_vb=0.0, z_l1=0.0, level_h=34.0, kidneys=kidneys,
                     fov_lo=np.array([grid.x[0], grid.y[0], grid.z[0]]),
                     fov_hi=np.array([grid.x[-1], grid.y[-1], grid.z[-1]]))
        box = label_box(lab_vol, (2, 2, 2))
        hu_k, _ = render_kidneys(lab_vol, box, lay, means, sds, draw.tumour_type, r_kid)
        region = ct[box]
        inside_k = ~np.isnan(hu_k)
        region[inside_k] = hu_k[inside_k]
    # scanner: partial volume of the slice and the in-plane PSF
    thickness = r_scan.uniform(*cfg.slice_thickness_mm)
    pixel = r_scan.uniform(*cfg.pixel_mm)
    sig = [max(thickness, 0.1) / 2.355 / sp_zyx[0], 0.45 * pixel / sp_zyx[1], 0.45 * pixel / sp_zyx[2]]
    ct = ndi.gaussian_filter(ct.astype(np.float32), sig, mode="nearest", truncate=3.0)
    # noise of the drawn acquisition, divided by the averaging of its voxels onto the working grid
    base_sd = r_scan.uniform(*cfg.noise_sd)
    averaging = np.sqrt(max(1.0, sp_zyx[1] * sp_zyx[2] / pixel**2) * max(1.0, sp_zyx[0] / thickness))
    noise_sd = float(np.clip(base_sd / averaging, 1.0, 60.0))
    noise = smooth_noise(r_scan, ct.shape, (0.1, 0.6, 0.6))
    ct += np.where(inside, noise_sd * noise, 0.25 * noise_sd * noise)
    np.clip(ct, -1024, 3071, out=ct)
    info = {"phase": draw.phase, "tumour_type": draw.tumour_type, "thickness_mm": float(thickness),
            "pixel_mm": float(pixel), "noise_sd": noise_sd, "body": body.name}
    if displaced is not None and displaced.removed:
        info["missing"] = {"side": displaced.side}
    elif displaced is not None:
        info["displaced"] = {"side": displaced.side, "down_mm": displaced.down * sp_zyx[0],
                             "medial_mm": displaced.medial * sp_zyx[2]}
    geo = dict(spacing=cfg.spacing_mm, origin=ids_vol.origin, direction=np.eye(3))
    return Volume(ct.astype(np.float32), **geo), Volume(labels, **geo), info
