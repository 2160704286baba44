"""The tuning pool: KiTS masks that no network trained on and that are not held out, on which
inference and training choices may be tuned (``docs/evaluation/tuning_pool.json``).

One home for the pool's sets, so that a choice rule, a training recipe that must keep away from
them and the evaluation that measures a candidate all name the same masks, and for the one way
their per-dataset results are added up into the numbers a rule compares.
"""

from __future__ import annotations

import json
from pathlib import Path

KITS19_CASES = 210  # KiTS19's masks are case_00000-00209; the shared KiTS23 folder holds case_00210 on
IN_PLACE_N = 30  # every rule since 2026-12-01 19:25 took the tuning set's first 30 masks (14 KiTS19, 16 KiTS23)
LARGE_PER_DATASET = 6  # the large-tumour set: each dataset's 6 pool masks with the largest tumours
SETS = ("in_place", "displaced", "missing", "large", "cut_below", "cut_above")
DISPLACED_MM = "50,120"  # the displaced set: the in-place masks with one kidney moved this far caudally
# what each set adds to ``evaluate``'s painting (the missing set: the in-place masks, one kidney taken
# out; the cut sets: their field of view ending halfway down the kidneys, from above or below)
SET_OPTIONS = {"displaced": ["--displace-kidney", DISPLACED_MM], "missing": ["--remove-kidney"],
               "cut_below": ["--cut-field", "below"], "cut_above": ["--cut-field", "above"]}


def load_pool(path) -> dict:
    return json.loads(Path(path).read_text())


def tuning_set(pool: dict) -> list[str]:
    """Every 10th mask of the pool as first written, from its 6th: choices are made on these, so no
    training recipe may take them (all of them, including the two beyond ``IN_PLACE_N``)."""
    return pool["masks"][5::10]


def dataset_of(mask: str) -> str:
    return "kits19" if int(mask.split("_")[-1]) < KITS19_CASES else "kits23"


def by_dataset(masks) -> dict[str, list[str]]:
    """``masks`` split per dataset folder, in their order."""
    out: dict[str, list[str]] = {}
    for m in masks:
        out.setdefault(dataset_of(m), []).append(m)
    return out


def tuning_sets(pool: dict) -> dict[str, dict[str, list[str]]]:
    """The sets the choice rules measure, per dataset: ``in_place``, ``displaced`` and ``missing`` (the
    same masks, one kidney moved ``DISPLACED_MM`` or taken out), ``large`` (each dataset's largest
    pool tumours) and ``cut_below``, ``cut_above`` (the in-place masks in a field of view that ends
    halfway down the kidneys)."""
    in_place = by_dataset(tuning_set(pool)[:IN_PLACE_N])
    ml = pool["tumour_ml"]
    large = {ds: sorted(masks, key=lambda m: -ml[m])[:LARGE_PER_DATASET]
             for ds, masks in by_dataset(pool["masks"]).items()}
    return {"in_place": in_place, "displaced": in_place, "missing": in_place, "large": large,
            "cut_below": in_place, "cut_above": in_place}


def small_tumour_masks(n: int, max_ml: float, taken: set, rng, pool: dict) -> list[str]:
    """``n`` pool masks with a tumour of at most ``max_ml`` mL, drawn at random, never from the tuning
    set, from masks a round has since trained on (``trained_on``) nor among ``taken``: more small
    tumours to learn from, because the bundled segmenter misses most tumours of 10 mL or less."""
    if n <= 0:
        return []
    keep_out = set(tuning_set(pool)) | taken
    for masks in pool.get("trained_on", {}).values():
        keep_out |= set(masks)
    small = [c for c in pool["masks"] if c not in keep_out and 0 < pool["tumour_ml"][c] <= max_ml]
    if len(small) < n:
        raise SystemExit(f"only {len(small)} pool masks have a tumour of at most {max_ml} mL; asked for {n}.")
    return [small[i] for i in sorted(rng.permutation(len(small))[:n])]


def _of(text: str) -> tuple[int, int]:
    found, total = text.split(" of ")
    return int(found), int(total)


def combine(results: list[dict]) -> dict:
    """One row from ``evaluate`` results on parts of a set (one per dataset): means weighted by their
    cases, false tumour summed, tumours found per size bin and kidneys found added up."""
    row: dict = {"cases": sum(r["kidney_dice"]["n"] for r in results)}
    for key in ("kidney_dice", "tumour_dice"):
        n = sum(r[key]["n"] for r in results)
        row[key] = round(sum(r[key]["mean"] * r[key]["n"] for r in results) / n, 4) if n else None
    row["false_tumour_ml"] = round(sum(r["false_tumour"]["ml_total"] for r in results), 1)
    if all("false_kidney" in r for r in results):  # rows written before it was measured lack it
        row["false_kidney_ml"] = round(sum(r["false_kidney"]["ml_total"] for r in results), 1)
    bins: dict[str, list[int]] = {}
    for r in results:
        for size, text in r["tumours_found"].items():
            f, t = _of(text)
            acc = bins.setdefault(size, [0, 0])
            acc[0] += f
            acc[1] += t
    row["tumours_found"] = {size: f"{f} of {t}" for size, (f, t) in bins.items()}
    kid = [_of(r["kidneys_found"]) for r in results]
    row["kidneys_found"] = f"{sum(f for f, _ in kid)} of {sum(t for _, t in kid)}"
    return row


def read_row(source, root: Path) -> dict:
    """One ``evaluate`` result named by a summary's ``from``: a result file's path, or
    ``{"file": ..., "settings": [...]}`` for one row of an ``evaluate --sweep`` file, so a summary
    can point at the sweep that measured it instead of a copy of its row."""
    if isinstance(source, str):
        return json.loads((root / source).read_text())
    rows = [r for r in json.loads((root / source["file"]).read_text())["sweep"]
            if r["settings"] == source["settings"]]
    if len(rows) != 1:
        raise ValueError(f"{source['file']} has {len(rows)} rows with settings {source['settings']}")
    return rows[0]


def compare(old: dict, new: dict) -> list[str]:
    """Lines saying how each number of a combined row moved from ``old`` to ``new``."""
    lines = []
    for key in ("kidney_dice", "tumour_dice", "false_tumour_ml", "false_kidney_ml"):
        a, b = old.get(key), new.get(key)
        if a is not None and b is not None:
            lines.append(f"{key}: {a} -> {b} ({b - a:+.4g})")
    for size in new.get("tumours_found", {}):
        lines.append(f"tumours {size} found: {old.get('tumours_found', {}).get(size)} -> {new['tumours_found'][size]}")
    lines.append(f"kidneys found: {old.get('kidneys_found')} -> {new.get('kidneys_found')}")
    return lines

