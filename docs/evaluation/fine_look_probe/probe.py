"""Probe: a finer second look (context_scale < 1) for small tumours, on the tuning pool's tumours <= 40 mL.

python probe.py SCALE FUSION OUT.json BODY@CASE,... (paths as on the development machine)."""
import dataclasses
import json
import sys
from pathlib import Path

import torch

from KidneyTumorSegLib.phantoms.bodies import read_body
from KidneyTumorSegLib.training.evaluate import evaluate, real_body_phantom
from KidneyTumorSegLib.weights import load_bundle

DATA = Path("/work/shared/data")
BODIES = DATA / "anatomy" / "totalsegmentator"


def cases(ids):
    """Each ``body@case`` painted in its named body, exactly as the tuning rows were (seed 0)."""
    bodies = {}
    for cid in ids:
        body, case = cid.split("@")
        which = "kits19" if int(case.split("_")[1]) <= 209 else "kits23"  # the pool's KiTS23 cases start at 214
        if body not in bodies:
            bodies[body] = read_body(BODIES / body / "labels.nii.gz")
        ct, truth, info = real_body_phantom(bodies[body], DATA / which / case / "segmentation.nii.gz", case, 0,
                                            (1.5, 1.5, 3.0), None)
        yield cid, ct, truth, info


def main():
    torch.set_num_threads(1)
    scale, fusion, out, ids = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    bundle = load_bundle(None)
    seg = dataclasses.replace(bundle.config.segmenter, context_scale=scale, context_fusion=fusion, context_gate_ml=0.0)
    bundle.config = dataclasses.replace(bundle.config, segmenter=seg)
    report = evaluate(bundle, cases(ids), device="cpu")
    Path(out).write_text(json.dumps(report, indent=1))
    for r in report["cases"]:
        print(r["case"], r["kidney_dice"], r["tumour_dice"], r["truth_tumour_ml"], r["predicted_tumour_ml"],
              r.get("false_tumour_ml"), flush=True)


if __name__ == "__main__":
    main()
