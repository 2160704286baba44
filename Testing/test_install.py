"""The background installer of the engine's packages: the plan, pip's lines, real child processes."""

from __future__ import annotations

import sys
import textwrap
import time

from KidneyTumorSegLib.mrml.install import (
    BackgroundInstall,
    InstallStep,
    describe_plan,
    install_plan,
    parse_pip_line,
    pip_supports_raw_progress,
)


def test_pip_lines_say_what_is_downloaded_and_how_far():
    assert parse_pip_line("Collecting torch>=2.1") == {"kind": "collecting", "text": "torch>=2.1"}
    assert parse_pip_line("  Downloading torch-2.5.1-cp39-cp39-win_amd64.whl (203.1 MB)") == {
        "kind": "downloading", "file": "torch-2.5.1-cp39-cp39-win_amd64.whl", "size": "203.1 MB"}
    old = parse_pip_line("  Downloading https://files.example/packages/ab/scipy-1.13.1-cp39.whl (38.6 MB)")
    assert old == {"kind": "downloading", "file": "scipy-1.13.1-cp39.whl", "size": "38.6 MB"}
    assert parse_pip_line("Progress 10240 of 8239447") == {"kind": "progress", "done": 10240, "total": 8239447}
    assert parse_pip_line("Successfully installed torch-2.5.1")["kind"] == "installed"
    assert parse_pip_line("ERROR: No matching distribution found for torch>=2.1") == {
        "kind": "error", "text": "No matching distribution found for torch>=2.1"}
    assert parse_pip_line("   ---------------------------------------- 8.2/8.2 MB") is None


def test_the_plan_uses_light_the_torch_when_the_pytorch_extension_is_there():
    assert pip_supports_raw_progress("24.1") and pip_supports_raw_progress("25.0.1")
    assert not pip_supports_raw_progress("23.2.1") and not pip_supports_raw_progress(None)

    plain = install_plan(["torch", "scipy", "safetensors"], pip_version="23.2.1")
    assert [s.args for s in plain] == [["-m", "pip", "install", "torch>=2.1"],
                                       ["-m", "pip", "install", "scipy", "safetensors>=0.4"]]
    ext = install_plan(["torch"], pytorch_extension=True, light_the_torch=False, pip_version="24.2")
    assert [s.args[:3] for s in ext] == [["-m", "pip", "install"], ["-m", "light_the_torch", "install"]]
    assert all(s.args[-2:] == ["--progress-bar", "raw"] for s in ext)
    assert [s.args[1] for s in install_plan(["torch"], pytorch_extension=True, light_the_torch=True)] == [
        "light_the_torch"]
    assert install_plan(["scipy"])[0].packages == ["scipy"]
    text = describe_plan(plain)
    assert "PyTorch" in text and "2.5 GB" in text and "SciPy" in text and len(text.splitlines()) == 3


PIP_LIKE = textwrap.dedent(
    """
    import sys, time
    name, size = sys.argv[1], int(sys.argv[2])
    print(f"Collecting {name}", flush=True)
    print(f"  Downloading {name}-1.0-py3-none-any.whl ({size / 1e6:.1f} MB)", flush=True)
    for done in (0, size // 2, size):
        print(f"Progress {done} of {size}", flush=True)
    print(f"Installing collected packages: {name}", flush=True)
    if name == "broken":
        print("ERROR: Could not install packages due to an OSError: disk full", flush=True)
        sys.exit(1)
    if name == "slow":
        time.sleep(600)
    print(f"Successfully installed {name}-1.0", flush=True)
    """
)


def _step(name, size=4_000_000):
    return InstallStep(name, ["-c", PIP_LIKE, name, str(size)], [name])


def test_steps_run_one_after_the_other_with_progress_from_pip():
    job = BackgroundInstall([_step("alpha"), _step("beta", 8_000_000)], python=sys.executable).start()
    seen = []
    while job.poll() == "running":
        seen.append((round(job.fraction, 3), job.message))
        time.sleep(0.01)
    assert job.state == "done" and job.fraction == 1.0
    assert job.downloads == [("alpha-1.0-py3-none-any.whl", "4.0 MB"), ("beta-1.0-py3-none-any.whl", "8.0 MB")]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and max(fractions) < 1.0
    log = list(job.log)
    assert log[0].startswith("$ ") and "Successfully installed beta-1.0" in log
    assert sum(line.startswith("$ ") for line in log) == 2


def test_a_failed_step_is_one_sentence_and_stops_the_install():
    job = BackgroundInstall([_step("broken"), _step("never")], python=sys.executable).start()
    assert job.wait(timeout=60) == "error"
    assert job.error == "broken could not be installed: Could not install packages due to an OSError: disk full."
    assert not any("never" in line for line in job.log if line.startswith("$ "))


def test_real_pip_that_finds_nothing_reports_pips_reason():
    step = InstallStep("a package that does not exist",
                       ["-m", "pip", "install", "--no-index", "--disable-pip-version-check",
                        "kidney-tumor-seg-no-such-package-anywhere"], ["x"])
    job = BackgroundInstall([step], python=sys.executable).start()
    assert job.wait(timeout=120) == "error"
    assert job.error.startswith("a package that does not exist could not be installed: ")
    assert "kidney-tumor-seg-no-such-package-anywhere" in job.error


def test_cancel_stops_the_running_step_and_starts_no_other():
    job = BackgroundInstall([_step("slow"), _step("never")], python=sys.executable).start()
    while job.poll() == "running" and "Installing" not in job.message:
        time.sleep(0.01)
    proc = job._proc
    job.cancel()
    while job.poll() == "cancelling":
        time.sleep(0.01)
    assert job.state == "cancelled" and proc.poll() is not None
    assert not any("never" in line for line in job.log if line.startswith("$ "))
