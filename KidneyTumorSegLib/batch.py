"""Many scans in one run (``kidney-tumor-seg batch``): one subfolder per case and a summary table.

The networks are loaded once. Each case is written the way ``segment`` writes one scan (all its
outputs together or none), a case that fails is recorded in ``summary.csv`` with its reason and
exit code and the batch goes on, and the summary is rewritten after every case, so a batch that
is stopped leaves a true account of what was done. ``--skip-existing`` resumes: a case whose
report is already there is not run again.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, KidneyTumorSegError
from .kits import IMAGE_FILE
from .terminology import SIDES

#: Exit code of a batch that finished with at least one failed case (summary.csv says which).
BATCH_FAILED = 8
SIDE_FIELDS = ("kidney_without_tumour_ml", "kidney_with_tumour_ml", "tumour_ml", "tumour_diameter_mm")
COLUMNS = ("case", "status", "exit_code", "message", "input", "series",
           *(f"{side}_{f}" for side in SIDES for f in SIDE_FIELDS), "seconds")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


@dataclass
class Case:
    name: str
    input: Path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return path.stem or name


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def find_cases(inputs) -> list[Case]:
    """The cases the inputs name: volume files, DICOM folders, KiTS case folders or a KiTS data folder.

    A folder holding ``case_*/imaging.nii.gz`` gives one case per ``case_*``; a folder holding
    ``imaging.nii.gz`` is one KiTS case; any other folder is one DICOM study. Case names come
    from the file or folder names, made unique where two inputs share one.
    """
    cases: list[Case] = []
    for text in inputs:
        path = Path(text)
        if not path.exists():
            raise InputError(f"The input {path} does not exist.")
        if path.is_file():
            cases.append(Case(_safe(_stem(path)), path))
        elif (path / IMAGE_FILE).is_file():
            cases.append(Case(_safe(path.resolve().name), path / IMAGE_FILE))
        else:
            kits = sorted(p for p in path.glob("case_*") if (p / IMAGE_FILE).is_file())
            if kits:
                cases += [Case(_safe(p.name), p / IMAGE_FILE) for p in kits]
            else:
                cases.append(Case(_safe(path.resolve().name), path))
    seen: dict[str, int] = {}
    for case in cases:
        n = seen.get(case.name, 0)
        seen[case.name] = n + 1
        if n:
            case.name = f"{case.name}_{n + 1}"
    return cases


def case_outputs(out_dir: Path, name: str, snapshot: bool) -> dict[str, Path | None]:
    folder = out_dir / name
    return {
        "output": folder / f"{name}.seg.nrrd",
        "labelmap": folder / f"{name}_labels.nii.gz",
        "report": folder / f"{name}_report.json",
        "snapshot": folder / f"{name}.png" if snapshot else None,
    }


def summary_row(case: Case, status: str, report: dict | None = None, seconds: float | None = None,
                exit_code: int = 0, message: str = "") -> dict:
    row = {c: "" for c in COLUMNS}
    row.update(case=case.name, status=status, exit_code=exit_code, message=message, input=str(case.input))
    if report:
        series = report.get("input", {}).get("series")
        if series:
            row["series"] = f"{series.get('number', '')} {series.get('description', '')} ({series.get('uid', '')})"
        for side in SIDES:
            values = report.get("sides", {}).get(side, {})
            for field in SIDE_FIELDS:
                if field in values:
                    row[f"{side}_{field}"] = values[field]
    if seconds is not None:
        row["seconds"] = round(seconds, 1)
    return row


def write_summary(rows: list[dict], path: Path) -> None:
    from .io import atomic_output

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path, suffix=".csv") as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")  # DICOM descriptions need not be ASCII


def _earlier_report(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _failure(err: BaseException) -> tuple[int, str]:
    """Exit code and one sentence for a case that failed, as ``segment`` would end."""
    if isinstance(err, KidneyTumorSegError):
        return err.exit_code, str(err)
    if isinstance(err, MemoryError):
        return 6, "The computer ran out of memory."
    if isinstance(err, OSError):
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        return 7, f"A file could not be read or written{where}: {(err.strerror or str(err)).rstrip('.')}."
    return 1, f"An unexpected internal error stopped this case ({type(err).__name__})."


def run_batch(args) -> int:
    from .cli import Reporter, _command_line_run, _set_threads, load_pipeline, segment_scan

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"The output folder {out_dir} is a file; give a folder for the batch's results.")
    cases = find_cases(args.inputs)
    if not cases:
        raise InputError("No case was found in the inputs given.")
    reporter = Reporter(args.progress)
    summary = out_dir / "summary.csv"
    rows: list[dict] = []
    pipeline = None
    with _command_line_run(reporter):
        _set_threads(getattr(args, "threads", None))
        for i, case in enumerate(cases):
            targets = case_outputs(out_dir, case.name, bool(args.snapshot))
            prefix = f"[{i + 1}/{len(cases)}] {case.name}"
            if args.skip_existing and targets["report"].is_file():
                earlier = _earlier_report(targets["report"])
                if earlier is not None:
                    status = "done" if earlier.get("kidney_found", True) else "no kidney"
                    rows.append(summary_row(case, status, earlier, message="kept from an earlier run"))
                    write_summary(rows, summary)
                    reporter.info(f"{prefix}: kept from an earlier run")
                    continue
            if pipeline is None:  # loaded once, and only when a case needs it
                pipeline = load_pipeline(args)
            case_args = argparse.Namespace(input=str(case.input), series=args.series, weights=args.weights,
                                           **{k: (str(v) if v else None) for k, v in targets.items()})
            t0 = time.perf_counter()
            try:
                report, _, empty = segment_scan(case_args, pipeline, _CaseProgress(reporter, i, len(cases), case))
                status = "no kidney" if empty else "done"
                rows.append(summary_row(case, status, report, time.perf_counter() - t0))
                reporter.info(f"{prefix}: {status}")
            except KeyboardInterrupt:
                write_summary(rows, summary)
                raise
            except Exception as err:  # one broken case is reported; the batch goes on
                code, message = _failure(err)
                rows.append(summary_row(case, "failed", None, time.perf_counter() - t0, code, message))
                reporter.info(f"{prefix}: failed: {message}")
            write_summary(rows, summary)
    failed = sum(r["status"] == "failed" for r in rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "no kidney", "failed")}
    reporter.emit("done", summary=str(summary), cases=counts)
    reporter.info(f"{len(rows) - failed} of {len(rows)} cases segmented"
                  + (f", {failed} failed" if failed else "") + f"; the summary is {summary}.")
    return BATCH_FAILED if failed else 0


class _CaseProgress:
    """One case's progress as a part of the batch's (fraction of all cases, message naming the case)."""

    def __init__(self, reporter, index: int, total: int, case: Case):
        self.reporter, self.index, self.total, self.case = reporter, index, total, case
        self.style = reporter.style

    def progress(self, fraction: float, message: str) -> None:
        self.reporter.progress((self.index + max(0.0, min(1.0, fraction))) / self.total,
                               f"{self.case.name}: {message}")

    def emit(self, event: str, **data) -> None:
        self.reporter.emit(event, case=self.case.name, **data)

    def info(self, text: str) -> None:
        self.reporter.info(text)
