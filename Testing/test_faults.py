"""Faults and safety: broken weights, GPU memory, cancelling, failed writes, hostile paths and files.

Whatever goes wrong, the run ends in one sentence and a documented exit code, and nothing the user
already had is lost: outputs appear all together or not at all, an earlier output survives a failed
run, the input is never touched, loading weights never executes code, and no path from the user
ever passes through a shell.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from KidneyTumorSegLib import io as kio
from KidneyTumorSegLib.cli import main
from KidneyTumorSegLib.config import SegmenterConfig
from KidneyTumorSegLib.errors import Cancelled
from KidneyTumorSegLib.io import read_volume, write_volume
from KidneyTumorSegLib.networks import build_segmenter
from KidneyTumorSegLib.pipeline import Pipeline
from KidneyTumorSegLib.segfile import read_seg_nrrd
from KidneyTumorSegLib.weights import save_bundle

from .test_bad_input import assert_clean_error, run_cli, synthetic_ct
from .test_pipeline import body_ct, bundle_with_heads

REPO = Path(__file__).resolve().parents[1]


def digest(path: Path) -> tuple[str, int]:
    """Content hash and modification time (ns) of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def listing(folder: Path) -> list[str]:
    """Every name in a folder, hidden (temporary) files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    ct = synthetic_ct(shape_zyx=(16, 40, 44), spacing=(4.0, 4.0, 6.0))[0]
    write_volume(ct, d / "ct.nii.gz")
    b = bundle_with_heads(10, 10, 10, -10)
    save_bundle(d / "w.safetensors", b.config, b.state_dicts, provenance={"name": "heads"})
    b = bundle_with_heads(-10, -10, -10, -10)  # finds nothing: fast, for tests about writing
    save_bundle(d / "none.safetensors", b.config, b.state_dicts, provenance={"name": "none"})
    # A slower bundle and a bigger CT for cancelling: a 2 mm segmenter grid gives some 250 windows,
    # so a run is still segmenting (a second or more) when the signal sent after the first window
    # arrives, even on a loaded machine.
    slow = bundle_with_heads(10, 10, 10, -10)
    slow.config.segmenter = SegmenterConfig(width=8, depth=3, mrb_convs=2, spacing_mm=(2.0, 2.0, 2.0),
                                            patch_size_xyz=(32, 32, 20))
    torch.manual_seed(0)
    seg = build_segmenter(slow.config.segmenter).state_dict()
    seg["head.weight"] = torch.zeros_like(seg["head.weight"])
    seg["head.bias"] = torch.tensor([10.0, -10.0])
    slow.state_dicts["segmenter"] = seg
    save_bundle(d / "slow.safetensors", slow.config, slow.state_dicts, provenance={"name": "slow"})
    write_volume(synthetic_ct(shape_zyx=(24, 48, 52), spacing=(4.0, 4.0, 6.0))[0], d / "slow_ct.nii.gz")
    return d


def segment(ct, out: Path, weights, *extra) -> list[str]:
    return ["segment", str(ct), "-o", str(out / "seg.seg.nrrd"), "--labelmap", str(out / "labels.nii.gz"),
            "--report", str(out / "report.json"), "--weights", str(weights), "--device", "cpu",
            "--progress", "none", *map(str, extra)]


# --- weights: missing, truncated, tampered, incompatible, pickles --------------------------------
def _rewrite_header(src: Path, dst: Path, edit) -> Path:
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["kidney_tumor_seg"])
    header["__metadata__"]["kidney_tumor_seg"] = json.dumps(edit(meta))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return dst


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def _bad_weights(kind: str, good: Path, d: Path) -> Path:
    if kind == "missing":
        return d / "missing.safetensors"
    if kind == "truncated":
        (d / "cut.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return d / "cut.safetensors"
    if kind == "tampered":
        data = bytearray(good.read_bytes())
        data[-4] ^= 0xFF
        (d / "tampered.safetensors").write_bytes(bytes(data))
        return d / "tampered.safetensors"
    if kind == "incompatible version":
        return _rewrite_header(good, d / "v99.safetensors", lambda m: {**m, "format_version": 99})
    if kind == "pickle":
        (d / "evil.pt").write_bytes(pickle.dumps({"state": _Boom()}))
        return d / "evil.pt"
    if kind == "torch zip checkpoint":
        torch.save({"w": torch.zeros(3)}, d / "model.pt")
        return d / "model.pt"
    raise AssertionError(kind)


WEIGHT_FAULTS = {
    "missing": "does not exist",
    "truncated": "truncated",
    "tampered": "checksum",
    "incompatible version": "format version 99",
    "pickle": "not loaded",
    "torch zip checkpoint": "not loaded",
}


@pytest.mark.parametrize("kind", list(WEIGHT_FAULTS))
def test_weights_faults_exit_3_name_the_file_and_write_nothing(kind, case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = _bad_weights(kind, case / "w.safetensors", tmp_path)
    before = listing(tmp_path)
    code = main(segment(case / "ct.nii.gz", tmp_path / "out", bad))
    assert code == 3
    assert_clean_error(capsys.readouterr().err, WEIGHT_FAULTS[kind], bad)
    assert listing(tmp_path) == before and not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_planted_pickle_passed_to_the_real_process_runs_nothing(case, tmp_path):
    bad = _bad_weights("pickle", case / "w.safetensors", tmp_path)
    r = run_cli(*segment(case / "ct.nii.gz", tmp_path / "out", bad), cwd=tmp_path)
    assert r.returncode == 3
    assert_clean_error(r.stderr, "pickle", bad)
    assert listing(tmp_path) == ["evil.pt"]  # no PWNED_BY_PICKLE, no output


# --- CUDA out of memory: fall back to the CPU ---------------------------------------------------
class _Counting(torch.nn.Module):
    """Wraps a network and counts its calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


class _OutOfMemoryOnce(_Counting):
    """Wraps a network; its first call fails the way a full GPU does."""

    def forward(self, x):
        if self.calls == 0:
            self.calls += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def _pretend_cuda(monkeypatch) -> list:
    """Moving a tensor to "cuda" leaves it where it is (this machine may have no GPU) and is
    recorded in the returned list; everything else (autocast, the fallback) is the real code."""
    real_to = torch.Tensor.to
    sent_to_gpu = []

    def to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            sent_to_gpu.append(tuple(self.shape))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return sent_to_gpu


def test_cuda_out_of_memory_falls_back_to_the_cpu_with_a_warning(monkeypatch, caplog):
    ct = body_ct(spacing=(3.0, 3.0, 6.0), shape=(16, 40, 44))
    expected = Pipeline(bundle_with_heads(10, 10, 10, -10), device="cpu").run(ct)
    pipe = Pipeline(bundle_with_heads(10, 10, 10, -10), device="cpu")
    pipe.nets["segmenter"] = _OutOfMemoryOnce(pipe.nets["segmenter"])
    # The pipeline believes it runs on a GPU. This machine may have none, so moving a tensor to
    # "cuda" leaves it where it is; everything else (autocast, the fallback) is the real code.
    pipe.device = torch.device("cuda")
    sent_to_gpu = _pretend_cuda(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="KidneyTumorSeg"):
        result = pipe.run(ct)
    assert sent_to_gpu and pipe.device.type == "cpu" and result.report["device"] == "cpu"
    assert pipe.nets["segmenter"].calls > 1
    np.testing.assert_array_equal(result.labels.array, expected.labels.array)
    assert result.report["sides"] == expected.report["sides"]
    assert "GPU out of memory: the run continued on the CPU." in result.report["warnings"]
    assert "ran out of memory" in caplog.text


def test_after_a_run_that_ran_out_of_gpu_memory_the_next_run_uses_the_gpu_again(monkeypatch):
    ct = body_ct(spacing=(3.0, 3.0, 6.0), shape=(16, 40, 44))
    expected = Pipeline(bundle_with_heads(10, 10, 10, -10), device="cpu").run(ct)
    pipe = Pipeline(bundle_with_heads(10, 10, 10, -10), device="cpu")
    pipe.nets["segmenter"] = _OutOfMemoryOnce(pipe.nets["segmenter"])
    pipe.device = torch.device("cuda")  # as above: "cuda" tensors stay where they are
    sent_to_gpu = _pretend_cuda(monkeypatch)
    first = pipe.run(ct)
    assert first.report["device"] == "cpu" and "GPU out of memory: the run continued on the CPU." in first.report[
        "warnings"]
    sent_to_gpu.clear()
    second = pipe.run(ct)  # the GPU has room again: this run is not condemned to the CPU
    assert sent_to_gpu and pipe.device.type == "cuda" and second.report["device"] == "cuda"
    assert not any("GPU" in w for w in second.report["warnings"])
    np.testing.assert_array_equal(second.labels.array, expected.labels.array)


# --- cancelling ---------------------------------------------------------------------------------


def test_cancel_event_set_after_the_first_window_stops_the_run():
    pipe = Pipeline(bundle_with_heads(10, 10, 10, -10), device="cpu")
    counted = _Counting(pipe.nets["segmenter"])
    pipe.nets["segmenter"] = counted
    event = threading.Event()
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if message.startswith("Segmenting window"):
            event.set()

    with pytest.raises(Cancelled) as info:
        pipe.run(body_ct(), progress=progress, cancel=event)
    assert counted.calls == 1  # exactly one segmenter window ran
    assert sum(m.startswith("Segmenting window") for m in seen) == 1 and "Done" not in seen
    assert str(info.value) == "The segmentation was cancelled; nothing was written."


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "terminate"])
def test_interrupting_the_command_line_mid_run_exits_130_and_leaves_nothing(case, tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    args = segment(case / "slow_ct.nii.gz", out, case / "slow.safetensors", "--threads", "1")
    args[args.index("--progress") + 1] = "json"
    # A shell without job control starts background jobs with Ctrl-C ignored, and children inherit
    # that: give the command line the default disposition a terminal would, whatever runs the tests.
    proc = subprocess.Popen([sys.executable, "-m", "KidneyTumorSegLib", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(240, proc.kill)
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(json.loads(line))
            if lines[-1].get("message", "").startswith("Segmenting window"):
                proc.send_signal(sig)
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        watchdog.cancel()
    assert any(e.get("message", "").startswith("Segmenting window") for e in lines), "the run ended too soon"
    assert proc.returncode == 130
    assert err.strip() == "Cancelled; no output was written."  # one calm sentence, not an error
    last = json.loads(rest.splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 130
    assert listing(out) == []  # no output, no temporary file


# --- writes: atomic, all together, earlier outputs kept -----------------------------------------
def test_a_failed_write_leaves_the_earlier_file_intact(tmp_path, monkeypatch):
    target = write_volume(synthetic_ct(shape_zyx=(6, 16, 16))[0], tmp_path / "labels.nii.gz")
    before = digest(target)

    def failing(image, path, *args):
        Path(path).write_bytes(b"half a file")  # the writer got part-way
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", failing)
    with pytest.raises(RuntimeError):
        write_volume(synthetic_ct(shape_zyx=(6, 16, 16), seed=1)[0], target)
    assert digest(target) == before and listing(tmp_path) == ["labels.nii.gz"]


def test_outputs_written_together_land_together_or_not_at_all(tmp_path):
    first = write_volume(synthetic_ct(shape_zyx=(6, 16, 16))[0], tmp_path / "a.nii.gz")
    before = digest(first)
    with pytest.raises(KeyboardInterrupt), kio.outputs_together():
        write_volume(synthetic_ct(shape_zyx=(6, 16, 16), seed=1)[0], first)
        assert digest(first) == before  # written, but not in place until the group is done
        write_volume(synthetic_ct(shape_zyx=(6, 16, 16), seed=1)[0], tmp_path / "new" / "deeper" / "b.nii.gz")
        raise KeyboardInterrupt
    assert digest(first) == before and listing(tmp_path) == ["a.nii.gz"]  # no staged file, no new folder
    with kio.outputs_together():
        write_volume(synthetic_ct(shape_zyx=(6, 16, 16), seed=1)[0], first)
        write_volume(synthetic_ct(shape_zyx=(6, 16, 16), seed=1)[0], tmp_path / "new" / "b.nii.gz")
    assert digest(first) != before and listing(tmp_path) == ["a.nii.gz", "new"]
    assert listing(tmp_path / "new") == ["b.nii.gz"]


@pytest.fixture(scope="module")
def first_run(case):
    out = case / "first"
    assert main(segment(case / "ct.nii.gz", out, case / "none.safetensors")) == 0
    return out


@pytest.fixture()
def earlier_run(first_run, tmp_path):
    """Outputs of an earlier, successful run (copied with their times), with their hashes."""
    out = tmp_path / "out"
    out.mkdir()
    for name in listing(first_run):
        shutil.copy2(first_run / name, out / name)
    return out, {name: digest(out / name) for name in listing(out)}


@pytest.mark.parametrize("failure,code,phrase", [
    (OSError(errno.ENOSPC, "No space left on device", "labels.nii.gz"), 7, "No space left on device"),
    (KeyboardInterrupt(), 130, "Cancelled; no output was written."),
    (MemoryError(), 6, "ran out of memory"),
])
def test_a_run_failing_while_writing_keeps_the_earlier_outputs(case, earlier_run, monkeypatch, capsys,
                                                               failure, code, phrase):
    out, before = earlier_run
    assert set(before) == {"seg.seg.nrrd", "labels.nii.gz", "report.json"}
    capsys.readouterr()

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(kio, "write_volume", fail)  # the label map: written after the segmentation
    assert main(segment(case / "ct.nii.gz", out, case / "none.safetensors")) == code
    if code == 130:
        assert capsys.readouterr().err.strip() == phrase
    else:
        assert_clean_error(capsys.readouterr().err, phrase, warnings_before=True)
    assert {name: digest(out / name) for name in listing(out)} == before  # untouched, no leftovers


def test_unexpected_internal_error_is_one_sentence_exit_1(case, tmp_path, monkeypatch, capsys):
    def broken(self, volume, progress=None, cancel=None):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(Pipeline, "run", broken)
    monkeypatch.delenv("KIDNEY_TUMOR_SEG_DEBUG", raising=False)
    assert main(segment(case / "ct.nii.gz", tmp_path / "out", case / "w.safetensors")) == 1
    assert_clean_error(capsys.readouterr().err, "unexpected internal error stopped the run (TypeError)")
    assert not (tmp_path / "out").exists()


# --- safety: no shell, literal paths, input untouched, output never the input --------------------
def test_no_shell_anywhere_in_the_library_or_the_module():
    """Static check: no call that hands a string to a shell or unpickles a file.

    (``torch.load(..., weights_only=True)`` is allowed: it refuses anything but tensors.)
    """
    banned_calls = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
                    ("subprocess", "getstatusoutput"), ("pickle", "load"), ("pickle", "loads"),
                    ("torch", "load")}
    offenders = []
    files = sorted((REPO / "KidneyTumorSegLib").rglob("*.py")) + sorted((REPO / "KidneyTumorSeg").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in banned_calls:
                safe_torch_load = (f.value.id, f.attr) == ("torch", "load") and any(
                    kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                    for kw in node.keywords)
                if not safe_torch_load:
                    offenders.append(f"{path.name}:{node.lineno} {f.value.id}.{f.attr}")
            if isinstance(f, ast.Name) and f.id in ("system", "popen", "eval", "exec"):
                offenders.append(f"{path.name}:{node.lineno} {f.id}")
            starts_process = (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                              and f.value.id in ("subprocess", "asyncio")) or (
                isinstance(f, ast.Name) and f.id in ("run", "Popen", "call", "check_call", "check_output"))
            if isinstance(f, ast.Attribute) and f.attr == "create_subprocess_shell":
                offenders.append(f"{path.name}:{node.lineno} create_subprocess_shell")
            for kw in node.keywords:
                if starts_process and kw.arg == "shell" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    offenders.append(f"{path.name}:{node.lineno} shell=")
    assert offenders == []


def test_hostile_path_is_taken_literally_and_the_input_is_never_modified(case, tmp_path):
    weird = tmp_path / "scan 'one' \"two\"; $(touch PWNED) `touch PWNED2` & |x"
    weird.mkdir()
    ct = weird / "ct; rm -rf $(pwd) 'x'.nii.gz"
    ct.write_bytes((case / "ct.nii.gz").read_bytes())
    os.utime(ct, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = digest(ct)
    out = weird / "out $(id)"
    r = run_cli(*segment(ct, out, case / "w.safetensors"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert listing(out) == ["labels.nii.gz", "report.json", "seg.seg.nrrd"]
    assert digest(ct) == before  # same bytes, same modification time
    assert listing(weird) == sorted([ct.name, out.name])  # nothing written beside the input
    assert json.loads((out / "report.json").read_text())["input"]["path"] == str(ct)
    masks, grid = read_seg_nrrd(out / "seg.seg.nrrd")
    assert masks and grid.same_grid(read_volume(ct), tol=1e-4)
    found = [p for p in (tmp_path, weird, REPO, Path.cwd()) for n in ("PWNED", "PWNED2") if (p / n).exists()]
    assert found == [] and listing(tmp_path) == [weird.name]


@pytest.mark.parametrize("flag", ["-o", "--labelmap", "--report", "--snapshot"])
def test_an_output_equal_to_the_input_is_refused(case, tmp_path, flag, capsys, monkeypatch):
    ct = tmp_path / "ct.seg.nrrd"  # named so that it would be a valid segmentation output too
    ct.write_bytes((case / "ct.nii.gz").read_bytes())
    (tmp_path / "alias.seg.nrrd").symlink_to(ct)
    os.link(ct, tmp_path / "hardlink.seg.nrrd")
    before = digest(ct)
    monkeypatch.chdir(tmp_path)
    for spelling in ("./ct.seg.nrrd", str(ct), "alias.seg.nrrd", "hardlink.seg.nrrd", "sub/../ct.seg.nrrd"):
        args = ["segment", str(ct), "-o", str(tmp_path / "o.seg.nrrd"), "--weights", str(case / "w.safetensors"),
                "--device", "cpu", "--progress", "none"]
        if flag == "-o":
            args[args.index("-o") + 1] = spelling
        else:
            args += [flag, spelling]
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert main(args) == 2
        assert_clean_error(capsys.readouterr().err, "is the input itself")
    assert digest(ct) == before
    assert listing(tmp_path) == ["alias.seg.nrrd", "ct.seg.nrrd", "hardlink.seg.nrrd", "sub"]


@pytest.mark.parametrize("what,phrase", [
    ("the weights file", "is the weights file itself"),
    ("twice", "is given twice"),
    ("a fifo", "not a regular file"),
    ("a folder", "is a folder"),
    ("bad labelmap suffix", "must end in one of"),
])
def test_dangerous_or_impossible_outputs_are_refused_up_front(case, tmp_path, what, phrase, capsys):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes((case / "w.safetensors").read_bytes())
    before = digest(weights)
    out, extra = tmp_path / "o.seg.nrrd", []
    if what == "the weights file":
        extra = ["--report", str(weights)]
    elif what == "twice":
        extra = ["--report", str(tmp_path / "r.json"), "--snapshot", str(tmp_path / "r.json")]
    elif what == "a fifo":
        os.mkfifo(tmp_path / "pipe.json")
        extra = ["--report", str(tmp_path / "pipe.json")]
    elif what == "a folder":
        (tmp_path / "dir.seg.nrrd").mkdir()
        out = tmp_path / "dir.seg.nrrd"
    else:
        extra = ["--labelmap", str(tmp_path / "labels.txt")]
    names = listing(tmp_path)
    code = main(["segment", str(case / "ct.nii.gz"), "-o", str(out), "--weights", str(weights), "--device", "cpu",
                 "--progress", "none", *extra])
    assert code == 2
    assert_clean_error(capsys.readouterr().err, phrase)
    assert listing(tmp_path) == names and digest(weights) == before
