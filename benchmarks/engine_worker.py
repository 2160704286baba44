"""Runs the engine's command line once, in this process, and records what only the process can see.

``python -m benchmarks.engine_worker --json W.json -- segment IN -o OUT.seg.nrrd --report R.json``
does exactly what ``python -m KidneyTumorSegLib segment ...`` does (it calls the same ``main``), then
writes the CUDA peak memory and torch's thread count to ``W.json``; the stage timings are in the
engine's own report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine_worker")
    p.add_argument("--json", required=True)
    p.add_argument("--profile", help="run under cProfile and write the slowest calls to this text file")
    p.add_argument("cli_args", nargs=argparse.REMAINDER, help="arguments of the engine's command line")
    args = p.parse_args(argv)
    cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args

    import torch

    from KidneyTumorSegLib.cli import main as engine_main

    t_imported = time.perf_counter()
    if args.profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        code = prof.runcall(engine_main, cli_args)
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text).strip_dirs()
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
        with open(args.profile, "w") as fh:
            fh.write(text.getvalue())
    else:
        code = engine_main(cli_args)
    info = {
        "exit_code": int(code),
        "import_s": round(t_imported - t_start, 4),
        "cli_s": round(time.perf_counter() - t_imported, 4),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        info["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        info["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    tmp = args.json + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(info, fh, indent=2)
    os.replace(tmp, args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())
