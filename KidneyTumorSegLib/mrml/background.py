"""The engine in a background process, polled from the GUI (or from a plain loop in a test).

Slicer's window must stay responsive during a run that can take minutes, Cancel must work at any
moment and GPU memory must be given back afterwards. So the GUI writes the input volume to a
temporary NRRD and runs the command line in a child process (Slicer's own Python)::

    python -m KidneyTumorSegLib segment IN.nrrd -o OUT.seg.nrrd --labelmap OUT_labels.nrrd
        --report OUT.json --progress json --device D [--weights W] [--allow-non-ct] [--no-mirror]
        [--threads N] [--series S]

The child prints one JSON object per line on stdout (``progress``, ``warning``, then ``done`` or
``error``). :meth:`BackgroundSegmentation.poll` never blocks: reader threads collect the lines and
``poll`` hands them on, so a ``QTimer`` can call it. When the child has finished, the ``.seg.nrrd``
it wrote is read back and loaded into the segmentation node by :func:`.run.apply_result`, the same
function the in-process path uses. Temporary files are removed whatever the outcome. Every line
the child printed is kept in :attr:`BackgroundSegmentation.log` for the panel's details area.
:meth:`~BackgroundSegmentation.cancel` only asks the child to stop (SIGTERM, which the CLI treats
as Ctrl-C) and returns; ``poll`` finishes the job once the child is gone, killing it if it has not
gone within a grace period, so the GUI never waits on a dying process.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path

from ..errors import KidneyTumorSegError

log = logging.getLogger("KidneyTumorSeg")

RUNNING, DONE, FAILED, CANCELLED, NOT_STARTED = "running", "done", "error", "cancelled", "not started"
CANCELLING = "cancelling"
LOG_LINES = 2000  # the details area keeps the last lines of a run


def python_executable() -> str:
    """The Python to run the engine with: this interpreter (inside Slicer: PythonSlicer)."""
    exe = Path(sys.executable)
    if "python" in exe.name.lower():
        return str(exe)
    # Inside an application whose sys.executable is the application itself, look for its Python.
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    for candidate in (exe.with_name(name), shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return str(exe)


def library_root() -> str:
    """The folder that holds the ``KidneyTumorSegLib`` package (put on the child's PYTHONPATH)."""
    return str(Path(__file__).resolve().parents[2])


_CUDA_PROBE = (
    "import json\n"
    "try:\n"
    "    import torch\n"
    "except ImportError:\n"
    "    print(json.dumps({'torch': None}))\n"
    "else:\n"
    "    ok = bool(torch.cuda.is_available())\n"
    "    print(json.dumps({'torch': torch.__version__, 'cuda': ok,\n"
    "                      'name': torch.cuda.get_device_name(0) if ok else ''}))\n"
)


class CudaProbe:
    """Asks the engine's Python whether PyTorch can use a CUDA GPU, without importing torch here.

    Importing torch in Slicer's own process would load the CUDA libraries into the GUI for nothing
    (inference runs in a child process). ``poll()`` returns None while the probe runs, then
    ``(available, reason)`` where ``reason`` is a sentence fit for a tooltip.
    """

    def __init__(self, python: str | None = None):
        kwargs = {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" else {}
        self._proc = subprocess.Popen(
            [python or python_executable(), "-c", _CUDA_PROBE], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
        )
        self.result: tuple[bool, str] | None = None

    def poll(self) -> tuple[bool, str] | None:
        if self.result is not None or self._proc.poll() is None:
            return self.result
        out, err = self._proc.communicate()
        try:
            info = json.loads(out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            last = (err.strip().splitlines() or ["unknown error"])[-1]
            self.result = (False, f"PyTorch could not be checked: {last}")
            return self.result
        if info.get("torch") is None:
            self.result = (False, "PyTorch is not installed yet; it is installed when you first press Apply.")
        elif info.get("cuda"):
            self.result = (True, f"GPU: {info.get('name') or 'CUDA device'} (PyTorch {info['torch']}).")
        else:
            self.result = (False, f"PyTorch {info['torch']} sees no CUDA GPU (no NVIDIA GPU or driver, or a "
                                  "CPU-only PyTorch build); the CPU is used.")
        return self.result

    def wait(self, timeout: float = 120) -> tuple[bool, str]:
        self._proc.wait(timeout=timeout)
        return self.poll()


class BackgroundSegmentation:
    """One run of the engine in a child process, for one input volume node.

    Typical use (the GUI calls ``poll`` from a timer)::

        job = BackgroundSegmentation(volume_node, segmentation_node, device="auto")
        job.start()
        while job.poll() == "running":
            ...  # update progress from job.fraction / job.message
        if job.state == "done":
            node = job.segmentation_node

    ``on_progress(fraction, message)`` is called from ``poll`` (the caller's thread) for every
    progress line. Nothing of the input volume is modified.
    """

    def __init__(
        self,
        volume_node,
        segmentation_node=None,
        device: str = "auto",
        weights: str | os.PathLike | None = None,
        on_progress=None,
        python: str | None = None,
        cli_module: str = "KidneyTumorSegLib",
        extra_args: list[str] | None = None,
        extra_pythonpath: list[str] | None = None,
        closed_surface: bool = True,
        allow_non_ct: bool = False,
        no_mirror: bool = False,
        threads: int | None = None,
        series: str | None = None,
    ):
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        self.device = device
        self.weights = str(weights) if weights else None
        self.on_progress = on_progress
        self.python = python or python_executable()
        self.cli_module = cli_module
        self.extra_args = list(extra_args or [])
        self.extra_pythonpath = [str(p) for p in (extra_pythonpath or [])]
        self.closed_surface = closed_surface
        self.allow_non_ct = bool(allow_non_ct)
        self.no_mirror = bool(no_mirror)
        self.threads = int(threads) if threads else None
        self.series = str(series).strip() if series is not None and str(series).strip() else None

        self.state = NOT_STARTED
        self.fraction = 0.0
        self.message = ""
        self.warnings: list[str] = []
        self.report: dict | None = None
        self.error: str | None = None
        self.returncode: int | None = None
        self.temp_dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stderr_tail: deque = deque(maxlen=40)
        self._threads: list[threading.Thread] = []
        self._done_event: dict | None = None
        self._error_event: str | None = None
        self.log: deque = deque(maxlen=LOG_LINES)  # every line the child printed, stderr marked
        self._kill_at: float | None = None

    # --- starting -------------------------------------------------------------------------------
    def command(self, input_path: Path) -> list[str]:
        out = self.temp_dir
        cmd = [
            self.python, "-m", self.cli_module, "segment", str(input_path),
            "-o", str(out / "result.seg.nrrd"),
            "--labelmap", str(out / "result_labels.nrrd"),
            "--report", str(out / "result.json"),
            "--progress", "json",
            "--device", self.device,
        ]
        if self.weights:
            cmd += ["--weights", self.weights]
        if self.allow_non_ct:
            cmd.append("--allow-non-ct")
        if self.no_mirror:
            cmd.append("--no-mirror")
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.series:
            cmd += ["--series", self.series]
        return cmd + self.extra_args

    def _environment(self) -> dict:
        env = dict(os.environ)
        paths = self.extra_pythonpath + [library_root()]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> BackgroundSegmentation:
        """Write the input to a temporary file and start the child process."""
        from ..io import write_volume
        from .volumes import volume_from_node

        if self.state != NOT_STARTED:
            raise RuntimeError("this run was already started")
        volume = volume_from_node(self.volume_node, copy=False)
        self._grid = volume
        self.temp_dir = Path(tempfile.mkdtemp(prefix="KidneyTumorSeg-"))
        try:
            input_path = write_volume(volume, self.temp_dir / "input.nrrd", compress=False)
            cmd = self.command(input_path)
            log.info("Starting: %s", " ".join(cmd))
            kwargs = {}
            if os.name == "nt":  # no console window flashing up on Windows
                kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self._environment(), cwd=str(self.temp_dir), text=True, encoding="utf-8",
                errors="replace", bufsize=1, **kwargs,
            )
        except BaseException:
            self._remove_temp()
            raise
        self.state = RUNNING
        self.message = "Starting"
        self.log.append("$ " + " ".join(cmd))

        def out(line):
            self.log.append(line)
            self._lines.put(line)

        def err(line):
            self.log.append("stderr: " + line)
            self._stderr_tail.append(line)

        for stream, sink in ((self._proc.stdout, out), (self._proc.stderr, err)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @staticmethod
    def _pump(stream, sink) -> None:
        try:
            for line in stream:
                sink(line.rstrip("\r\n"))
        except (OSError, ValueError):  # stream closed under us (cancel)
            pass

    # --- polling --------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _handle(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if line.strip():
                log.debug("engine: %s", line)
            return
        if not isinstance(event, dict):
            return
        kind = event.get("event")
        if kind == "progress":
            try:
                self.fraction = max(0.0, min(1.0, float(event.get("fraction", self.fraction))))
            except (TypeError, ValueError):
                pass
            self.message = str(event.get("message", self.message))
            if self.on_progress is not None:
                self.on_progress(self.fraction, self.message)
        elif kind == "warning":
            self.warnings.append(str(event.get("message", "")))
        elif kind == "done":
            self._done_event = event
        elif kind == "error":
            self._error_event = str(event.get("message") or "The segmentation failed.")

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            self._handle(line)

    def poll(self) -> str:
        """Hand on new progress; on the child's exit load the result. Never blocks. Returns the state."""
        if self.state == CANCELLING:
            return self._finish_cancel()
        if self.state != RUNNING:
            return self.state
        self._drain()
        rc = self._proc.poll()
        if rc is None:
            return self.state
        for t in self._threads:  # the child is gone: its pipes reach EOF at once
            t.join(timeout=5)
        self._drain()
        self.returncode = rc
        try:
            if rc == 0 and self._done_event is not None:
                self._load_result()
                self.state = DONE
                self.fraction, self.message = 1.0, "Done"
            else:
                self.error = self._error_event or self._last_error_line() or (
                    f"The segmentation process stopped unexpectedly (exit code {rc})."
                )
                self.state = FAILED
        except KidneyTumorSegError as err:
            self.error, self.state = str(err), FAILED
        except Exception as err:  # a bug must not leave the GUI waiting forever
            log.exception("Loading the result failed")
            self.error, self.state = f"Loading the result failed: {err}", FAILED
        finally:
            self._remove_temp()
        return self.state

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Poll until the run ends (for scripts and tests; the GUI uses a timer instead)."""
        import time

        t0 = time.monotonic()
        while self.poll() in (RUNNING, CANCELLING):
            if timeout is not None and time.monotonic() - t0 > timeout and self.state == RUNNING:
                self.cancel(wait=True)
                raise TimeoutError(f"the segmentation did not finish within {timeout} s")
            time.sleep(interval)
        return self.state

    def _last_error_line(self) -> str | None:
        for line in reversed(self._stderr_tail):
            text = line.strip()
            if text:
                return text[len("Error: "):] if text.startswith("Error: ") else text
        return None

    def _load_result(self) -> None:
        from ..segfile import read_seg_nrrd
        from .run import apply_result

        report = self._done_event.get("report")
        if not isinstance(report, dict):
            report_path = self.temp_dir / "result.json"
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
        self.report = report
        for w in report.get("warnings", []):
            if w not in self.warnings:
                self.warnings.append(w)
        masks, grid = read_seg_nrrd(self.temp_dir / "result.seg.nrrd")
        if not grid.same_grid(self._grid, tol=1e-3):
            raise KidneyTumorSegError("The segmentation came back on a different grid than the input volume.")
        self.segmentation_node = apply_result(
            self.volume_node, masks, report, self.segmentation_node, grid=self._grid,
            closed_surface=self.closed_surface,
        )

    # --- cancelling -----------------------------------------------------------------------------
    def cancel(self, wait: bool = False, grace_s: float = 5.0) -> None:
        """Ask the child to stop and return at once (state ``cancelling``); ``poll`` ends the job.

        The child gets SIGTERM (the CLI stops as for Ctrl-C and writes nothing); one still alive
        ``grace_s`` seconds later is killed by ``poll``. Its output is dropped and the temporary
        files removed. ``wait=True`` polls until the child is gone (scripts, closing Slicer).
        """
        import time

        if self.state != RUNNING:
            return
        self.state, self.message = CANCELLING, "Cancelling"
        self._kill_at = time.monotonic() + max(0.0, grace_s)
        if self._proc.poll() is None:
            try:
                self._proc.terminate()
            except OSError:  # gone in the meantime
                pass
        while wait and self.poll() == CANCELLING:
            time.sleep(0.05)

    def _finish_cancel(self) -> str:
        import time

        proc = self._proc
        if proc.poll() is None:
            if self._kill_at is not None and time.monotonic() >= self._kill_at:
                try:
                    proc.kill()
                except OSError:
                    pass
            return self.state
        for t in self._threads:  # the pipes reach EOF once the child is gone
            t.join(timeout=0.5)
        self.returncode = proc.returncode
        self.state = CANCELLED
        self.message = "Cancelled"
        self._remove_temp()
        return self.state

    def _remove_temp(self) -> None:
        for stream in (getattr(self._proc, "stdout", None), getattr(self._proc, "stderr", None)):
            if stream is not None and self._proc.poll() is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self.temp_dir is not None and self.temp_dir.exists():
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __del__(self):  # never leave a child running when the job object goes away
        try:
            if self.state in (RUNNING, CANCELLING) and self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
        except Exception:
            pass
