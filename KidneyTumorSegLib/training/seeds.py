"""Seeds derived from names and numbers, so a case, a network's initial weights or an epoch's
samples are the same on every machine and Python run (``hash`` is salted per process)."""

from __future__ import annotations

import json
import zlib


def stable_seed(*parts) -> int:
    """A seed from strings and ints that is the same on every machine and Python run."""
    return zlib.crc32(json.dumps([str(p) for p in parts]).encode()) & 0x7FFFFFFF
