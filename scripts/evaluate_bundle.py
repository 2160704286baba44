"""Every number a training decision looks at, for one bundle: real CTs first, held-out phantoms second.

    python scripts/evaluate_bundle.py BUNDLE OUT_DIR [--heldout 10] [--grid-mm 1.5,1.5,3.0]
        [--variants DIR] [--displaced]

Writes ``OUT_DIR/real_ct.json`` (+ overlays) from ``evaluate --scans ../shared/data/real_ct`` with
the kidney-free regions the data README names, and ``OUT_DIR/heldout_bodies.json`` from held-out
KiTS19 masks (every 7th from case_00003, never trained on) painted into the TotalSegmentator bodies.
``--variants DIR`` (written by ``scripts/scanner_variants.py``) adds ``scanner_variants.json``, the
variants of kidney-free scans counted as kidney-free; ``--displaced`` adds
``heldout_bodies_displaced.json``, the same phantoms with one kidney moved 50-120 mm caudally.
``--validation SPLIT_JSON`` adds ``validation_bodies_{kits19,kits23}[_displaced].json``: the KiTS
masks a training split validated on, painted and measured the same way. These are the phantoms a
ship decision may gate on (false tumour, kidneys found); the held-out ones stay the test.
``--large-tumours ML`` adds ``heldout_large_tumours_{kits19,kits23}.json``: every held-out mask of
either dataset whose tumour is over ML mL (400 in the model card), painted the same way.
``--missing`` adds ``heldout_bodies_missing.json``, the held-out phantoms with one kidney taken out
(a solitary kidney: the empty fossa shows false kidney). ``--cut`` adds
``heldout_bodies_cut_{below,above}.json``, the held-out phantoms in a field of view that ends halfway
down the kidneys (a pelvis or an upper-abdomen scan).
``--tuning`` adds the tuning pool's sets (``KidneyTumorSegLib.training.tuning_pool``: in place,
displaced, missing a kidney, large, cut below and above the kidneys' middle;
``tuning_{set}_{dataset}.json``) and ``tuning_summary.json``, one row per set as
the choice rules compare them; ``--tuning-sets missing,in_place`` runs only those, in that order,
adding them to OUT's summary (a staged rule stops at its first failed set); ``--tuning-baseline
SUMMARY`` prints how each number moved from an earlier bundle's summary. These may choose; nothing else here does.
A scan a network trained on is marked ``seen_in_training`` and must not be quoted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from KidneyTumorSegLib.training.tuning_pool import SET_OPTIONS  # noqa: E402  (the held-out sets change a kidney as the tuning sets do)

DATA = REPO.parent / "shared" / "data"
KIDNEY_FREE = ["totalseg_s0002", "totalseg_s0003", "ircadb1_17:80-118"]
TUNING_POOL = REPO / "docs" / "evaluation" / "tuning_pool.json"


def validation_masks(split_json: Path, data: Path) -> dict[str, list[str]]:
    """The KiTS masks of a split's validation cases, per dataset folder that holds them."""
    import json

    from KidneyTumorSegLib.training.real_sources import mask_of

    wanted = sorted({mask_of(c) for c in json.loads(Path(split_json).read_text())["val"]})
    return {ds: chosen for ds in ("kits19", "kits23")
            if (chosen := [m for m in wanted if (data / ds / m / "segmentation.nii.gz").exists()])}


def held_out(data: Path, dataset: str) -> list[str]:
    """A dataset's held-out masks (``split.held_out_ids``), the ones every training recipe excludes."""
    from KidneyTumorSegLib.training.split import held_out_ids

    return held_out_ids(p.parent.name for p in (data / dataset).glob("case_*/segmentation.nii.gz"))


def large_tumour_masks(data: Path, min_ml: float) -> dict[str, list[str]]:
    """The held-out masks whose tumour (label 2) is over ``min_ml`` mL, per dataset, largest first."""
    import numpy as np
    import SimpleITK as sitk

    chosen = {}
    for ds in ("kits19", "kits23"):
        sized = []
        for case in held_out(data, ds):
            image = sitk.ReadImage(str(data / ds / case / "segmentation.nii.gz"))
            ml = float((sitk.GetArrayViewFromImage(image) == 2).sum()) * float(np.prod(image.GetSpacing())) / 1000.0
            if ml > min_ml:
                sized.append((ml, case))
        if sized:
            chosen[ds] = [case for _, case in sorted(sized, reverse=True)]
    return chosen


def evaluate_tuning(cli, args, out: Path, bodies_at: str, pool_file: Path) -> int:
    """The tuning pool's sets, one ``evaluate`` per set and dataset, then their combined rows."""
    import json

    from KidneyTumorSegLib.training import tuning_pool

    data = Path(args.data)
    sets = tuning_pool.tuning_sets(tuning_pool.load_pool(pool_file))
    names = args.tuning_sets.split(",") if args.tuning_sets else list(sets)
    unknown = [n for n in names if n not in sets]
    if unknown:
        print(f"--tuning-sets: no set named {', '.join(unknown)}; the sets are {', '.join(sets)}.", file=sys.stderr)
        return 2
    summary_path = out / "tuning_summary.json"
    summary = json.loads(summary_path.read_text()) if args.tuning_sets and summary_path.exists() else {}
    for name in names:
        parts = sets[name]
        extra = SET_OPTIONS.get(name, [])
        files = []
        for ds, masks in parts.items():
            files.append(out / f"tuning_{name}_{ds}.json")
            code = cli([*evaluate_command(args), "--kits-masks", str(data / ds), "--cases", ",".join(masks),
                        "--in-bodies", bodies_at, "--grid-mm", args.grid_mm, *extra, "--out", str(files[-1])])
            if code:
                return code
        summary[name] = tuning_pool.combine([json.loads(f.read_text()) for f in files])
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")  # after each set: a staged rule reads it
    if args.tuning_baseline:
        old = json.loads(Path(args.tuning_baseline).read_text())
        for name in names:
            row = summary[name]
            print(f"{name}:", *("  " + line for line in tuning_pool.compare(old.get(name, {}), row)), sep="\n")
    return 0


def evaluate_command(args) -> list[str]:
    """``evaluate`` for this bundle with these threads: the start of every command below."""
    return ["evaluate", "--weights", args.bundle, "--threads", args.threads]


def evaluate_validation(cli, args, out: Path, bodies_at: str) -> int:
    data = Path(args.data)
    for ds, masks in validation_masks(Path(args.validation), data).items():
        bodies = ["--kits-masks", str(data / ds), "--cases", ",".join(masks), "--in-bodies", bodies_at,
                  "--grid-mm", args.grid_mm]
        for extra, name in (([], f"validation_bodies_{ds}.json"),
                            (SET_OPTIONS["displaced"], f"validation_bodies_{ds}_displaced.json")):
            code = cli([*evaluate_command(args), *bodies, *extra, "--out", str(out / name)])
            if code:
                return code
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("out")
    p.add_argument("--heldout", type=int, default=10, help="held-out KiTS19 masks to paint (0: none)")
    p.add_argument("--grid-mm", default="1.5,1.5,3.0")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--variants", help="a folder of scanner variants (scripts/scanner_variants.py) to evaluate too")
    p.add_argument("--displaced", action="store_true", help="also the held-out phantoms with a displaced kidney")
    p.add_argument("--missing", action="store_true", help="also the held-out phantoms with one kidney taken out")
    p.add_argument("--cut", action="store_true",
                   help="also the held-out phantoms in a field of view ending halfway down the kidneys, from below and above")
    p.add_argument("--threads", default="2", help="CPU threads for the networks")
    p.add_argument("--large-tumours", type=float, metavar="ML",
                   help="also every held-out mask whose tumour is over ML mL (KiTS19 and KiTS23)")
    p.add_argument("--validation", metavar="SPLIT_JSON",
                   help="a training run's split.json: also its validation masks, in place and displaced")
    p.add_argument("--tuning", action="store_true",
                   help="also the tuning pool's sets (in place, displaced, missing a kidney, large, cut below and above "
                        "the kidneys' middle) and their summary")
    p.add_argument("--tuning-baseline", metavar="SUMMARY",
                   help="an earlier tuning_summary.json: print how each number moved from it")
    p.add_argument("--tuning-sets", metavar="NAMES",
                   help="with --tuning: only these sets, in this order (e.g. missing,in_place), added to OUT's "
                        "tuning_summary.json, so a rule can stop at its first failed set")
    p.add_argument("--tuning-pool", default=str(TUNING_POOL), help=argparse.SUPPRESS)
    p.add_argument("--no-real", action="store_true", help="skip the real CTs (and their variants)")
    args = p.parse_args(argv)
    from KidneyTumorSegLib.cli import main as cli
    from KidneyTumorSegLib.training.evaluate_real import derived_from_any

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    free = [a for spec in KIDNEY_FREE for a in ("--kidney-free", spec)]
    code = 0 if args.no_real else cli([*evaluate_command(args), "--scans", str(data / "real_ct"), *free,
                                       "--overlays", str(out / "overlays"), "--out", str(out / "real_ct.json")])
    if not code and args.variants and not args.no_real:
        whole_free = [spec for spec in KIDNEY_FREE if ":" not in spec]
        names = sorted(d.name for d in Path(args.variants).iterdir() if d.is_dir())
        free = [a for n in names if derived_from_any(n, whole_free) for a in ("--kidney-free", n)]
        code = cli([*evaluate_command(args), "--scans", args.variants, *free,
                    "--overlays", str(out / "variant_overlays"), "--out", str(out / "scanner_variants.json")])
    bodies_at = str(data / "anatomy" / "totalsegmentator") + ":s0001,s0004,s0006"
    if not code and args.tuning:
        code = evaluate_tuning(cli, args, out, bodies_at, Path(args.tuning_pool))
    if not code and args.validation:
        code = evaluate_validation(cli, args, out, bodies_at)
    if not code and args.large_tumours is not None:
        for ds, masks in large_tumour_masks(data, args.large_tumours).items():
            code = code or cli([*evaluate_command(args), "--kits-masks", str(data / ds), "--cases", ",".join(masks),
                                "--in-bodies", bodies_at, "--grid-mm", args.grid_mm,
                                "--out", str(out / f"heldout_large_tumours_{ds}.json")])
    if code or not args.heldout:
        return code
    held = held_out(data, "kits19")[: args.heldout]
    bodies = ["--kits-masks", str(data / "kits19"), "--cases", ",".join(held),
              "--in-bodies", bodies_at, "--grid-mm", args.grid_mm]
    code = cli([*evaluate_command(args), *bodies, "--out", str(out / "heldout_bodies.json")])
    if not code and args.displaced:
        code = cli([*evaluate_command(args), *bodies, *SET_OPTIONS["displaced"],
                    "--out", str(out / "heldout_bodies_displaced.json")])
    if not code and args.missing:
        code = cli([*evaluate_command(args), *bodies, *SET_OPTIONS["missing"], "--out", str(out / "heldout_bodies_missing.json")])
    for name in ("cut_below", "cut_above") if args.cut else ():
        code = code or cli([*evaluate_command(args), *bodies, *SET_OPTIONS[name], "--out", str(out / f"heldout_bodies_{name}.json")])
    return code


if __name__ == "__main__":
    sys.exit(main())
