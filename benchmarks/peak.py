"""Run a Python module and record this process's own peak resident memory when it ends.

``python -m benchmarks.peak OUT.json MODULE ARGS...`` runs ``python -m MODULE ARGS...`` in this
process, then writes ``{"vmhwm_bytes": ...}`` to ``OUT.json``.

Why not the parent's ``wait4``/``ru_maxrss``: on Linux a child's ``ru_maxrss`` starts at the
parent's own high-water mark (the kernel carries it across ``exec``), so a harness that once held a
2 GB phantom would report every later run as at least 2 GB. ``VmHWM`` in ``/proc/self/status`` is
the high-water mark of this process's address space since ``exec``: exact and uncontaminated.
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import sys


def vmhwm_bytes() -> int | None:
    """Peak resident set size of this process since exec (Linux), or None elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: python -m benchmarks.peak OUT.json MODULE [ARGS...]", file=sys.stderr)
        return 2
    out, module, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.argv = [module, *rest]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        info = {"vmhwm_bytes": vmhwm_bytes(), "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        tmp = out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(info, fh)
        os.replace(tmp, out)
    return code


if __name__ == "__main__":
    sys.exit(main())
