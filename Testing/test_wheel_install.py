"""A non-editable install (a built wheel) carries every module, the bundled weights and the model card,
and segments a scan from outside the source tree.

The wheel is built from a copy of the sources (nothing is written into the checkout) with the
setuptools already installed, and installed with ``pip --target`` into a folder that is put first on
``PYTHONPATH``, so the process imports the installed copy, not the checkout. CI's ``.ci/run`` also
installs the wheel into a fresh virtual environment and runs the demo with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.io import write_volume

from .test_pipeline import body_ct

REPO = Path(__file__).resolve().parents[1]


def _pip(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pip", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("KidneyTumorSegLib", "Resources"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    r = _pip("wheel", "--no-deps", "--no-build-isolation", "-w", out, src)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_the_wheel_carries_every_module_and_the_bundled_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "KidneyTumorSegLib").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules and modules <= names, sorted(modules - names)
    models = [p.name for p in (REPO / "Resources" / "Models").iterdir() if p.is_file()]
    assert "MODEL_CARD.md" in models and any(m.endswith(".safetensors") for m in models)
    assert {f"KidneyTumorSegLib/models/{m}" for m in models} <= names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "Requires-Python: >=3.9" in metadata
    for test_only in ("pytest", "slicer-core", "ruff", "vtk"):  # the engine needs none of them
        assert not [ln for ln in metadata.splitlines()
                    if ln.startswith(f"Requires-Dist: {test_only}") and "extra ==" not in ln]


def test_the_installed_wheel_finds_its_weights_and_segments_a_scan(wheel, tmp_path):
    target = tmp_path / "site"
    r = _pip("install", "--no-deps", "--target", target, wheel)
    assert r.returncode == 0, r.stdout + r.stderr
    work = tmp_path / "work"  # outside the checkout: nothing there to fall back on
    work.mkdir()
    ct = body_ct()
    write_volume(ct.with_array(np.round(ct.array).astype(np.int16)), work / "ct.nii.gz")
    env = {k: v for k, v in os.environ.items() if k != "KIDNEY_TUMOR_SEG_WEIGHTS"}
    env["PYTHONPATH"] = str(target)
    where = subprocess.run(
        [sys.executable, "-c", "import KidneyTumorSegLib.weights as w; "
         "print(w.__file__); print(w.bundled_weights_path()); print(w.model_card_path())"],
        capture_output=True, text=True, cwd=work, env=env, timeout=120,
    )
    assert where.returncode == 0, where.stderr
    module, weights, card = (Path(line) for line in where.stdout.split())
    for path in (module, weights, card):
        assert target.resolve() in path.resolve().parents, path
    r = subprocess.run(
        [sys.executable, "-m", "KidneyTumorSegLib", "segment", "ct.nii.gz", "-o", "out.seg.nrrd", "--report",
         "out.json", "--device", "cpu", "--threads", "1", "--progress", "none"],
        capture_output=True, text=True, cwd=work, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((work / "out.json").read_text())
    assert "kidney_found" in report and (work / "out.seg.nrrd").stat().st_size > 0
