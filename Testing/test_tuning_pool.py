"""The tuning pool's sets and sums (KidneyTumorSegLib.training.tuning_pool): train_real.py's extra
small-tumour masks never come from the tuning set nor from masks a round already trained on; the sets
the choice rules measured are the ones the pool file gives; per-dataset results add up right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.training import tuning_pool

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "docs" / "evaluation" / "tuning_pool.json"


def _pool(trained_on=None) -> dict:
    masks = [f"case_{i:05d}" for i in range(40)]
    tumour_ml = {m: (5.0 if i % 2 else 80.0) for i, m in enumerate(masks)}  # odd ones small
    tumour_ml["case_00001"] = 0.0  # no tumour: never a small-tumour mask
    return {"masks": masks, "tumour_ml": tumour_ml, "trained_on": trained_on or {}}


def test_small_tumour_masks_keep_out_the_tuning_set_and_large_tumours():
    pool = _pool()
    drawn = tuning_pool.small_tumour_masks(12, 25.0, {"case_00003"}, np.random.default_rng(0), pool)
    tuning = set(tuning_pool.tuning_set(pool))
    assert tuning == {"case_00005", "case_00015", "case_00025", "case_00035"}
    assert len(drawn) == len(set(drawn)) == 12
    assert not set(drawn) & (tuning | {"case_00003", "case_00001"})
    assert all(int(m[5:]) % 2 for m in drawn)  # only the small ones


def test_masks_a_round_trained_on_are_not_drawn_again():
    pool = _pool({"round 8": ["case_00007", "case_00009"]})
    drawn = tuning_pool.small_tumour_masks(13, 25.0, set(), np.random.default_rng(1), pool)
    assert not {"case_00007", "case_00009"} & set(drawn)
    # 20 odd masks, less case_00001 (no tumour), 4 tuning, 2 trained on: 13 left, a 14th is refused
    with pytest.raises(SystemExit, match="only 13 pool masks"):
        tuning_pool.small_tumour_masks(14, 25.0, set(), np.random.default_rng(1), pool)


def test_no_extra_masks_draws_nothing_from_the_generator():
    rng = np.random.default_rng(3)
    assert tuning_pool.small_tumour_masks(0, 25.0, set(), rng, _pool()) == []
    assert rng.random() == np.random.default_rng(3).random()  # earlier recipes' draws stay as they were


def _measured_masks(name: str) -> list[str]:
    """The masks, in order (the order picks each mask's body), of a row a choice rule compared against."""
    rows = json.loads((REPO / "docs" / "evaluation" / "context_scale" / name).read_text())["cases"]
    return [r["case"].split("@")[1] for r in rows]


@pytest.mark.skipif(not POOL.exists(), reason="the tuning pool file is not in this checkout")
def test_the_sets_are_the_masks_the_choice_rules_measured():
    sets = tuning_pool.tuning_sets(tuning_pool.load_pool(POOL))
    for ds in ("kits19", "kits23"):
        assert sets["in_place"][ds] == _measured_masks(f"tune_g300_{ds}.json")
        assert sets["displaced"][ds] == _measured_masks(f"tune_g300_displaced_{ds}.json")
        assert sets["large"][ds] == _measured_masks(f"large_g300_{ds}.json")
        assert sets["missing"][ds] == sets["in_place"][ds]
    assert sum(len(m) for m in sets["in_place"].values()) == 30


def _result(n, kidney, tumour, false_ml, small, kidneys):
    return {"kidney_dice": {"n": n, "mean": kidney}, "tumour_dice": {"n": n, "mean": tumour},
            "false_tumour": {"ml_total": false_ml}, "tumours_found": {"<= 10 mL": small},
            "kidneys_found": kidneys}


def test_combine_weights_means_by_cases_and_adds_counts():
    row = tuning_pool.combine([_result(1, 0.9, 0.0, 10.0, "0 of 1", "2 of 2"),
                               _result(3, 0.5, 0.8, 2.5, "2 of 3", "5 of 6")])
    assert row == {"cases": 4, "kidney_dice": 0.6, "tumour_dice": 0.6, "false_tumour_ml": 12.5,
                   "tumours_found": {"<= 10 mL": "2 of 4"}, "kidneys_found": "7 of 8"}
    lines = tuning_pool.compare(row, {**row, "tumour_dice": 0.65, "tumours_found": {"<= 10 mL": "3 of 4"}})
    assert "tumour_dice: 0.6 -> 0.65 (+0.05)" in lines
    assert "tumours <= 10 mL found: 2 of 4 -> 3 of 4" in lines


@pytest.mark.parametrize("version, sets", [("v1.4", tuning_pool.SETS),
                                           ("v1.5", ("in_place", "displaced", "cut_below", "cut_above")),
                                           ("v1.6", tuning_pool.SETS)])
def test_a_bundles_tuning_summary_is_the_sum_of_its_rows(version, sets):
    """The summaries the choice rules compare against are what their per-dataset rows add up to:
    v1.4's and v1.6's on every set (v1.6's from rows of sweep files), v1.5's on the sets it was
    measured on."""
    path = REPO / "docs" / "evaluation" / version / "tuning_summary.json"
    summary = json.loads(path.read_text())
    assert set(summary["from"]) == set(sets)
    for name in sets:
        rows = [tuning_pool.read_row(f, REPO) for f in summary["from"][name]]
        assert tuning_pool.combine(rows) == summary[name]


def test_read_row_picks_the_sweep_row_with_those_settings(tmp_path):
    sweep = {"sweep": [{"settings": ["a=1"], "kidney_dice": 0.1}, {"settings": ["a=2"], "kidney_dice": 0.2},
                       {"settings": ["a=2"], "kidney_dice": 0.3}]}
    (tmp_path / "s.json").write_text(json.dumps(sweep))
    (tmp_path / "r.json").write_text(json.dumps({"kidney_dice": 0.4}))
    assert tuning_pool.read_row({"file": "s.json", "settings": ["a=1"]}, tmp_path)["kidney_dice"] == 0.1
    assert tuning_pool.read_row("r.json", tmp_path)["kidney_dice"] == 0.4
    with pytest.raises(ValueError, match="2 rows"):  # two rows with one name: no silent first pick
        tuning_pool.read_row({"file": "s.json", "settings": ["a=2"]}, tmp_path)
    with pytest.raises(ValueError, match="0 rows"):
        tuning_pool.read_row({"file": "s.json", "settings": ["a=3"]}, tmp_path)


def test_the_empty_fossa_gates_read_as_the_rule_says():
    """one_per_side_rule.json's gates on the pool, read from the sweeps they were measured with: A
    (v1.6) against v1.5 on the large and cut sets (kidney Dice within its allowance, no kidney lost)."""
    rows = json.loads((REPO / "docs" / "evaluation" / "empty_fossa" / "sweep_summary.json").read_text())
    for name, kidney_drop in (("large", 0.01), ("cut_below", 0.005), ("cut_above", 0.005)):
        old, new = rows[name]["v1.5"], rows[name]["A"]
        assert new["kidney_dice"] >= old["kidney_dice"] - kidney_drop
        assert tuning_pool._of(new["kidneys_found"])[0] >= tuning_pool._of(old["kidneys_found"])[0]
    assert rows["large"]["A"]["tumour_dice"] >= rows["large"]["v1.5"]["tumour_dice"] - 0.02
