"""What one segmentation run owns: its device, progress callback, cancel event, warnings and clock.

A pipeline's networks outlive its runs; nothing a run learns (a full GPU, its warnings, its times)
outlives the run, so the next one starts from the pipeline's configuration again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Cancelled

log = logging.getLogger("KidneyTumorSeg")
Progress = Callable[[float, str], None]
CANCELLED = "The segmentation was cancelled; nothing was written."


def _no_progress(fraction: float, message: str) -> None:
    pass


class Clock:
    """Wall time per stage, for the report and the benchmarks."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def lap(self, name: str) -> None:
        """Add the time since the last lap to stage ``name``."""
        now = time.perf_counter()
        self.times[name] = round(self.times.get(name, 0.0) + now - self._t0, 4)
        self._t0 = now


@dataclass
class RunContext:
    """One run's state. ``device`` starts as the pipeline's and may fall back to the CPU mid-run."""

    device: object  # torch.device
    progress: Progress | None = None  # (fraction, message); None: no progress shown
    cancel: object = None  # anything with is_set(), e.g. a threading.Event
    warnings: list[str] = field(default_factory=list)
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        if self.progress is None:
            self.progress = _no_progress

    def warn(self, message: str) -> None:
        """A warning for the report, logged as it happens (the CLI and Slicer show it live)."""
        self.warnings.append(message)
        log.warning(message)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(CANCELLED)

    def batches(self, n: int, size: int):
        """``(start, stop)`` of consecutive batches of ``n`` items, checking for cancel before each."""
        for start in range(0, n, size):
            self.check_cancel()
            yield start, min(n, start + size)
