"""One weights bundle from networks trained in different runs of the same configuration.

Why: a GPU lease is short, so the bundled networks may come from more than one run (say, the
segmenter from one and the localisers, trained longer, from another). Which run each network comes
from is chosen on validation loss, never on held-out cases; the merged bundle records where every
network came from.

    python scripts/merge_bundle.py --base runs/gpu1/bundle.safetensors \
        --take z_localiser=runs/gpu2/checkpoints/z_localiser.best.safetensors \
        --take xy_localiser=runs/gpu2/checkpoints/xy_localiser.best.safetensors \
        --metrics runs/gpu2/metrics.csv --out merged.safetensors --half

``--take`` accepts a training checkpoint (``*.best.safetensors``) or another bundle. ``--metrics``
(a run's metrics.csv) refreshes the validation summary of the networks taken from that run.
``--add-provenance FILE`` adds a JSON file's keys to the provenance (commands, data, licences).
``--set segmenter.tumour_threshold=0.4`` changes an inference setting (thresholds, ``mirror_x``)
chosen on the validation cases; the network shapes cannot be changed this way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_rows(metrics_csv: Path) -> dict[str, dict]:
    """The row of lowest validation loss per network in a run's metrics.csv."""
    from KidneyTumorSegLib.training.metrics import read_csv

    best: dict[str, dict] = {}
    for row in read_csv(metrics_csv):
        if row["network"] not in best or float(row["val_loss"]) < float(best[row["network"]]["val_loss"]):
            best[row["network"]] = row
    return best


def summary_of(row: dict) -> dict:
    def num(key):
        return float(row[key]) if row.get(key) not in (None, "") else None

    return {
        "best_epoch": int(row["epoch"]),
        "best_val_loss": num("val_loss"),
        "val_dice_kidney": num("val_dice_kidney"),
        "val_dice_tumour": num("val_dice_tumour"),
        "val_accuracy": num("val_accuracy"),
        "seconds": num("seconds"),
    }


def main(argv=None) -> int:
    from KidneyTumorSegLib.config import with_settings
    from KidneyTumorSegLib.training import NETWORKS
    from KidneyTumorSegLib.training.checkpoint import load_checkpoint
    from KidneyTumorSegLib.weights import load_bundle, networks_from_bundle, save_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="bundle giving the configuration and the other networks")
    p.add_argument("--take", action="append", default=[], help="NETWORK=FILE (checkpoint or bundle)")
    p.add_argument("--metrics", help="metrics.csv of the run the taken networks come from")
    p.add_argument("--set", action="append", default=[], help="PART.KEY=VALUE inference setting, e.g. segmenter.mirror_x=true")
    p.add_argument("--add-provenance", help="JSON file whose keys are added to the provenance (the exact "
                   "commands of the runs, the data seen and its licences)")
    p.add_argument("--out", required=True)
    p.add_argument("--half", action="store_true")
    args = p.parse_args(argv)

    base = load_bundle(args.base)
    try:
        config = with_settings(base.config, args.set)
    except ValueError as err:
        p.error(f"--set {err}")
    states = {n: dict(base.state_dicts[n]) for n in NETWORKS}
    provenance = dict(base.header.get("provenance", {}))
    metrics = dict(base.header.get("metrics", {}))
    validation = dict(metrics.get("validation", {}))
    origin = dict(provenance.get("networks", {}))
    rows = best_rows(Path(args.metrics)) if args.metrics else {}
    for item in args.take:
        name, _, path = item.partition("=")
        if name not in NETWORKS or not path:
            p.error(f"--take needs NETWORK=FILE with NETWORK one of {', '.join(NETWORKS)}")
        if path.endswith(".best.safetensors") or path.endswith(".last.safetensors"):
            states[name] = load_checkpoint(path)["model"]
        else:
            states[name] = load_bundle(path).state_dicts[name]
        origin[name] = f"taken from {Path(path).name} (chosen on validation loss)"
        if name in rows:
            validation[name] = summary_of(rows[name])
    provenance["networks"] = origin
    metrics["validation"] = validation
    if args.add_provenance:
        import json

        provenance.update(json.loads(Path(args.add_provenance).read_text()))
    if args.set:
        provenance["settings"] = {**provenance.get("settings", {}), **dict(i.partition("=")[::2] for i in args.set)}
    out = save_bundle(args.out, config, states, provenance=provenance, metrics=metrics, half=args.half)
    networks_from_bundle(load_bundle(out))  # the merged file loads, and every network fits its configuration
    print(f"merged bundle written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
