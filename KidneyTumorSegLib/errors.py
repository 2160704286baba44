"""Errors a user can cause. Each carries one clear sentence; the CLI prints it and exits non-zero."""

from __future__ import annotations


class KidneyTumorSegError(Exception):
    """Base class: ``str(err)`` is a complete sentence fit to show a user."""

    exit_code = 2


class InputError(KidneyTumorSegError):
    """The input image cannot be used (missing, unreadable, wrong dimension, not finite, ...)."""


class WeightsError(KidneyTumorSegError):
    """A weights file is missing, truncated, tampered with or incompatible."""

    exit_code = 3


class DeviceError(KidneyTumorSegError):
    """The requested compute device is not available."""

    exit_code = 4


class NotCTError(InputError):
    """The image does not look like a CT in Hounsfield units; the user may override."""

    exit_code = 5


class NotEnoughMemoryError(InputError):
    """The input is too large for the memory this computer has free; nothing was started."""

    exit_code = 6


class FileWriteError(KidneyTumorSegError):
    """An output cannot be written where it was asked for (a parent that is a file, no permission)."""

    exit_code = 7


class Cancelled(KidneyTumorSegError):
    """The run was cancelled by the user; nothing was written."""

    exit_code = 130
