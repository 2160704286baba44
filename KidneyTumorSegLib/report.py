"""The run's report: JSON for machines, a short readable summary for people."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .io import atomic_output
from .terminology import SIDES


def write_report(report: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path


def summary_text(report: dict) -> str:
    """A few lines a surgeon can read: per side the kidney with and without tumour, the tumour's
    volume and largest diameter. "Kidney with tumour" and "kidney without tumour" are the only two
    kidney volumes, named the same in the JSON keys, here and in Slicer's table."""
    from .pipeline import NO_KIDNEY

    lines = []
    sides = report.get("sides", {})
    if not sides:
        lines.append(NO_KIDNEY)
    for side in SIDES:
        s = sides.get(side)
        if not s:
            continue
        if s.get("tumour_ml", 0) > 0:
            n = s.get("tumour_count", 1)
            what = "tumour" if n == 1 else f"{n} tumours"
            lines.append(
                f"{side.capitalize()} kidney with tumour {s['kidney_with_tumour_ml']:.1f} mL = kidney without "
                f"tumour {s['kidney_without_tumour_ml']:.1f} mL + {what} {s['tumour_ml']:.1f} mL "
                f"(largest diameter {s['tumour_diameter_mm']:.0f} mm)"
            )
        else:
            lines.append(f"{side.capitalize()} kidney {s['kidney_with_tumour_ml']:.1f} mL, no tumour")
    phase = report.get("contrast")
    if phase:
        lines.append(f"Contrast: {phase['phase']} (kidneys about {phase['kidney_median_hu']:.0f} HU)")
    for w in report.get("warnings", []):
        if w != NO_KIDNEY:
            lines.append(f"Warning: {w}")
    t = report.get("timings_s", {})
    if t:
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k != "total")
        lines.append(f"Time: {t.get('total', 0):.1f} s ({stages}) on {report.get('device', '?')}")
    return "\n".join(lines)
