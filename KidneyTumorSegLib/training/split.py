"""Case ids of training and the case-level train/validation split.

Several phantom ``variants`` of one mask (different seeds) are ``case``, ``case~v1``, ``case~v2``...
and share one split group, so no validation case is a variant of a training case.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..kits import split_cases

VARIANT_SEP = "~v"


def split_group(case_id: str) -> str:
    """The case a variant belongs to: the unit of the train/validation split."""
    return case_id.split(VARIANT_SEP)[0]


def variant_of(case_id: str) -> tuple[str, int]:
    """``case~v3`` -> (``case``, 3); ``case`` -> (``case``, 0)."""
    base, _, variant = case_id.partition(VARIANT_SEP)
    return base, int(variant or 0)


def with_variants(base_ids: Iterable[str], variants: int) -> list[str]:
    """Each id followed by the ids of its other phantom variants (``case~v1``, ...)."""
    return [f"{b}{VARIANT_SEP}{v}" if v else b for b in base_ids for v in range(max(1, int(variants)))]


def held_out_ids(case_ids: Iterable[str]) -> list[str]:
    """The masks every training recipe here holds out and only evaluation may use: every 7th of
    the sorted ids from the 4th (case_00003, case_00010, ... in KiTS19)."""
    return [c for i, c in enumerate(sorted(case_ids)) if i % 7 == 3]


def split_ids(case_ids: list[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Case-level split: the variants of one case always fall on the same side.

    Uses ``kits.split_cases`` on the groups, the project's one split rule.
    """
    groups = sorted({split_group(c) for c in case_ids})
    train_g, val_g = split_cases(groups, val_fraction=val_fraction, seed=seed)
    train_set, val_set = set(train_g), set(val_g)
    return [c for c in case_ids if split_group(c) in train_set], [c for c in case_ids if split_group(c) in val_set]
