"""One measurement = one fresh process: wall time, peak resident memory, exit status, load.

Each run gets its own interpreter so nothing is cached between runs and the peak RSS is that run's
alone. The peak is the child's own ``VmHWM`` (``benchmarks.peak``), the kernel's high-water mark of
its address space: exact and free of polling gaps. The ``ru_maxrss`` that ``wait4`` returns is kept
only as a fallback (a killed child writes nothing), because on Linux it starts at the parent's own
high-water mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    peak_source: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    timed_out: bool
    log: str

    def to_dict(self) -> dict:
        return {
            "returncode": self.returncode,
            "wall_s": round(self.wall_s, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_source": self.peak_source,
            "load_before": [round(x, 2) for x in self.load_before],
            "load_after": [round(x, 2) for x in self.load_after],
            "timed_out": self.timed_out,
        }


def python_env(threads: int | None = None) -> dict:
    """The environment for child interpreters: the repository importable, output unbuffered, and
    with ``threads`` the CPU thread count of torch (OpenMP) and BLAS fixed for engine and reference alike."""
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(int(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_python_module(module: str, args: list[str], log_path: Path, timeout_s: float = 3600.0,
                      threads: int | None = None) -> Measured:
    """Run ``python -m module args`` in a fresh process; output goes to ``log_path``."""
    log_path = Path(log_path)
    peak_path = log_path.with_name(log_path.name + ".peak.json")
    peak_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.peak", str(peak_path), module, *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    timed_out = threading.Event()
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=python_env(threads), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)

        def _kill():
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(timeout_s, _kill)
        watchdog.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; tell Popen so
    peak, source = None, "vmhwm"
    if peak_path.exists():
        peak = json.loads(peak_path.read_text()).get("vmhwm_bytes")
    if peak is None:  # killed, or not Linux: the kernel's figure, an upper bound (see above)
        scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
        peak, source = int(usage.ru_maxrss) * scale, "ru_maxrss (upper bound)"
    return Measured(
        returncode=proc.returncode,
        wall_s=wall,
        peak_rss_bytes=int(peak),
        peak_source=source,
        load_before=load_before,
        load_after=os.getloadavg(),
        timed_out=timed_out.is_set(),
        log=str(log_path),
    )
