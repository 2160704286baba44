"""The library and the Slicer module run on Python 3.9, the Python that Slicer 5.6 and 5.8 embed.

``vermin`` (a maintained checker of minimum Python versions) reads every file. Annotations are
strings under ``from __future__ import annotations``, so ``X | None`` there is fine on 3.9; files
without that import must not use it in annotations.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("KidneyTumorSegLib", "KidneyTumorSeg")


def _vermin() -> str:
    found = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
    if not Path(found).exists():
        pytest.skip("vermin is not installed (pip install -e '.[test]')")
    return found


def _check(*args) -> subprocess.CompletedProcess:
    return subprocess.run([_vermin(), "-t=3.9-", "--violations", "--no-tips", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_library_and_module_need_nothing_newer_than_python_3_9():
    r = _check(*FOLDERS)
    assert r.returncode == 0, r.stdout + r.stderr


def _annotations(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.returns
            yield from (a.annotation for a in ast.walk(node.args) if isinstance(a, ast.arg))
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def test_files_without_postponed_annotations_use_no_union_annotations():
    """Without ``from __future__ import annotations``, 3.9 evaluates ``X | None`` at import and fails
    (Slicer's parameter node wrapper also evaluates the module's annotations)."""
    offenders = []
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "from __future__ import annotations" in text:
                continue
            for ann in _annotations(ast.parse(text)):
                if ann is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                           for n in ast.walk(ann)):
                    offenders.append(f"{path.relative_to(REPO)}:{ann.lineno}")
    assert not offenders, offenders


def test_the_checker_catches_what_python_3_9_lacks(tmp_path):
    """The check can fail: a 3.10-only call is reported."""
    bad = tmp_path / "new.py"
    bad.write_text("pairs = list(zip([1], [2], strict=True))\n")
    r = _check(bad)
    assert r.returncode != 0 and "zip(strict)" in r.stdout
