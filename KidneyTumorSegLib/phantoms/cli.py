"""Command-line hooks: ``kidney-tumor-seg phantom`` and ``kidney-tumor-seg gallery``.

The main CLI adds them with ``add_phantom_parser(subparsers)`` and ``add_gallery_parser(subparsers)``;
each sets ``func(args) -> int``.  Only these functions print.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..errors import KidneyTumorSegError
from ..kits import write_kits_case
from ..volume import Volume
from .generator import PhantomConfig, make_phantom
from .intensity import PHASES
from .procedural import KITS19_DIRECTION, procedural_labels


def _label_source(args, n: int):
    """Yield (case_id, labels) from a KiTS folder (labels only are enough) or procedurally."""
    if args.from_kits and not args.procedural:
        from ..kits import KitsCaseError, KitsDataset

        ds = KitsDataset(args.from_kits, require_images=False)
        ids = ds.case_ids[:n]
        for cid in ids:
            try:
                yield cid, ds.load(cid)[1]
            except KitsCaseError as err:
                print(f"skipped: {err}", file=sys.stderr)
        return
    rng = np.random.default_rng(args.seed)
    for i in range(n):
        shape = (int(rng.integers(60, 140)), 512, 512)
        xy = float(rng.uniform(0.6, 0.9))
        spacing = (xy, xy, float(rng.choice([2.0, 2.5, 3.0, 4.0, 5.0])))
        shape = (int(min(shape[0], 420 / spacing[2])), 512, 512)
        yield f"case_{i:05d}", procedural_labels(args.seed + i, shape, spacing, direction=KITS19_DIRECTION)


def crop_to_labels(labels: Volume, margin_mm: float = 40.0) -> Volume:
    """Crop the slice axis to the labelled slices plus a margin (keeps the geometry exact)."""
    c = int(np.argmax(np.abs(labels.direction[2, :])))
    ax = 2 - c
    nz = np.nonzero(np.any(labels.array > 0, axis=tuple(a for a in range(3) if a != ax)))[0]
    if nz.size == 0:
        return labels
    m = int(np.ceil(margin_mm / labels.spacing[c]))
    a, b = max(0, nz[0] - m), min(labels.array.shape[ax], nz[-1] + 1 + m)
    sl = [slice(None)] * 3
    sl[ax] = slice(a, b)
    ijk = np.zeros(3)
    ijk[c] = a
    origin = labels.index_to_physical(ijk)
    return Volume(np.ascontiguousarray(labels.array[tuple(sl)]), labels.spacing, origin, labels.direction)


def run_phantom(args) -> int:
    out = Path(args.out_dir)
    cfg = PhantomConfig(phase=args.phase, tissue_map=False)
    try:
        for i, (cid, labels) in enumerate(_label_source(args, args.n)):
            t0 = time.perf_counter()
            ct, info = make_phantom(labels, args.seed + i, cfg)
            case = write_kits_case(out, cid, ct, labels, layout=args.layout)
            print(f"{case}  {info['phase']}  {ct.array.shape}  {time.perf_counter() - t0:.1f} s")
    except KidneyTumorSegError as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    return 0


def thin_for_preview(labels: Volume, in_plane_mm: float = 1.5, slice_mm: float = 2.5) -> Volume:
    """Strided subsample (exact geometry: spacing times the stride) so that previews stay fast."""
    c_z = int(np.argmax(np.abs(labels.direction[2, :])))
    steps = [max(1, int(in_plane_mm // labels.spacing[c])) if c != c_z else max(1, int(slice_mm // labels.spacing[c]))
             for c in range(3)]
    arr = labels.array[:: steps[2], :: steps[1], :: steps[0]]
    spacing = tuple(labels.spacing[c] * steps[c] for c in range(3))
    return Volume(np.ascontiguousarray(arr), spacing, labels.origin, labels.direction)


def run_gallery(args) -> int:
    from .gallery import contact_sheet

    cfg = PhantomConfig(tissue_map=False)
    pairs, captions = [], []
    try:
        for i, (cid, labels) in enumerate(_label_source(args, args.n)):
            labels = thin_for_preview(crop_to_labels(labels))
            ct, info = make_phantom(labels, args.seed + i, cfg)
            pairs.append((ct, labels))
            captions.append(f"{cid} seed {args.seed + i} {info['phase']} tumour {info['tumour_type']}")
        path = contact_sheet(pairs, args.out_png, captions=captions)
    except KidneyTumorSegError as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    print(path)
    return 0


def add_phantom_parser(subparsers):
    p = subparsers.add_parser("phantom", help="write synthetic contrast-enhanced CT phantoms in KiTS layout",
                              description="Synthetic contrast CT around KiTS label maps or procedural kidneys.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--n", type=int, default=5, help="number of cases (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first case")
    p.add_argument("--from-kits", metavar="DIR", help="KiTS folder whose label maps are used (images not needed)")
    p.add_argument("--procedural", action="store_true", help="procedural kidneys and tumours (the default)")
    p.add_argument("--phase", choices=PHASES, help="contrast phase (default: drawn at random)")
    p.add_argument("--layout", choices=("kits19", "kits21", "kits23"), default="kits19", help="file layout of the cases")
    p.set_defaults(func=run_phantom)
    return p


def add_gallery_parser(subparsers):
    p = subparsers.add_parser("gallery", help="PNG contact sheet of phantoms (axial and coronal, W400/L40)")
    p.add_argument("out_png", metavar="OUT.png")
    p.add_argument("--n", type=int, default=8, help="number of phantoms on the sheet")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first phantom")
    p.add_argument("--from-kits", metavar="DIR", help="KiTS folder whose label maps are used")
    p.set_defaults(func=run_gallery, procedural=False, phase=None)
    return p
