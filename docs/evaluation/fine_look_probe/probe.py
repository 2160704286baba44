"""Probe: a finer second look (context_scale < 1) for small tumours, on the tuning pool's tumours <= 40 mL."""
import sys, json, dataclasses
from pathlib import Path
import torch
from KidneyTumorSegLib.weights import load_bundle
from KidneyTumorSegLib.training.evaluate import evaluate, real_body_phantom
from KidneyTumorSegLib.phantoms.bodies import read_body
torch.set_num_threads(1)
scale, fusion, out = float(sys.argv[1]), sys.argv[2], sys.argv[3]
b = load_bundle('/work/main/docs/../Resources/Models/kidney_tumor_seg.safetensors')
seg = dataclasses.replace(b.config.segmenter, context_scale=scale, context_fusion=fusion, context_gate_ml=0.0)
b.config = dataclasses.replace(b.config, segmenter=seg)
ids = sys.argv[4].split(',')
TS = Path('/work/shared/data/anatomy/totalsegmentator'); D = Path('/work/shared/data')
bodies = {}
def cases():
    for cid in ids:
        body, case = cid.split('@')
        which = 'kits19' if int(case.split('_')[1]) <= 209 and int(case.split('_')[1]) not in (214,) and case < 'case_00210' else 'kits23'
        if body not in bodies:
            bodies[body] = read_body(TS / body / 'labels.nii.gz')
        ct, truth, info = real_body_phantom(bodies[body], D / which / case / 'segmentation.nii.gz', case, 0, (1.5, 1.5, 3.0), None)
        yield cid, ct, truth, info
rep = evaluate(b, cases(), device='cpu')
json.dump(rep, open(out, 'w'), indent=1)
for r in rep['cases']:
    print(r['case'], r['kidney_dice'], r['tumour_dice'], r['truth_tumour_ml'], r['predicted_tumour_ml'], r.get('false_tumour_ml'), flush=True)
