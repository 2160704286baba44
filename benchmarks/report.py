"""The machine description and the results: a markdown table and a JSON file."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ENGINE_STAGES = ("read", "preprocess", "z_localiser", "xy_localiser", "segmenter", "stitching", "postprocess",
                 "resample_back", "contrast", "write", "total")
REFERENCE_STAGES = ("read", "preprocess", "allocate", "network", "accumulate", "divide", "resample_back", "write",
                    "total")
TARGETS = {
    "median_time_s": 20.0,  # median geometry, engine total
    "median_speedup": 20.0,  # reference / engine on the median geometry
    "large_peak_bytes": 3.0e9,  # large geometry, engine peak memory (3 GB = 3.0e9 bytes)
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def describe_machine(device: str) -> dict:
    import numpy
    import torch

    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_total_bytes": memory_total_bytes(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "device": device,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import SimpleITK as sitk

        info["simpleitk"] = sitk.Version.VersionString()
    except Exception:  # pragma: no cover - SimpleITK is a hard dependency
        pass
    try:
        from importlib.metadata import version

        import dynamic_network_architectures as dna  # noqa: F401

        info["dynamic_network_architectures"] = version("dynamic-network-architectures")
    except Exception:
        info["dynamic_network_architectures"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = int(torch.cuda.get_device_properties(0).total_memory)
    return info


def now_utc() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --- formatting ----------------------------------------------------------------------------------
def _s(v) -> str:
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _gb(v) -> str:
    return "–" if v is None else f"{v / 1e9:.2f} GB"


def _met(flag) -> str:
    return "n/a" if flag is None else ("**met**" if flag else "**not met**")


def render_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# KidneyTumorSeg benchmark ({results['device']})",
        "",
        f"- Date: {results['date']} (UTC); command: `{results['command']}`",
        f"- Machine: {m['cpu_model']}, {m['cpus_available']} CPUs available, "
        f"{_gb(m.get('memory_total_bytes'))} RAM" + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
        f"- Software: Python {m['python']}, torch {m['torch']} (CPU threads: {results.get('threads', m['torch_threads'])}), "
        f"numpy {m['numpy']}, SimpleITK {m.get('simpleitk', '?')}, "
        f"dynamic-network-architectures {m.get('dynamic_network_architectures')}",
        f"- Load average (1 min) during the run: {results['load']['min']:.2f} – {results['load']['max']:.2f} "
        "(the machine is shared; medians are reported)",
        f"- Engine weights: {results['weights']['description']}",
        f"- Inputs: {results['inputs_note']}",
        "",
        "## Summary",
        "",
        "| geometry | grid | engine total (s) | engine process (s) | engine peak RSS | reference total (s) "
        "| reference peak RSS | reference / engine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in results["geometries"]:
        e, r = g["engine"], g.get("reference") or {}
        ratio = g.get("ratio")
        lines.append(
            f"| {g['name']} | {g['geometry']['describe']} | {_s(e.get('total_s'))} (median of {e['runs']}) "
            f"| {_s(e.get('process_wall_s'))} | {_gb(e.get('peak_rss_bytes'))} | {_s(r.get('total_s'))}"
            f"{' (est.)' if r.get('sampled') else ''} | {_gb(r.get('peak_rss_bytes'))} "
            f"| {'–' if ratio is None else f'{ratio:.1f}x'} |"
        )
    if any(g["engine"].get("cuda_max_allocated_bytes") for g in results["geometries"]):
        lines += ["", "GPU peak memory (torch.cuda.max_memory_allocated):", ""]
        for g in results["geometries"]:
            lines.append(f"- {g['name']}: engine {_gb(g['engine'].get('cuda_max_allocated_bytes'))}, reference "
                         f"{_gb((g.get('reference') or {}).get('cuda_max_allocated_bytes'))}")

    lines += ["", "## Targets", ""]
    for t in results["targets"]:
        lines.append(f"- {t['name']}: {t['value']} (target {t['target']}): {_met(t['met'])}")

    lines += ["", "## Engine: wall time per stage (s, median over runs)", ""]
    lines.append("| geometry | " + " | ".join(ENGINE_STAGES) + " | kidney boxes | segmenter windows |")
    lines.append("| --- " * (len(ENGINE_STAGES) + 3) + "|")
    for g in results["geometries"]:
        e = g["engine"]
        st = e.get("stages_s", {})
        lines.append(f"| {g['name']} | " + " | ".join(_s(st.get(k)) for k in ENGINE_STAGES)
                     + f" | {e.get('kidney_boxes', '–')} | {e.get('segmenter_windows', '–')} |")
    for g in results["geometries"]:
        e = g["engine"]
        if e.get("error"):
            lines.append(f"\n{g['name']}: the engine failed: {e['error']}")
        elif e.get("kidney_boxes") == 0:
            lines.append(f"\n{g['name']}: the engine found no kidney, so no segmenter ran.")

    refs = [g for g in results["geometries"] if g.get("reference") and "times_s" in g["reference"]]
    for g in results["geometries"]:
        if (g.get("reference") or {}).get("error"):
            lines += ["", f"{g['name']}: the reference failed: {g['reference']['error']}"]
    if refs:
        lines += _reference_section(results, refs)
    lines += [
        "",
        "Engine total = the engine's own report (`timings_s.total`: read to write, in the command line); "
        "engine process = wall time of the whole process, interpreter start, imports and weight loading "
        "included. Peak RSS = the process's own high-water mark of resident memory (`VmHWM`, kernel). "
        "Reference / engine = reference total / engine total. GB = 10^9 bytes.",
        "",
    ]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def _reference_section(results: dict, refs: list[dict]) -> list[str]:
    lines = ["", "## Reference: nnU-Net v2 3d_fullres for KiTS19, wall time per stage (s)", ""]
    ref_any = refs[0]["reference"]
    if ref_any:
        spec = ref_any["spec"]
        lines += [
            f"PlainConvUNet ({ref_any['parameters']:,} parameters), features "
            f"{'-'.join(str(f) for f in spec['features'])}, patch {'x'.join(str(p) for p in spec['patch_zyx'])}, "
            f"instance norm, 2 convs per stage, random weights; full-volume sliding window at "
            f"{spec['spacing_xyz'][0]:g} mm, {int(spec['step_fraction'] * 100)} % overlap, Gaussian weighting, "
            "float16 accumulators, no test-time mirroring. Reading, resampling to 1 mm (trilinear), "
            "normalising, dividing, resampling the logits back, softmax, argmax and writing run in full.",
            "",
        ]
        if any(g["reference"].get("sampled") for g in refs):
            lines += [
                "**Estimated, not fully run:** on this device only a sample of windows is run (after one "
                "warm-up window); `network` and `accumulate` are the median time per sampled window "
                "multiplied by the exact window count of the full sliding window.",
                "",
            ]
    lines.append("| geometry | working grid (z,y,x) | windows | timed | s / window | "
                 + " | ".join(REFERENCE_STAGES) + " | total with 8x mirroring |")
    lines.append("| --- " * (len(REFERENCE_STAGES) + 6) + "|")
    for g in refs:
        r = g["reference"]
        st = r["times_s"]
        lines.append(
            f"| {g['name']} | {'x'.join(str(v) for v in r['grid_zyx'])} | {r['windows']} | {r['timed_windows']} "
            f"| {_s(r['network_per_window_s'])} | " + " | ".join(_s(st.get(k)) for k in REFERENCE_STAGES)
            + f" | {_s(r['total_with_mirroring_s'])} |"
        )
    return lines


def write_results(results: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.json`` and ``<stem>.md`` in ``out_dir``, each written whole then renamed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in ((".json", json.dumps(results, indent=2) + "\n"), (".md", render_markdown(results))):
        path = out_dir / f"{stem}{suffix}"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]
