"""Shared fixtures: small threads for torch, the KiTS19 label folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KITS19 = Path(os.environ.get("KITS19_DIR", REPO.parent / "shared" / "data" / "kits19"))


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


@pytest.fixture(scope="session")
def kits19_dir() -> Path:
    """The shared KiTS19 label folder; tests needing it skip where it is absent."""
    if not (KITS19 / "case_00000" / "segmentation.nii.gz").exists():
        pytest.skip("../shared/data/kits19 is not present")
    return KITS19


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
