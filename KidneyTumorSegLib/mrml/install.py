"""Installing what the engine needs in the background, saying what and how big as it goes.

PyTorch is a download of 0.2 to 2.5 GB; pip run on Slicer's GUI thread freezes the window for
minutes. So the install runs as child processes of Slicer's own Python (same site-packages), one
step after the other, polled from a timer like the segmentation::

    python -m pip install light-the-torch>=0.5     (PyTorch extension present, light-the-torch not yet)
    python -m light_the_torch install torch>=2.1   (the PyTorch extension's way: the CUDA build that fits the driver)
    python -m pip install torch>=2.1               (without the PyTorch extension)
    python -m pip install scipy safetensors>=0.4   (the rest)

pip's own lines say what happens ("Collecting torch", "Downloading torch-...whl (797.1 MB)"); with
pip 24.1 or newer ``--progress-bar raw`` adds "Progress DONE of TOTAL" lines, which become the
fraction. :meth:`BackgroundInstall.cancel` stops the running step (pip installs nothing it has not
finished downloading) and starts no further one.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .background import (
    CANCELLED,
    CANCELLING,
    DONE,
    FAILED,
    LOG_LINES,
    NOT_STARTED,
    RUNNING,
    python_executable,
)

TORCH_REQUIREMENT = "torch>=2.1"
REQUIREMENTS = {"torch": TORCH_REQUIREMENT, "scipy": "scipy", "safetensors": "safetensors>=0.4"}
# What the user is told before agreeing: the real size comes from pip as the download starts.
APPROXIMATE_SIZE = {
    "torch": "0.2 GB for a CPU build, up to 2.5 GB with NVIDIA CUDA support",
    "scipy": "about 40 MB",
    "safetensors": "under 1 MB",
    "light-the-torch": "under 1 MB",
}
WHAT = {"torch": "PyTorch (the neural-network engine)", "scipy": "SciPy", "safetensors": "safetensors (weights files)",
        "light-the-torch": "light-the-torch (chooses the PyTorch build for your GPU, as the PyTorch extension does)"}

_COLLECTING = re.compile(r"^\s*Collecting (\S+)")
_DOWNLOADING = re.compile(r"^\s*Downloading (\S+)(?: \(([\d.]+ ?[kKMG]?i?B)\))?")
_PROGRESS = re.compile(r"^\s*Progress (\d+) of (\d+)")
_INSTALLING = re.compile(r"^\s*Installing collected packages: (.+)")
_INSTALLED = re.compile(r"^\s*Successfully installed (.+)")
_ERROR = re.compile(r"^\s*ERROR: (.+)")


@dataclass
class InstallStep:
    """One child process: what it installs (for people) and the arguments after ``python``."""

    what: str
    args: list[str]
    packages: list[str] = field(default_factory=list)


def pip_supports_raw_progress(pip_version: str | None) -> bool:
    """pip >= 24.1 prints machine-readable download progress (``--progress-bar raw``)."""
    numbers = re.findall(r"\d+", pip_version or "")[:2]
    return len(numbers) == 2 and (int(numbers[0]), int(numbers[1])) >= (24, 1)


def install_plan(missing, pytorch_extension: bool = False, light_the_torch: bool = False,
                 pip_version: str | None = None) -> list[InstallStep]:
    """The steps that install ``missing`` import names (torch first, through light-the-torch when the
    PyTorch extension is installed, as that extension does), the rest with pip in one step."""
    progress = ["--progress-bar", "raw"] if pip_supports_raw_progress(pip_version) else []
    steps = []
    if "torch" in missing:
        if pytorch_extension:
            if not light_the_torch:
                steps.append(InstallStep(WHAT["light-the-torch"], ["-m", "pip", "install", "light-the-torch>=0.5",
                                                                     *progress], ["light-the-torch"]))
            steps.append(InstallStep(WHAT["torch"], ["-m", "light_the_torch", "install", TORCH_REQUIREMENT, *progress],
                                     ["torch"]))
        else:
            steps.append(InstallStep(WHAT["torch"], ["-m", "pip", "install", TORCH_REQUIREMENT, *progress], ["torch"]))
    others = [name for name in missing if name != "torch"]
    if others:
        steps.append(InstallStep(", ".join(WHAT.get(n, n) for n in others),
                                 ["-m", "pip", "install", *(REQUIREMENTS.get(n, n) for n in others), *progress],
                                 others))
    return steps


def install_plan_here(missing) -> list[InstallStep]:
    """:func:`install_plan` for this Python: is the PyTorch extension (PyTorchUtils) importable, is
    light-the-torch, and which pip is installed."""
    import importlib.metadata
    import importlib.util

    try:
        pip_version = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        pip_version = None
    return install_plan(missing, pytorch_extension=importlib.util.find_spec("PyTorchUtils") is not None,
                        light_the_torch=importlib.util.find_spec("light_the_torch") is not None,
                        pip_version=pip_version)


def describe_plan(steps: list[InstallStep]) -> str:
    """What will be installed and roughly how big, one line per package, for the question asked first."""
    lines = []
    for step in steps:
        for package in step.packages:
            lines.append(f"- {WHAT.get(package, package)}: {APPROXIMATE_SIZE.get(package, 'size unknown')}")
    return "\n".join(lines)


def parse_pip_line(line: str) -> dict | None:
    """What one line of pip's output says, or None for lines that say nothing useful."""
    for kind, pattern in (("progress", _PROGRESS), ("downloading", _DOWNLOADING), ("collecting", _COLLECTING),
                          ("installing", _INSTALLING), ("installed", _INSTALLED), ("error", _ERROR)):
        match = pattern.match(line)
        if not match:
            continue
        if kind == "progress":
            return {"kind": kind, "done": int(match.group(1)), "total": int(match.group(2))}
        if kind == "downloading":
            name = match.group(1).rstrip("/").rsplit("/", 1)[-1]  # older pip prints the whole URL
            return {"kind": kind, "file": name, "size": match.group(2)}
        return {"kind": kind, "text": match.group(1).strip()}
    return None


class BackgroundInstall:
    """The steps of an install, one child process after the other; ``poll`` never blocks."""

    def __init__(self, steps: list[InstallStep], python: str | None = None, env: dict | None = None):
        if not steps:
            raise ValueError("nothing to install")
        self.steps = list(steps)
        self.python = python or python_executable()
        self.env = env
        self.state = NOT_STARTED
        self.fraction = 0.0
        self.message = ""
        self.error: str | None = None
        self.log: deque = deque(maxlen=LOG_LINES)
        self.downloads: list[tuple[str, str | None]] = []  # (file, size) as pip announced them
        self._index = -1
        self._proc: subprocess.Popen | None = None
        self._threads: list[threading.Thread] = []
        self._lines: deque = deque()
        self._errors: list[str] = []
        self._kill_at: float | None = None
        self._file: str | None = None

    def start(self) -> BackgroundInstall:
        if self.state != NOT_STARTED:
            raise RuntimeError("this install was already started")
        self.state = RUNNING
        self._next_step()
        return self

    def _next_step(self) -> None:
        self._index += 1
        step = self.steps[self._index]
        cmd = [self.python, *step.args]
        self.log.append("$ " + " ".join(cmd))
        self.message = f"Installing {step.what}"
        self._file = None
        env = dict(self.env if self.env is not None else os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        kwargs = {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" else {}
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                                      bufsize=1, env=env, **kwargs)
        self._threads = [threading.Thread(target=self._pump, args=(self._proc.stdout,), daemon=True)]
        self._threads[0].start()

    def _pump(self, stream) -> None:
        try:
            for line in stream:
                self._lines.append(line.rstrip("\r\n"))
        except (OSError, ValueError):
            pass

    def _handle(self, line: str) -> None:
        self.log.append(line)
        info = parse_pip_line(line)
        if info is None:
            return
        step = self.steps[self._index]
        n = len(self.steps)
        if info["kind"] == "progress" and info["total"] > 0:
            within = 0.9 * min(1.0, info["done"] / info["total"])  # installing takes the last tenth
            self.fraction = (self._index + within) / n
            done_mb, total_mb = info["done"] / 1e6, info["total"] / 1e6
            self.message = f"Downloading {self._file or step.what}: {done_mb:,.0f} of {total_mb:,.0f} MB"
        elif info["kind"] == "downloading":
            self._file = info["file"]
            self.downloads.append((info["file"], info["size"]))
            size = f" ({info['size']})" if info["size"] else ""
            self.message = f"Downloading {info['file']}{size}"
        elif info["kind"] == "collecting":
            self.message = f"Looking up {info['text']}"
        elif info["kind"] == "installing":
            self.fraction = max(self.fraction, (self._index + 0.95) / n)
            self.message = f"Installing {info['text']} (this can take a minute)"
        elif info["kind"] == "error":
            self._errors.append(info["text"])

    def _drain(self) -> None:
        while self._lines:
            self._handle(self._lines.popleft())

    def poll(self) -> str:
        """Hand on pip's progress; start the next step when one ends. Never blocks."""
        if self.state not in (RUNNING, CANCELLING):
            return self.state
        self._drain()
        rc = self._proc.poll()
        if rc is None:
            if self.state == CANCELLING and time.monotonic() >= (self._kill_at or 0.0):
                try:
                    self._proc.kill()
                except OSError:
                    pass
            return self.state
        for t in self._threads:
            t.join(timeout=0.5)
        self._drain()
        if self.state == CANCELLING:
            self.state, self.message = CANCELLED, "Installation cancelled"
        elif rc != 0:
            what = self.steps[self._index].what
            reason = self._errors[-1] if self._errors else f"the installer stopped with exit code {rc}"
            self.state = FAILED
            self.error = f"{what} could not be installed: {reason.rstrip('.')}."
        elif self._index + 1 < len(self.steps):
            self.fraction = (self._index + 1) / len(self.steps)
            self._next_step()
        else:
            self.state, self.fraction, self.message = DONE, 1.0, "Installed"
        return self.state

    def cancel(self, grace_s: float = 5.0) -> None:
        """Stop the running step (SIGTERM, then kill after ``grace_s``) and start no further one."""
        if self.state != RUNNING:
            return
        self.state, self.message = CANCELLING, "Cancelling the installation"
        self._kill_at = time.monotonic() + max(0.0, grace_s)
        try:
            self._proc.terminate()
        except OSError:
            pass

    def wait(self, timeout: float | None = None) -> str:
        t0 = time.monotonic()
        while self.poll() in (RUNNING, CANCELLING):
            if timeout is not None and time.monotonic() - t0 > timeout and self.state == RUNNING:
                self.cancel(grace_s=1.0)
            time.sleep(0.05)
        return self.state
