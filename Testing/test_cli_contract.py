"""What the command line promises a reader: reproducible files, exit codes that mean what the
README says, one sentence per situation, and help screens that show every option and its default."""

from __future__ import annotations

import argparse
import hashlib

import numpy as np
import pytest

from KidneyTumorSegLib.cli import build_parser, main
from KidneyTumorSegLib.io import write_volume
from KidneyTumorSegLib.weights import save_bundle

from .test_pipeline import body_ct, bundle_with_heads


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    ct = body_ct(shape=(16, 40, 44), spacing=(3.0, 3.0, 6.0))
    write_volume(ct.with_array(np.round(ct.array).astype(np.int16)), d / "ct.nii.gz")
    for name, heads in (("kidney", (10, 10, 10, -10)), ("none", (-10, -10, -10, -10))):
        b = bundle_with_heads(*heads)
        save_bundle(d / f"{name}.safetensors", b.config, b.state_dicts, provenance={"name": name})
    return d


def _segment(case, *extra, weights="kidney"):
    return main(["segment", str(case / "ct.nii.gz"), "--weights", str(case / f"{weights}.safetensors"),
                 "--device", "cpu", "--progress", "none", *map(str, extra)])


def _one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("."), err
    assert "Traceback" not in err
    return lines[0]


def test_the_same_result_gives_the_same_bytes(case, tmp_path, capsys):
    digests = []
    for run in ("first", "second"):
        out = tmp_path / run
        assert _segment(case, "-o", out / "s.seg.nrrd", "--labelmap", out / "l.nii.gz") == 0
        digests.append([hashlib.sha256((out / n).read_bytes()).hexdigest() for n in ("s.seg.nrrd", "l.nii.gz")])
    assert digests[0] == digests[1]


@pytest.mark.parametrize("value", ["0", "-3", "two", "1.5"])
def test_threads_must_be_a_positive_whole_number(case, tmp_path, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _segment(case, "-o", tmp_path / "s.seg.nrrd", "--threads", value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--threads: must be a whole number of at least 1" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_file_is_a_write_failure_exit_7(case, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    assert _segment(case, "-o", tmp_path / "s.seg.nrrd", "--report", tmp_path / "a_file" / "r.json") == 7
    assert "a_file is a file, not a folder" in _one_error(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_snapshot_suffix_without_a_format_is_refused_before_any_work(case, tmp_path, capsys):
    assert _segment(case, "-o", tmp_path / "s.seg.nrrd", "--snapshot", tmp_path / "s.gif") == 2
    assert "s.gif must end in one of .png, .jpg" in _one_error(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []
    assert _segment(case, "-o", tmp_path / "s.seg.nrrd", "--snapshot", tmp_path / "s.jpg") == 0
    assert (tmp_path / "s.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_a_memory_limit_the_user_set_is_named_as_the_cause(case, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KIDNEY_TUMOR_SEG_MEMORY_LIMIT", "200M")
    assert _segment(case, "-o", tmp_path / "s.seg.nrrd") == 6
    message = _one_error(capsys.readouterr().err)
    assert "KIDNEY_TUMOR_SEG_MEMORY_LIMIT=200M limits this program to 0.2 GB" in message
    assert "this computer has" not in message


def test_no_kidney_is_said_once(case, tmp_path, capsys):
    assert _segment(case, "-o", tmp_path / "s.seg.nrrd", weights="none") == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert text.count("No kidney") == 1 and "No kidney was found in this scan; the result is empty." in text


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_explains_every_option_and_shows_its_default(command):
    sub = _commands()[command]
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        if action.default not in (None, False, [], argparse.SUPPRESS):
            shown = f"(default: {action.default})"
            assert shown in text or "default" in action.help.lower(), f"{command} {action.option_strings[0]}"


def test_help_lists_the_batch_and_series_options_and_the_exit_codes():
    commands = _commands()
    segment = " ".join(commands["segment"].format_help().split())
    assert "--series UID|N" in segment and "--list-series" in segment and "130 cancelled" in segment
    batch = " ".join(commands["batch"].format_help().split())
    for needle in ("--out-dir", "--skip-existing", "summary.csv", "8 finished but at least one case failed"):
        assert needle in batch


def test_evaluate_defaults_to_the_bundled_weights():
    args = build_parser().parse_args(["evaluate", "--procedural", "1"])
    assert args.weights is None  # load_bundle(None) is the bundled weights
    assert "default: the bundled weights" in " ".join(_commands()["evaluate"].format_help().split())


def test_the_readme_documents_batch_series_and_install_with_options_that_exist():
    import re

    from .conftest import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for needle in ("kidney-tumor-seg batch", "--series", "--list-series", "--skip-existing", "summary.csv",
                   "pip wheel", "--index-url https://download.pytorch.org/whl/cpu", "demo_truth.nii.gz",
                   "| 8 |", "SLURM_ARRAY_TASK_ID"):
        assert needle in readme, needle
    commands = _commands()
    for line in readme.splitlines():
        m = re.search(r"kidney-tumor-seg (segment|batch|evaluate|train|demo)\b(.*)", line)
        if not m:
            continue
        known = {s for a in commands[m.group(1)]._actions for s in a.option_strings}
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", m.group(2)):
            assert option in known, f"README: {m.group(1)} has no {option}: {line.strip()}"
