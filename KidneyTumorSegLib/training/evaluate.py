"""Held-out evaluation of a weights bundle: the FULL pipeline on phantoms the networks never saw.

Each case is a CT phantom built around a label map (a KiTS19 mask the training never used, or a
procedural anatomy with a seed outside the training range) on a realistic CT grid, run through
``Pipeline.from_weights(bundle).run(ct)`` exactly as a user would run it, and compared with the
truth on that grid: kidney Dice (labels > 0 against truth > 0) and tumour Dice (labels == 2
against truth == 2). Means and medians over cases; the tumour summary only counts cases whose
truth has a tumour. False tumour (predicted tumour components touching no true tumour) is counted
per case and in total, since Dice over tumour cases does not show it. A case that was in the
bundle's training or validation split is flagged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..volume import Volume, signed_permutation
from .metrics import (
    false_kidney,
    false_tumour,
    kidneys_found,
    segmentation_dice,
    tumours_found,
    tumours_found_by_size,
)
from .real_sources import mask_of
from .seeds import stable_seed

DEFAULT_GRID_MM = (1.5, 1.5, 3.0)
EVAL_SEED_OFFSET = 100_000  # procedural held-out seeds never collide with training ones


def mask_phantom(mask_path, case_id: str, seed: int, grid_mm=DEFAULT_GRID_MM, phantom_config=None):
    """(ct, truth) for one mask: the mask resampled by nearest onto a CT-like grid, a phantom around it."""
    from ..io import read_volume
    from ..phantoms import make_phantom
    from ..resampling import to_canonical

    mask = read_volume(mask_path)
    mask = mask.with_array(np.asarray(mask.array).astype(np.uint8))
    truth = to_canonical(mask, grid_mm, "nearest", 0)
    truth = truth.with_array(truth.array.astype(np.uint8))
    ct, _ = make_phantom(truth, stable_seed(seed, "eval", case_id), phantom_config)
    return ct, truth


def procedural_phantom(index: int, seed: int, grid_mm=DEFAULT_GRID_MM, fov_mm=(320.0, 320.0, 280.0)):
    from ..phantoms import make_phantom, procedural_labels

    shape = tuple(max(8, int(round(f / s))) for f, s in zip(fov_mm[::-1], tuple(grid_mm)[::-1]))
    s = stable_seed(seed + EVAL_SEED_OFFSET, "eval-procedural", index)
    truth = procedural_labels(s, shape, tuple(grid_mm))
    truth = truth.with_array(np.asarray(truth.array).astype(np.uint8))
    ct, _ = make_phantom(truth, s)
    return ct, truth


def heldout_cases(
    masks: dict[str, Path] | None = None,
    procedural: int = 0,
    seed: int = 0,
    grid_mm=DEFAULT_GRID_MM,
) -> Iterator[tuple[str, Volume, Volume]]:
    """Lazily built (case_id, ct, truth) triples, one phantom in memory at a time."""
    for case_id, path in (masks or {}).items():
        ct, truth = mask_phantom(path, case_id, seed, grid_mm)
        yield case_id, ct, truth
    for i in range(procedural):
        ct, truth = procedural_phantom(i, seed, grid_mm)
        yield f"eval_proc_{i:04d}", ct, truth


def real_body_phantom(body, mask_path, case_id: str, seed: int, grid_mm=DEFAULT_GRID_MM, displaced_mm=None,
                      missing_kidney: bool = False):
    """(ct, truth, draw) for one mask painted into a real body (a ``phantoms.bodies.Body``) on a
    CT-like grid: the body's whole field of view, deformed as a training draw is (its own seed), its
    kidneys replaced by the mask's, in a contrast phase (the tumour targets are for contrast CT).
    ``displaced_mm`` (lo, hi): one kidney moved that far caudally, a low or pelvic kidney;
    ``missing_kidney``: one kidney removed, a solitary kidney."""
    from ..phantoms.realbody import PaintConfig, paint_body
    from .real_sources import kits_on_grid

    kits, midline = kits_on_grid(Path(mask_path), grid_mm)
    config = PaintConfig(spacing_mm=tuple(grid_mm), z_fov_mm=None, mode_weights=(1.0, 0.0, 0.0),  # contrast CT
                         displaced_kidney_mm=displaced_mm, missing_kidney=missing_kidney)
    ct, truth, info = paint_body(body, kits, stable_seed(seed, "eval-body", case_id), config, midline)
    return ct, truth, info


def real_body_cases(masks: dict[str, Path], bodies: list[Path], seed: int = 0, grid_mm=DEFAULT_GRID_MM,
                    displaced_mm=None, missing_kidney: bool = False) -> Iterator[tuple[str, Volume, Volume, dict]]:
    """Held-out masks painted into real bodies, the bodies taken in turn; ids ``body@case``. Each
    body's label map is read once. Each item also carries the painting's draw (phase, tumour type,
    slice thickness, ...), which the report keeps so that results can be read per draw."""
    from ..phantoms.bodies import read_body

    read = {}
    for i, (case_id, path) in enumerate(masks.items()):
        body_path = Path(bodies[i % len(bodies)])
        if body_path not in read:
            read[body_path] = read_body(body_path)
        ct, truth, info = real_body_phantom(read[body_path], path, case_id, seed, grid_mm, displaced_mm, missing_kidney)
        yield f"{body_path.parent.name}@{case_id}", ct, truth, info


CUT_FIELDS = ("below", "above")


def cut_at_kidneys_middle(ct: Volume, truth: Volume, keep: str, kidney_ids=None) -> tuple[Volume, Volume]:
    """The scan's slices below (``keep="below"``: a pelvis scan catching the kidneys' lower halves)
    or above (an upper-abdomen scan catching their upper halves) the middle of its kidneys'
    head-foot extent, image and truth alike: a field of view that ends inside the kidneys, as scans
    made for something else (the chest, the pelvis) often do. The kidneys are the truth's non-zero
    voxels (a phantom's kidney and tumour), or its ``kidney_ids`` (a real scan's label map)."""
    if keep not in CUT_FIELDS:
        raise ValueError(f"keep is one of {', '.join(CUT_FIELDS)}, not {keep!r}")
    perm = signed_permutation(ct.direction)
    if perm is None or perm[2][0] != 2:
        raise ValueError("the scan's slices are not axial")
    sign = perm[2][1]
    kidney = truth.array > 0 if kidney_ids is None else np.isin(truth.array, list(kidney_ids))
    n = ct.array.shape[0]
    up = slice(None) if sign > 0 else slice(None, None, -1)  # the slices from the feet up
    slices = np.flatnonzero(kidney.any(axis=(1, 2))[up])
    if slices.size == 0:
        return ct, truth
    middle = int(round((slices[0] + slices[-1]) / 2.0))  # the middle slice goes with the upper part
    lo, hi = (0, middle) if keep == "below" else (middle, n)
    if sign < 0:  # back to the slice indices, which grow towards the feet
        lo, hi = n - hi, n - lo
    box_lo, box_hi = (0, 0, lo), (ct.array.shape[2], ct.array.shape[1], hi)
    return ct.sub_volume(box_lo, box_hi), truth.sub_volume(box_lo, box_hi)


def cut_cases(cases: Iterable[tuple], keep: str) -> Iterator[tuple]:
    """``cases`` with each phantom's field of view cut at its kidneys' middle (``cut_at_kidneys_middle``)."""
    for case_id, ct, truth, *drawn in cases:
        yield (case_id, *cut_at_kidneys_middle(ct, truth, keep), *drawn)


def _tumour_dice_by_type(per_case: list[dict]) -> dict:
    """Tumour Dice per drawn tumour type (hyper-, hypo-, iso-attenuating, cystic), for phantoms that
    record their draw: an iso-attenuating tumour is nearly invisible, and a mean over all types hides it."""
    by_type: dict[str, list[float]] = {}
    for c in per_case:
        kind = c.get("phantom", {}).get("tumour_type")
        if kind and c["truth_tumour_ml"] > 0:
            by_type.setdefault(kind, []).append(c["tumour_dice"])
    return {"tumour_dice_by_type": {k: _stats(v) for k, v in sorted(by_type.items())}} if by_type else {}


def _phase_agreement(per_case: list[dict]) -> dict:
    """How often the contrast-phase detector names each painted phase: {painted: {detected: n}}
    (detected None: too little kidney found to judge). Only phantoms that record their draw."""
    table: dict[str, dict[str, int]] = {}
    for c in per_case:
        painted = c.get("phantom", {}).get("phase")
        if painted:
            row = table.setdefault(painted, {})
            row[str(c["contrast_detected"])] = row.get(str(c["contrast_detected"]), 0) + 1
    return {"contrast_phase_detected": table} if table else {}


def _rounded(info: dict) -> dict:
    """A phantom's draw for the report: floats to 3 decimals."""
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in info.items()}


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def evaluate(
    weights,
    cases: Iterable[tuple[str, Volume, Volume]],
    device: str = "auto",
    progress: Callable[[float, str], None] | None = None,
    n_cases: int | None = None,
    settings: list[list[str]] | None = None,
) -> dict:
    """Run the pipeline on every case and report Dice per case and summarised (a JSON-able dict).

    ``settings``: several sets of inference settings (``["segmenter.tumour_threshold=0.4"]``, ...)
    to compare on the same cases; the report then holds one summary per set (``sweep``). Each case
    is built once, and the segmenter runs once per distinct set of kidney boxes (the localisers run
    for every set): its outputs are reused across the sets, which may therefore only hold settings
    that leave them unchanged (not ``mirror_x`` or ``overlap``). A row's ``seconds`` is then that
    set's run alone: the first set that reaches a set of boxes pays for segmenting it."""
    from ..pipeline import Pipeline
    from ..weights import Bundle, load_bundle

    progress = progress or (lambda f, m: None)
    bundle = weights if isinstance(weights, Bundle) else load_bundle(weights)
    pipe = Pipeline.from_weights(bundle, device=device)
    split = bundle.header.get("provenance", {}).get("split", {}) or {}
    seen_masks = {mask_of(c) for c in split.get("train", []) + split.get("val", [])}
    sets = settings if settings else [[]]
    configs = swept_configs(bundle.config, sets)
    per_set: list[list[dict]] = [[] for _ in sets]
    founds: list[list[dict]] = [[] for _ in sets]  # kidneys_found() per case and set, for the summary
    for i, (case_id, ct, truth, *drawn) in enumerate(cases):
        progress(i / max(1, n_cases or (i + 1)), f"evaluating {case_id}")
        seen = mask_of(case_id) in seen_masks
        with pipe.segmenter_outputs_reused():
            for config, rows, found in zip(configs, per_set, founds):
                pipe.config = config
                t0 = time.perf_counter()
                result = pipe.run(ct)
                row, kidneys = _scored(case_id, result, truth, time.perf_counter() - t0, seen,
                                       drawn[0] if drawn else None)
                rows.append(row)
                found.append(kidneys)
    pipe.config = bundle.config
    progress(1.0, "evaluation done")
    head = {
        **bundle.identity(),
        "config": bundle.config.to_dict() if isinstance(bundle.config, ModelConfig) else None,
        "device": str(pipe.device),
    }
    if not settings:
        return {**head, **_summary(per_set[0], founds[0])}
    return {**head, "sweep": [{"settings": items, **_summary(rows, found)}
                              for items, rows, found in zip(sets, per_set, founds)]}


def swept_configs(config: ModelConfig, sets: list[list[str]]) -> list[ModelConfig]:
    """One configuration per set of ``PART.KEY=VALUE`` settings; ValueError for a setting that is
    not an inference setting or that changes the segmenter's outputs (they are reused in a sweep)."""
    from ..config import REUSABLE_SEGMENTER_SETTINGS, with_settings

    configs = [with_settings(config, items) for items in sets]  # not a setting at all: said first
    for items in sets:
        for item in items:
            if item.partition("=")[0].partition(".")[2] not in REUSABLE_SEGMENTER_SETTINGS:
                raise ValueError(f"{item!r}: only settings that leave the segmenter's outputs unchanged "
                                 f"can be swept ({', '.join(sorted(REUSABLE_SEGMENTER_SETTINGS))})")
    return configs


def _scored(case_id: str, result, truth: Volume, seconds: float, seen: bool, drawn: dict | None) -> tuple[dict, dict]:
    """One case's row of the report (the result against the truth on the truth's grid), and its
    ``kidneys_found`` counts for the summary."""
    scores = segmentation_dice(result.labels.array, truth.array)
    false = false_tumour(result.labels.array, truth.array, truth.voxel_volume_ml)
    no_kidney = false_kidney(result.labels.array, truth.array, truth.voxel_volume_ml)
    found = kidneys_found(result.labels.array > 0, truth.array > 0)
    lesions = tumours_found(result.labels.array == 2, truth.array == 2, truth.voxel_volume_ml)
    return {
        "case": case_id,
        "kidney_dice": round(scores["kidney"], 4),
        "tumour_dice": round(scores["tumour"], 4),
        "kidneys_found": f"{found['found']} of {found['true_kidneys']}",
        "truth_tumour_ml": round(float((truth.array == 2).sum()) * truth.voxel_volume_ml, 2),
        "predicted_tumour_ml": round(float((result.labels.array == 2).sum()) * truth.voxel_volume_ml, 2),
        "tumours_found": lesions,
        "false_tumour_components": false["components"],
        "false_tumour_ml": round(false["ml"], 2),
        "false_kidney_ml": round(no_kidney["ml"], 2),
        "seconds": round(seconds, 2),
        "seen_in_training": seen,
        "contrast_detected": (result.report.get("contrast") or {}).get("phase"),
        "regions_at_edge": result.report.get("regions_at_edge", []),
        **({"phantom": _rounded(drawn)} if drawn else {}),
    }, found


def _summary(per_case: list[dict], founds: list[dict]) -> dict:
    """Per-case rows and their summary: Dice statistics, lesions found, false tumour, kidneys found
    (``founds``: each case's ``kidneys_found()``)."""
    kidney = [c["kidney_dice"] for c in per_case]
    tumour = [c["tumour_dice"] for c in per_case if c["truth_tumour_ml"] > 0]
    return {
        "cases": per_case,
        "kidney_dice": _stats(kidney),
        "tumour_dice": _stats(tumour),
        **_tumour_dice_by_type(per_case),
        **_phase_agreement(per_case),
        "tumours_found": tumours_found_by_size([d for c in per_case for d in c["tumours_found"]]),
        "false_tumour": {
            "cases_with_any": sum(1 for c in per_case if c["false_tumour_components"]),
            "components": sum(c["false_tumour_components"] for c in per_case),
            "ml_total": round(sum(c["false_tumour_ml"] for c in per_case), 2),
        },
        "false_kidney": {
            "cases_with_any": sum(1 for c in per_case if c["false_kidney_ml"] > 0),
            "ml_total": round(sum(c["false_kidney_ml"] for c in per_case), 2),
        },
        "kidneys_found": f"{sum(f['found'] for f in founds)} of {sum(f['true_kidneys'] for f in founds)}",
        "note": "tumour Dice summarised over cases whose truth has a tumour; a kidney is found when "
                "the prediction covers at least 30 % of it",
        "any_seen_in_training": any(c["seen_in_training"] for c in per_case),
    }


def is_finite_report(report: dict) -> bool:
    vals = [c["kidney_dice"] for c in report["cases"]] + [c["tumour_dice"] for c in report["cases"]]
    return all(math.isfinite(v) for v in vals)
