"""The run's report: JSON for machines, a short readable summary for people."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .io import atomic_output


def write_report(report: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path


def summary_text(report: dict) -> str:
    """A few lines a surgeon can read: per side kidney and tumour volume, tumour diameter."""
    lines = []
    sides = report.get("sides", {})
    if not sides:
        lines.append("No kidney found.")
    for side in ("right", "left"):
        s = sides.get(side)
        if not s:
            continue
        line = f"{side.capitalize()} kidney: {s['kidney_with_tumour_ml']:.1f} mL"
        if s.get("tumour_ml", 0) > 0:
            n = s.get("tumour_count", 1)
            what = "tumour" if n == 1 else f"{n} tumours"
            line += f"; {what}: {s['tumour_ml']:.1f} mL, largest diameter {s['tumour_diameter_mm']:.0f} mm"
        else:
            line += "; no tumour"
        lines.append(line)
    for w in report.get("warnings", []):
        if not (w.startswith("No kidney") and not sides):
            lines.append(f"Warning: {w}")
    t = report.get("timings_s", {})
    if t:
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k != "total")
        lines.append(f"Time: {t.get('total', 0):.1f} s ({stages}) on {report.get('device', '?')}")
    return "\n".join(lines)
