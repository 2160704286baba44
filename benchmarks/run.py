"""``python -m benchmarks.run``: the engine beside nnU-Net's KiTS19 network, speed and peak memory.

For each geometry (a synthetic CT on the grid of a real KiTS19 case, written as NIfTI so reading is
measured too) it runs, each in a fresh process:
- the engine's command line (``segment IN -o OUT.seg.nrrd --report R.json``) ``repeats`` times, taking
  the per-stage times from the engine's report and the peak RSS from the kernel;
- the reference (``benchmarks.reference``): nnU-Net v2's 3d_fullres network for KiTS19 as a
  full-volume sliding window at 1 mm; on a CPU a sample of windows scaled to the full window count.
Then it writes ``<device>.md`` and ``<device>.json`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import report
from .geometries import GEOMETRIES
from .measure import REPO, python_env, run_python_module

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
WINDOW_RE = re.compile(r"Segmenting window \d+ of (\d+)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--geometries", default="median,large,thick",
                   help=f"comma-separated, from {', '.join(GEOMETRIES)} (default: median,large,thick)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for <device>.md and <device>.json")
    p.add_argument("--reference-windows", type=int, default=None,
                   help="timed reference windows after one warm-up, on the CPU (default: 3 for median, "
                        "1 otherwise; 0: run every window); on CUDA every window is run")
    p.add_argument("--repeats", type=int, default=None,
                   help="engine runs per geometry (default: 3 for median, 1 otherwise)")
    p.add_argument("--weights", help="engine weights bundle (default: the bundled weights)")
    p.add_argument("--phantom", choices=("auto", "library", "simple"), default="auto",
                   help="CT generator: KidneyTumorSegLib.phantoms, the benchmark's own, or auto (default)")
    p.add_argument("--inputs", help="keep the generated CTs in this folder and reuse them (default: temporary)")
    p.add_argument("--no-reference", action="store_true", help="run the engine only")
    p.add_argument("--reference-spec", default="kits19", choices=("kits19", "tiny"),
                   help="kits19 (the reference) or tiny (for the harness's own test only)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed to each process")
    p.add_argument("--threads", type=int, help="CPU threads for engine and reference alike (OMP_NUM_THREADS; "
                   "default: torch's own choice)")
    p.add_argument("--profile", action="store_true",
                   help="one extra engine run per geometry under cProfile (not counted in the timings); "
                        "writes <name>_profile_<geometry>.txt beside the results")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with every run's log")
    p.add_argument("--name", help="results file stem (default: the device)")
    return p.parse_args(argv)


def make_input_in_child(name: str, folder: Path, phantom: str) -> dict:
    """Generate the CT in a child process: the harness itself stays small (see ``benchmarks.peak``)."""
    cmd = [sys.executable, "-m", "benchmarks.geometries", name, str(folder), "--phantom", phantom]
    done = subprocess.run(cmd, cwd=REPO, env=python_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"making the {name} CT failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- weights --------------------------------------------------------------------------------------
def resolve_weights(weights: str | None, workdir: Path) -> tuple[str | None, dict]:
    """The engine's weights file and a description; untrained seeded weights if nothing else exists."""
    from KidneyTumorSegLib.weights import bundled_weights_path, load_bundle, save_bundle, seeded_bundle

    if weights:
        bundle = load_bundle(weights)
        path = str(weights)
    else:
        found = bundled_weights_path()
        if found is not None and Path(found).exists():
            bundle = load_bundle(found)
            path = None  # the engine's own default
        else:
            bundle = seeded_bundle()
            path = str(workdir / "seeded_compact.safetensors")
            save_bundle(path, bundle.config, bundle.state_dicts, provenance=bundle.header["provenance"])
            return path, {
                "path": None,
                "trained": False,
                "config": bundle.config.to_dict(),
                "description": "NO TRAINED WEIGHTS FOUND: seeded untrained weights (compact configuration). "
                "The untrained localisers do not find the kidneys, so the segmenter covers whatever they "
                "mark (often the whole scan): the engine's times are a worst case, not the product's.",
            }
    prov = bundle.header.get("provenance", {}) or {}
    trained = prov.get("kind") != "seeded-initial"
    seg = bundle.config.segmenter
    desc = (f"{bundle.path} ({'trained' if trained else 'UNTRAINED'}; "
            f"segmenter width {seg.width}, depth {seg.depth}, patch {'x'.join(map(str, seg.patch_size_xyz))} "
            f"at {'x'.join(f'{s:g}' for s in seg.spacing_mm)} mm; localiser grid "
            f"{'x'.join(f'{s:g}' for s in bundle.config.localiser_grid.spacing_mm)} mm)")
    return path, {"path": str(bundle.path), "trained": trained, "provenance": prov,
                  "config": bundle.config.to_dict(), "description": desc}


# --- one engine run -------------------------------------------------------------------------------
def engine_run(ct: str, workdir: Path, tag: str, device: str, weights: str | None, timeout: float,
               threads: int | None = None, profile: Path | None = None) -> dict:
    report_path = workdir / f"{tag}_report.json"
    worker_path = workdir / f"{tag}_worker.json"
    args = ["--json", str(worker_path)] + (["--profile", str(profile)] if profile else []) + ["--", "segment", ct, "-o", str(workdir / f"{tag}.seg.nrrd"),
            "--report", str(report_path), "--device", device, "--progress", "json"]
    if weights:
        args += ["--weights", weights]
    for stale in (report_path, worker_path):
        stale.unlink(missing_ok=True)
    m = run_python_module("benchmarks.engine_worker", args, workdir / f"{tag}.log", timeout, threads)
    (workdir / f"{tag}.seg.nrrd").unlink(missing_ok=True)  # outputs can be large; keep only the logs
    run = {"measured": m.to_dict()}
    log_text = Path(m.log).read_text(errors="replace")
    windows = WINDOW_RE.findall(log_text)
    run["segmenter_windows"] = int(windows[-1]) if windows else 0
    if m.returncode != 0 or not report_path.exists():
        run["error"] = _last_error(log_text, m)
        return run
    rep = json.loads(report_path.read_text())
    run["timings_s"] = rep.get("timings_s", {})
    run["kidney_boxes"] = rep.get("kidney_boxes")
    run["warnings"] = rep.get("warnings", [])
    if worker_path.exists():
        run["worker"] = json.loads(worker_path.read_text())
    return run


def _last_error(log_text: str, m) -> str:
    if m.timed_out:
        return f"timed out after {m.wall_s:.0f} s"
    lines = [ln for ln in log_text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("Error:") or "Error" in ln:
            return ln.strip()[:300]
    return f"exit code {m.returncode}"


def summarise_engine(runs: list[dict]) -> dict:
    ok = [r for r in runs if "timings_s" in r]
    out: dict = {"runs": len(ok), "failed": len(runs) - len(ok), "runs_detail": runs}
    if not ok:
        out["error"] = runs[-1].get("error") if runs else "not run"
        return out
    stages = sorted({k for r in ok for k in r["timings_s"]})
    out["stages_s"] = {k: round(float(np.median([r["timings_s"].get(k, 0.0) for r in ok])), 3) for k in stages}
    out["total_s"] = out["stages_s"].get("total")
    out["process_wall_s"] = round(float(np.median([r["measured"]["wall_s"] for r in ok])), 3)
    out["peak_rss_bytes"] = int(max(r["measured"]["peak_rss_bytes"] for r in ok))
    out["kidney_boxes"] = ok[-1].get("kidney_boxes")
    out["segmenter_windows"] = ok[-1].get("segmenter_windows")
    cuda = [r.get("worker", {}).get("cuda_max_allocated_bytes") for r in ok]
    if any(c is not None for c in cuda):
        out["cuda_max_allocated_bytes"] = int(max(c for c in cuda if c is not None))
    return out


# --- one reference run ----------------------------------------------------------------------------
def reference_run(ct: str, workdir: Path, tag: str, device: str, windows: int, spec: str, timeout: float,
                  threads: int | None = None) -> dict:
    out_json = workdir / f"{tag}_reference.json"
    out_json.unlink(missing_ok=True)
    args = ["--input", ct, "--output", str(workdir / f"{tag}_reference.nii.gz"), "--json", str(out_json),
            "--device", device, "--windows", str(windows), "--spec", spec]
    m = run_python_module("benchmarks.reference", args, workdir / f"{tag}_reference.log", timeout, threads)
    (workdir / f"{tag}_reference.nii.gz").unlink(missing_ok=True)
    if m.returncode != 0 or not out_json.exists():
        return {"error": _last_error(Path(m.log).read_text(errors="replace"), m), "measured": m.to_dict()}
    res = json.loads(out_json.read_text())
    res["measured"] = m.to_dict()
    res["peak_rss_bytes"] = m.peak_rss_bytes
    res["process_wall_s"] = round(m.wall_s, 3)
    res["total_s"] = res["times_s"]["total"]
    return res


# --- targets --------------------------------------------------------------------------------------
def evaluate_targets(geoms: dict[str, dict], device: str) -> list[dict]:
    t = report.TARGETS
    med, large = geoms.get("median"), geoms.get("large")
    med_total = (med or {}).get("engine", {}).get("total_s")
    ratio = (med or {}).get("ratio")
    large_e = (large or {}).get("engine", {})
    peak = large_e.get("peak_rss_bytes")
    gpu = large_e.get("cuda_max_allocated_bytes")
    peak_met = None if peak is None else (peak <= t["large_peak_bytes"] and (gpu is None or gpu <= t["large_peak_bytes"]))
    peak_value = "–" if peak is None else f"RSS {peak / 1e9:.2f} GB" + (f", GPU {gpu / 1e9:.2f} GB" if gpu else "")
    return [
        {"name": "median geometry: engine total time", "value": "–" if med_total is None else f"{med_total:.1f} s",
         "target": f"<= {t['median_time_s']:g} s", "met": None if med_total is None else med_total <= t["median_time_s"]},
        {"name": "median geometry: reference / engine", "value": "–" if ratio is None else f"{ratio:.1f}x",
         "target": f">= {t['median_speedup']:g}x", "met": None if ratio is None else ratio >= t["median_speedup"]},
        {"name": "large geometry: engine peak memory", "value": peak_value,
         "target": f"<= {t['large_peak_bytes'] / 1e9:g} GB", "met": peak_met},
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    names = [n.strip() for n in args.geometries.split(",") if n.strip()]
    unknown = [n for n in names if n not in GEOMETRIES]
    if unknown:
        print(f"Unknown geometries {unknown}; choose from {', '.join(GEOMETRIES)}.", file=sys.stderr)
        return 2
    device = args.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("CUDA was requested but no CUDA GPU is available; use --device cpu.", file=sys.stderr)
            return 4
    machine = report.describe_machine(device)
    if not args.no_reference and machine.get("dynamic_network_architectures") is None:
        print("The reference needs the package dynamic-network-architectures (pip install "
              "dynamic-network-architectures --no-deps einops); or pass --no-reference.", file=sys.stderr)
        return 3

    workdir = Path(tempfile.mkdtemp(prefix="kts-bench-"))
    inputs_dir = Path(args.inputs) if args.inputs else workdir / "inputs"
    loads: list[float] = [machine["load_average_at_start"][0]]
    geoms: dict[str, dict] = {}
    notes: list[str] = []
    try:
        weights_path, weights_info = resolve_weights(args.weights, workdir)
        if not weights_info["trained"]:
            notes.append(weights_info["description"])
        for name in names:
            g = GEOMETRIES[name]
            print(f"[{name}] {g.describe()}: making the CT ...", file=sys.stderr, flush=True)
            inp = make_input_in_child(name, inputs_dir, args.phantom)
            entry: dict = {"name": name, "geometry": g.to_dict(), "input": inp}
            repeats = args.repeats if args.repeats is not None else g.repeats
            runs = []
            for i in range(repeats):
                print(f"[{name}] engine run {i + 1}/{repeats} ...", file=sys.stderr, flush=True)
                run = engine_run(inp["path"], workdir, f"{name}_engine{i}", device, weights_path, args.timeout,
                                 args.threads)
                loads += [run["measured"]["load_before"][0], run["measured"]["load_after"][0]]
                runs.append(run)
                if "error" in run:
                    print(f"[{name}] engine failed: {run['error']}", file=sys.stderr, flush=True)
                    break
            entry["engine"] = summarise_engine(runs)
            if not args.no_reference:
                windows = args.reference_windows if args.reference_windows is not None else g.reference_windows
                print(f"[{name}] reference ({'all' if windows <= 0 or device != 'cpu' else windows} timed "
                      "windows) ...", file=sys.stderr, flush=True)
                ref = reference_run(inp["path"], workdir, name, device, windows, args.reference_spec, args.timeout,
                                    args.threads)
                loads += [ref["measured"]["load_before"][0], ref["measured"]["load_after"][0]]
                entry["reference"] = ref
                if "error" in ref:
                    print(f"[{name}] reference failed: {ref['error']}", file=sys.stderr, flush=True)
                elif entry["engine"].get("total_s"):
                    entry["ratio"] = round(ref["total_s"] / entry["engine"]["total_s"], 2)
            if args.profile and entry["engine"].get("runs"):
                prof = Path(args.out) / f"{args.name or device.replace(':', '')}_profile_{name}.txt"
                prof.parent.mkdir(parents=True, exist_ok=True)
                print(f"[{name}] engine run under cProfile ...", file=sys.stderr, flush=True)
                engine_run(inp["path"], workdir, f"{name}_profile", device, weights_path, args.timeout, args.threads,
                           profile=prof)
                entry["engine"]["profile"] = str(prof)
            geoms[name] = entry
    finally:
        # The generated CTs are large: only kept in a folder the user named (--inputs).
        shutil.rmtree(workdir if not args.keep_logs else workdir / "inputs", ignore_errors=True)

    phantoms = sorted({e["input"]["phantom"] for e in geoms.values()})
    results = {
        "device": device,
        "date": report.now_utc(),
        "command": "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine,
        "threads": args.threads or f"torch default ({machine['torch_threads']})",
        "load": {"min": min(loads), "max": max(loads), "samples_1min": [round(x, 2) for x in loads]},
        "weights": weights_info,
        "inputs_note": (f"synthetic contrast CTs in HU ({', '.join(phantoms)} phantom), int16 compressed NIfTI, "
                        "identity direction, on the grids of real KiTS19 cases"),
        "geometries": list(geoms.values()),
        "targets": evaluate_targets(geoms, device),
        "notes": notes,
    }
    results["runtime_s"] = round(time.perf_counter() - t_start, 1)
    json_path, md_path = report.write_results(results, Path(args.out), args.name or device.replace(":", ""))
    print(report.render_markdown(results))
    logs = f" (logs in {workdir})" if args.keep_logs else ""
    print(f"Wrote {md_path} and {json_path}{logs}; {results['runtime_s']:.0f} s in all.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
