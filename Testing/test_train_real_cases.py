"""scripts/train_real.py's extra cases with one kidney changed (--displaced, --missing): ids of their
own, masks reused from the training and validation lists, and --displaced's pairs as they always were
(so its cached cases stay valid)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import train_real  # noqa: E402


def test_changed_kidney_cases_get_their_own_ids_and_reuse_the_split_masks():
    masks = {"a": "A.nii.gz", "b": "B.nii.gz", "v": "V.nii.gz"}
    shared = ["s0001", "s0004", "s0006", "btcv_1"]
    pairs = train_real.changed_kidney_pairs("disp", 3, 2, ["a", "b"], ["v"], shared, masks, 3)
    # --displaced's pairs before this helper existed: training body shared[(i + 3) % n], validation (i + 5) % n
    assert pairs == [("btcv_1", "disp0"), ("s0001", "disp1"), ("s0004", "disp2"),
                     ("s0004", "dispval0"), ("s0006", "dispval1")]
    assert [masks[f"disp{i}"] for i in range(3)] == ["A.nii.gz", "B.nii.gz", "A.nii.gz"]
    assert masks["dispval0"] == masks["dispval1"] == "V.nii.gz"  # validation cases only from validation masks
    missing = train_real.changed_kidney_pairs("miss", 1, 1, ["a", "b"], ["v"], shared, masks, 4)
    assert missing == [("s0001", "miss0"), ("s0006", "missval0")]
    assert {"disp0", "miss0", "missval0"} <= set(masks) and masks["a"] == "A.nii.gz"  # nothing overwritten
