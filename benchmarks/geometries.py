"""The scans the benchmark runs on: synthetic CTs with the geometry of real KiTS19 cases.

Speed and memory depend on the voxel grid far more than on what the voxels hold, so each benchmark
volume copies a real case's grid (size and spacing) and holds a synthetic contrast CT in HU with two
kidneys and a tumour. The library's phantoms (``KidneyTumorSegLib.phantoms``) are used when present;
otherwise, or when asked, a simple phantom of our own: air, a body of fat and soft tissue, spine,
aorta, liver, two enhancing kidneys and a tumour, plus noise, built slab by slab so that even the
large grid (160 million voxels) takes seconds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Geometry:
    name: str
    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    like: str  # the KiTS19 case whose grid this copies
    repeats: int  # default number of engine runs (medians are reported)
    reference_windows: int  # default number of timed reference windows on the CPU

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape_zyx))

    def describe(self) -> str:
        z, y, x = self.shape_zyx
        sx, sy, sz = self.spacing_xyz
        return f"{x}x{y}x{z} at {sx:.2f}x{sy:.2f}x{sz:.2f} mm"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["describe"] = self.describe()
        return d


# Grids of real KiTS19 training cases (their labels live in ../shared/data/kits19).
GEOMETRIES: dict[str, Geometry] = {
    # The median case: 108 slices is the median slice count of the 210 cases; 3 mm slices.
    "median": Geometry("median", (108, 512, 512), (0.78125, 0.78125, 3.0), "case_00023 (512x512x107 at 0.78x0.78x3)", 3, 3),
    # The largest grid in voxels among the common ones: thin slices over the abdomen and pelvis.
    "large": Geometry("large", (611, 512, 512), (0.919921875, 0.919921875, 0.5), "case_00000", 1, 1),
    # The fewest slices: 29 slices of 5 mm.
    "thick": Geometry("thick", (29, 512, 512), (0.9765625, 0.9765625, 5.0), "case_00061", 1, 1),
    # Not a KiTS19 grid: a small volume for the harness's own test.
    "tiny": Geometry("tiny", (24, 64, 64), (4.0, 4.0, 6.0), "none (test geometry)", 1, 1),
}


def _ellipsoid_paint(array, origin_xyz, spacing_xyz, centre_xyz, radii_xyz, value) -> int:
    """Set voxels inside an axis-aligned ellipsoid to ``value``; touches only its bounding box."""
    origin = np.asarray(origin_xyz, float)
    sp = np.asarray(spacing_xyz, float)
    c = np.asarray(centre_xyz, float)
    r = np.asarray(radii_xyz, float)
    lo = np.maximum(np.floor((c - r - origin) / sp).astype(int), 0)
    hi = np.minimum(np.ceil((c + r - origin) / sp).astype(int) + 1, np.asarray(array.shape[::-1]))
    if np.any(hi <= lo):
        return 0
    axes = [(origin[a] + sp[a] * np.arange(lo[a], hi[a]) - c[a]) / r[a] for a in range(3)]
    inside = (axes[2][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[0][None, None, :] ** 2) <= 1.0
    view = array[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
    view[inside] = value
    return int(inside.sum())


def simple_phantom(geometry: Geometry, seed: int = 0):
    """A synthetic contrast CT (int16 HU) on ``geometry``'s grid, with kidneys and a tumour.

    Physical frame: LPS, identity direction, volume centred on the origin; the kidneys sit at the
    middle of the z-range, as in an abdominal scan.
    """
    from KidneyTumorSegLib.volume import Volume

    rng = np.random.default_rng(seed)
    nz, ny, nx = geometry.shape_zyx
    sp = np.asarray(geometry.spacing_xyz, float)
    n_xyz = np.array([nx, ny, nz], float)
    origin = -(n_xyz - 1) * sp / 2.0
    fov = n_xyz * sp
    x = origin[0] + sp[0] * np.arange(nx)
    y = origin[1] + sp[1] * np.arange(ny)
    xx, yy = np.meshgrid(x, y)  # (ny, nx)

    # One axial cross-section (the trunk changes little over the kidneys' range), then 3D organs.
    ax, ay = min(165.0, 0.45 * fov[0]), min(120.0, 0.42 * fov[1])
    r_body = (xx / ax) ** 2 + (yy / ay) ** 2
    section = np.full((ny, nx), -1000.0, np.float32)
    section[r_body <= 1.0] = -100.0  # subcutaneous fat
    section[(xx / (ax - 15)) ** 2 + (yy / (ay - 15)) ** 2 <= 1.0] = 45.0  # muscle and soft tissue
    section[(xx / (0.5 * ax)) ** 2 + ((yy - 0.2 * ay) / (0.35 * ay)) ** 2 <= 1.0] = -80.0  # retroperitoneal fat
    section[(xx - 0.0) ** 2 + (yy - 0.55 * ay) ** 2 <= (0.13 * ay) ** 2] = 380.0  # vertebral body
    section[(xx - 0.06 * ax) ** 2 + (yy - 0.25 * ay) ** 2 <= (0.09 * ay) ** 2] = 220.0  # aorta (arterial)
    array = np.empty((nz, ny, nx), np.int16)
    array[:] = np.round(section).astype(np.int16)[None]

    kz = 0.0
    kid = dict(x=0.42 * ax, y=0.25 * ay, r=(min(30.0, 0.17 * ax), min(25.0, 0.2 * ay), min(55.0, 0.3 * fov[2])))
    liver = ((-0.35 * ax, -0.1 * ay, kz + 0.45 * kid["r"][2] + 40.0), (0.5 * ax, 0.55 * ay, 90.0))
    _ellipsoid_paint(array, origin, sp, liver[0], liver[1], 105)
    for side in (-1.0, 1.0):  # LPS: -x is the patient's right
        centre = (side * kid["x"], kid["y"], kz + side * 8.0)
        _ellipsoid_paint(array, origin, sp, centre, kid["r"], 175)  # enhancing parenchyma
        medulla = tuple(0.55 * r for r in kid["r"])
        _ellipsoid_paint(array, origin, sp, centre, medulla, 120)
    tumour_r = min(20.0, 0.5 * kid["r"][0])
    tumour_c = (kid["x"] + 0.7 * kid["r"][0], kid["y"], kz + 0.3 * kid["r"][2])
    _ellipsoid_paint(array, origin, sp, tumour_c, (tumour_r,) * 3, 75)

    # Image noise, slab by slab so the temporary floats stay small.
    step = max(1, int(2**24 // (ny * nx)))
    for z0 in range(0, nz, step):
        slab = array[z0 : z0 + step]
        noise = rng.standard_normal(slab.shape, dtype=np.float32)
        noise *= 12.0
        noise += slab
        np.clip(noise, -1024, 3071, out=noise)
        slab[:] = np.rint(noise).astype(np.int16)
    return Volume(array, tuple(sp), tuple(origin), np.eye(3))


def library_phantom(geometry: Geometry, seed: int = 0):
    """The library's procedural phantom on ``geometry``'s grid (ImportError where it is absent)."""
    from KidneyTumorSegLib.phantoms import make_phantom, procedural_labels

    labels = procedural_labels(seed, shape_zyx=geometry.shape_zyx, spacing_xyz=geometry.spacing_xyz, tumour=True)
    ct, _info = make_phantom(labels, seed)
    arr = np.clip(np.round(ct.array), -1024, 3071).astype(np.int16)
    return ct.with_array(arr)


def make_input(geometry: Geometry, folder: Path, phantom: str = "auto", seed: int = 0) -> dict:
    """Write the benchmark CT for ``geometry`` as compressed NIfTI in ``folder`` (reused if there).

    ``phantom``: ``library`` (KidneyTumorSegLib.phantoms), ``simple`` (ours) or ``auto`` (the
    library's where it imports, else ours). Returns where it went and how it was made.
    """
    from KidneyTumorSegLib.io import write_volume

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {"auto": ("library", "simple"), "library": ("library",), "simple": ("simple",)}[phantom]
    last_error = None
    for kind in kinds:
        path = folder / f"{geometry.name}_{kind}_seed{seed}.nii.gz"
        if path.exists():
            return {"path": str(path), "phantom": kind, "generate_s": 0.0, "reused": True}
        t0 = time.perf_counter()
        try:
            volume = library_phantom(geometry, seed) if kind == "library" else simple_phantom(geometry, seed)
        except ImportError as err:
            last_error = err
            continue
        write_volume(volume, path)
        return {
            "path": str(path),
            "phantom": kind,
            "generate_s": round(time.perf_counter() - t0, 2),
            "reused": False,
        }
    raise RuntimeError(f"no phantom generator could be used: {last_error}")


def main(argv=None) -> int:
    """``python -m benchmarks.geometries NAME FOLDER [--phantom P] [--seed S]``: make one input, print
    where it went as JSON. The harness calls this in a child process so that its own memory stays
    small while it measures others."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m benchmarks.geometries")
    p.add_argument("name", choices=sorted(GEOMETRIES))
    p.add_argument("folder")
    p.add_argument("--phantom", choices=("auto", "library", "simple"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(make_input(GEOMETRIES[args.name], Path(args.folder), args.phantom, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
