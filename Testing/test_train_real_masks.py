"""scripts/train_real.py's extra small-tumour masks: drawn from the tuning pool, never from its
tuning set nor from masks a round already trained on, and only tumours up to the size asked for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import train_real  # noqa: E402


def _pool(tmp_path: Path, trained_on=None) -> Path:
    masks = [f"case_{i:05d}" for i in range(40)]
    tumour_ml = {m: (5.0 if i % 2 else 80.0) for i, m in enumerate(masks)}  # odd ones small
    tumour_ml["case_00001"] = 0.0  # no tumour: never a small-tumour mask
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"masks": masks, "tumour_ml": tumour_ml, "trained_on": trained_on or {}}))
    return path


def test_small_tumour_masks_keep_out_the_tuning_set_and_large_tumours(tmp_path):
    pool = _pool(tmp_path)
    drawn = train_real.small_tumour_masks(12, 25.0, {"case_00003"}, np.random.default_rng(0), pool)
    tuning = set(train_real.tuning_set(json.loads(pool.read_text())))
    assert tuning == {"case_00005", "case_00015", "case_00025", "case_00035"}
    assert len(drawn) == len(set(drawn)) == 12
    assert not set(drawn) & (tuning | {"case_00003", "case_00001"})
    assert all(int(m[5:]) % 2 for m in drawn)  # only the small ones


def test_masks_a_round_trained_on_are_not_drawn_again(tmp_path):
    pool = _pool(tmp_path, {"round 8": ["case_00007", "case_00009"]})
    drawn = train_real.small_tumour_masks(13, 25.0, set(), np.random.default_rng(1), pool)
    assert not {"case_00007", "case_00009"} & set(drawn)
    # 20 odd masks, less case_00001 (no tumour), 4 tuning, 2 trained on: 13 left, a 14th is refused
    with pytest.raises(SystemExit, match="only 13 pool masks"):
        train_real.small_tumour_masks(14, 25.0, set(), np.random.default_rng(1), pool)


def test_no_extra_masks_draws_nothing_from_the_generator(tmp_path):
    rng = np.random.default_rng(3)
    assert train_real.small_tumour_masks(0, 25.0, set(), rng, _pool(tmp_path)) == []
    assert rng.random() == np.random.default_rng(3).random()  # earlier recipes' draws stay as they were
