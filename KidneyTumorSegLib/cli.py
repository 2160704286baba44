"""The command line: ``kidney-tumor-seg`` (also ``python -m KidneyTumorSegLib``).

Every user error ends in one sentence on stderr and a non-zero exit code, never a traceback.
Outputs are written only after the run succeeded, and appear all together or not at all
(``io.outputs_together``), so Ctrl-C leaves nothing half-written.

Exit codes: 0 done (also when no kidney is in view: the result is then empty and says so),
1 unexpected internal error, 2 unusable input or arguments, 3 weights missing or damaged,
4 device unavailable, 5 not a CT in Hounsfield units (``--allow-non-ct`` overrides), 6 not enough
memory, 7 a file could not be read or written, 8 (``batch`` only) at least one case failed, 130
cancelled (Ctrl-C, or SIGTERM from Slicer's Cancel). With ``--progress json`` stdout carries one
JSON object per line (the protocol the Slicer module reads): ``progress``, ``warning``, then
``done`` or ``error``; ``--list-series`` sends one ``series`` object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .errors import Cancelled, KidneyTumorSegError

log = logging.getLogger("KidneyTumorSeg")
CANCELLED = "Cancelled; no output was written."


class Reporter:
    """Progress and messages in the chosen style (bar on stderr, JSON lines on stdout, or none)."""

    def __init__(self, style: str = "bar"):
        self.style = style
        self._last = -1

    def emit(self, event: str, **data) -> None:
        if self.style == "json":
            print(json.dumps({"event": event, **data}), flush=True)

    def progress(self, fraction: float, message: str) -> None:
        fraction = max(0.0, min(1.0, float(fraction)))
        if self.style == "json":
            self.emit("progress", fraction=round(fraction, 4), message=message)
        elif self.style == "bar" and sys.stderr.isatty():
            n = int(fraction * 30)
            sys.stderr.write(f"\r[{'#' * n}{'.' * (30 - n)}] {fraction * 100:5.1f}% {message[:50]:<50}")
            sys.stderr.flush()
            if fraction >= 1.0:
                sys.stderr.write("\n")
        elif self.style == "bar" and int(fraction * 10) != self._last:
            self._last = int(fraction * 10)
            print(f"{fraction * 100:5.1f}% {message}", file=sys.stderr, flush=True)

    def info(self, text: str) -> None:
        if self.style == "json":
            print(text, file=sys.stderr, flush=True)
        elif self.style != "none" or text:
            print(text, flush=True)


class _JsonWarnings(logging.Handler):
    def __init__(self, reporter: Reporter):
        super().__init__(logging.WARNING)
        self.reporter = reporter

    def emit(self, record):
        from .pipeline import NO_KIDNEY

        if self.reporter.style == "json":
            self.reporter.emit("warning", message=record.getMessage())
        elif record.getMessage() != NO_KIDNEY:  # the summary says it, once
            print(f"Warning: {record.getMessage()}", file=sys.stderr, flush=True)


# --- output safety: checked before any work, written only when everything succeeded ---------------
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _nearest_existing_parent(path: Path) -> Path:
    parent = path.resolve().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _check_outputs(args, input_path: Path) -> None:
    """Refuse, before any work, outputs that would overwrite the input (or the weights, or each other),
    that are folders or devices, that have the wrong suffix, or that land in a folder that cannot be written.
    """
    from .errors import FileWriteError, InputError
    from .snapshot import snapshot_format

    if not input_path.exists():
        if input_path.is_symlink():
            raise InputError(f"The input {input_path} is a link to a file that does not exist.")
        raise InputError(f"The input {input_path} does not exist.")
    protected = [("input", input_path)]
    if getattr(args, "weights", None):
        protected.append(("weights file", Path(args.weights)))
    seen: list[Path] = []
    for out in [args.output, args.labelmap, args.report, args.snapshot]:
        if out is None:
            continue
        out = Path(out)
        for what, other in protected:
            if _same_file(out, other):
                raise InputError(f"The output {out} is the {what} itself; choose another output path.")
        if input_path.is_dir() and input_path.resolve() in out.resolve().parents and out.exists():
            raise InputError(f"The output {out} lies inside the input folder and already exists; choose another path.")
        if any(_same_file(out, s) for s in seen):
            raise InputError(f"The output {out} is given twice; give each output its own file name.")
        seen.append(out)
        if out.is_dir():
            raise InputError(f"The output {out} is a folder; give a file name.")
        if out.exists() and not out.is_file():
            raise InputError(f"The output {out} exists and is not a regular file; choose another path.")
        parent = _nearest_existing_parent(out)
        if not parent.is_dir():
            raise FileWriteError(f"The output {out} cannot be written: {parent} is a file, not a folder.")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise FileWriteError(f"The output {out} cannot be written: the folder {parent} is not writable.")
    if not str(args.output).endswith(".seg.nrrd"):
        raise InputError(f"The segmentation output {args.output} must end in .seg.nrrd.")
    if args.labelmap and not str(args.labelmap).lower().endswith(LABELMAP_SUFFIXES):
        raise InputError(
            f"The label map output {args.labelmap} must end in one of {', '.join(LABELMAP_SUFFIXES)}."
        )
    if args.snapshot:
        snapshot_format(args.snapshot)


def _geometry_only(volume):
    """The scan's grid without its voxels (a zero-stride array): all the segmentation file needs.

    Releasing the voxels before writing lowers the peak memory of a large scan by 2 bytes a voxel.
    """
    import numpy as np

    from .volume import Volume

    return Volume(np.broadcast_to(np.zeros((), np.uint8), volume.array.shape), volume.spacing, volume.origin,
                  volume.direction)


def _terminate_as_interrupt(signum, frame):  # Slicer's Cancel sends SIGTERM: clean up as for Ctrl-C
    raise KeyboardInterrupt


def _positive_threads(text: str) -> int:
    """``--threads``: a whole number of at least 1 (0 or -3 would silently mean torch's default)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_pipeline(args):
    """The networks, loaded once for however many scans follow."""
    from .pipeline import Pipeline

    return Pipeline.from_weights(args.weights, device=args.device, allow_non_ct=args.allow_non_ct,
                                 mirror_x=False if getattr(args, "no_mirror", False) else None)


def _series_warning(input_path: Path, choice) -> str | None:
    """The sentence that names the series a folder's scan came from, when it held more than one."""
    if choice is None or choice.explicit or len(choice.all) < 2:
        return None
    s = choice.series
    return (f"The folder {input_path} holds {len(choice.all)} image series; segmenting {s.name} ({s.slices} slices, "
            f"UID {s.uid}) because {choice.reason}; --series NUMBER|UID picks another, --list-series lists them.")


def segment_scan(args, pipeline, reporter: Reporter) -> tuple[dict, dict[str, str], bool]:
    """One scan, start to finish: header and memory checks, read, segment, write every output.

    Returns the report, the outputs written and whether the result is empty. The outputs appear
    all together or not at all; a failure leaves whatever the targets held before.
    """
    from .io import outputs_together, quiet_native_stderr, read_image_information, read_volume
    from .memory import check_run_fits
    from .report import write_report

    input_path = Path(args.input)
    _check_outputs(args, input_path)
    with quiet_native_stderr():
        info = read_image_information(input_path, getattr(args, "series", None))
    series_warning = _series_warning(input_path, info.series)
    if series_warning:
        log.warning(series_warning)
    # refuse up front, before reading a voxel, a run that cannot fit in memory
    estimate = check_run_fits(info.size[:3], info.spacing[:3], info.bytes_per_voxel, pipeline.config,
                              input_path, keep_image=bool(args.snapshot))
    reporter.progress(0.0, f"Reading {args.input}")
    t0 = time.perf_counter()
    with quiet_native_stderr():
        volume = read_volume(input_path, info)
    t_read = time.perf_counter() - t0
    result = pipeline.run(volume, progress=reporter.progress, source=input_path)
    report = result.report
    report["timings_s"]["read"] = round(t_read, 4)
    report["input"] = {
        "path": str(args.input),
        "shape_zyx": list(volume.array.shape),
        "spacing_xyz": list(volume.spacing),
    }
    if info.series is not None:
        report["input"]["series"] = info.series.as_dict()
    if series_warning:
        report["warnings"].insert(0, series_warning)
    report["memory_estimate_gb"] = round(estimate.gb, 2)
    if not args.snapshot:  # only the picture needs the scan's voxels: free them now
        volume = _geometry_only(volume)
    with outputs_together():
        t0 = time.perf_counter()
        outputs = _write_outputs(args, volume, result)
        report["timings_s"]["write"] = round(time.perf_counter() - t0, 4)
        report["timings_s"]["total"] = round(
            sum(v for k, v in report["timings_s"].items() if k != "total"), 4
        )
        if args.report:
            write_report(report, args.report)
            outputs["report"] = str(args.report)
    return report, outputs, result.empty


@contextlib.contextmanager
def _command_line_run(reporter: Reporter):
    """Warnings through the reporter, and Slicer's SIGTERM handled like Ctrl-C, for one command."""
    handler = _JsonWarnings(reporter)
    log.addHandler(handler)
    log.propagate = False
    previous_sigterm = None
    with contextlib.suppress(ValueError, OSError):  # only possible in the main thread
        previous_sigterm = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        yield
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        log.removeHandler(handler)
        log.propagate = True


def run_segment(args) -> int:
    from .errors import InputError
    from .report import summary_text

    if getattr(args, "list_series", False):
        return run_list_series(args)
    if not args.output:
        raise InputError("Give the segmentation file to write with -o OUT.seg.nrrd.")
    if getattr(args, "series", None) and Path(args.input).is_file():
        raise InputError(f"--series chooses a series of a DICOM folder, and {args.input} is a file.")
    reporter = Reporter(args.progress)
    with _command_line_run(reporter):
        _check_outputs(args, Path(args.input))
        _set_threads(getattr(args, "threads", None))
        pipeline = load_pipeline(args)
        report, outputs, _ = segment_scan(args, pipeline, reporter)
        reporter.emit("done", report=report, outputs=outputs)
        reporter.info(summary_text(report))
        reporter.info("Wrote " + ", ".join(outputs.values()))
        return 0


def run_list_series(args) -> int:
    """``segment FOLDER --list-series``: what a DICOM folder holds, and which series would be used."""
    from .dicom import choose_series
    from .errors import InputError
    from .io import quiet_native_stderr

    folder = Path(args.input)
    if not folder.exists():
        raise InputError(f"The input {folder} does not exist.")
    if not folder.is_dir():
        raise InputError(f"The input {folder} is a file; --list-series lists the series of a DICOM folder.")
    with quiet_native_stderr():
        choice = choose_series(folder, getattr(args, "series", None))
    reporter = Reporter(args.progress)
    if reporter.style == "json":
        reporter.emit("series", series=[s.as_dict() for s in choice.all], chosen=choice.series.uid,
                      reason=choice.reason)
        return 0
    from .dicom import format_series_table

    print(format_series_table(choice, folder))
    return 0


def _write_outputs(args, volume, result) -> dict[str, str]:
    """Write every output; inside ``outputs_together`` none is visible under its name yet."""
    from .io import write_volume
    from .segfile import write_seg_nrrd

    write_seg_nrrd(args.output, result.structures, volume)
    outputs = {"segmentation": str(args.output)}
    if args.labelmap:
        write_volume(result.labels, args.labelmap)
        outputs["labelmap"] = str(args.labelmap)
    if args.snapshot:
        from .snapshot import write_snapshot

        write_snapshot(volume, result.labels, args.snapshot, title=Path(args.input).name)
        outputs["snapshot"] = str(args.snapshot)
    return outputs


def run_demo(args) -> int:
    """Synthetic CT -> bundled weights -> segmentation, report and picture, all in one folder."""
    import numpy as np

    from .io import write_volume
    from .phantoms import make_phantom, procedural_labels

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"Making a synthetic contrast CT (seed {args.seed}) ...", flush=True)
    truth = procedural_labels(args.seed, shape_zyx=(80, 256, 256), spacing_xyz=(1.5, 1.5, 3.0), n_kidneys=2)
    ct, info = make_phantom(truth, args.seed)
    ct_path = write_volume(ct.with_array(np.round(ct.array).astype(np.int16)), out / "demo_ct.nii.gz")
    write_volume(truth, out / "demo_truth.nii.gz")
    seg_args = argparse.Namespace(
        input=str(ct_path),
        output=str(out / "demo.seg.nrrd"),
        labelmap=str(out / "demo_labels.nii.gz"),
        report=str(out / "demo_report.json"),
        snapshot=str(out / "demo.png"),
        device=args.device,
        weights=args.weights,
        progress="bar",
        allow_non_ct=False,
        threads=None,
        series=None,
    )
    code = run_segment(seg_args)
    if code == 0:
        from .io import read_volume

        pred = read_volume(seg_args.labelmap).array
        for name, p, t in (("kidney", pred > 0, truth.array > 0), ("tumour", pred == 2, truth.array == 2)):
            denom = p.sum() + t.sum()
            dice = 2 * (p & t).sum() / denom if denom else 1.0
            print(f"Dice against the phantom's truth, {name}: {dice:.3f}")
        print(f"Open {seg_args.output} in 3D Slicer together with {ct_path}; the picture is {seg_args.snapshot}.")
    return code


def run_export(args) -> int:
    from .export import export_files

    case = export_files(args.segmentation, args.reference, args.out, args.case_id)
    print(f"Wrote {case} (imaging.nii.gz, segmentation.nii.gz, provenance.json).")
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """``-h`` shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS)
                or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"


EXIT_CODES = ("exit codes: 0 done (also when no kidney is found), 1 internal error, 2 unusable input or arguments, "
              "3 weights, 4 device, 5 not a CT in HU, 6 not enough memory, 7 file error, 130 cancelled")


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    """The options segment and batch share: how the networks run."""
    p.add_argument("--series", metavar="UID|N",
                   help="for a DICOM folder: the series to segment, by Series Instance UID or series number "
                   "(default: an axial original CT, the one --list-series stars)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--threads", type=_positive_threads, metavar="N",
                   help="CPU threads for the networks, 1 or more (default: torch's; 1 is faster on a busy machine)")
    p.add_argument("--weights", help="weights bundle (.safetensors) (default: the bundled weights)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="progress on stderr as a bar, as JSON lines on stdout (the Slicer module's protocol), "
                   "or none")
    p.add_argument("--allow-non-ct", action="store_true", help="run even if the image does not look like HU CT")
    p.add_argument("--no-mirror", action="store_true",
                   help="skip test-time mirroring: one segmenter pass per window instead of two (faster, less accurate)")


def build_parser() -> argparse.ArgumentParser:
    from .batch import BATCH_FAILED, run_batch
    from .snapshot import SNAPSHOT_FORMATS

    parser = argparse.ArgumentParser(
        prog="kidney-tumor-seg",
        description="Kidney and kidney-tumour segmentation in contrast-enhanced abdominal CT.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment a CT volume file or DICOM folder", epilog=EXIT_CODES)
    seg.add_argument("input", help="CT volume (NIfTI, NRRD, MHA, ...) or a DICOM folder (subfolders are searched)")
    seg.add_argument("-o", "--output", help="Slicer segmentation file to write (.seg.nrrd); required unless "
                     "--list-series")
    seg.add_argument("--labelmap", help="also write a label map (0 background, 1 kidney, 2 tumour)")
    seg.add_argument("--report", help="also write a JSON report (volumes, diameters, series, timings)")
    seg.add_argument("--snapshot", help="also write a picture with axial and coronal views, in the format its "
                     f"suffix names ({', '.join(SNAPSHOT_FORMATS)})")
    seg.add_argument("--list-series", action="store_true",
                     help="list the image series of a DICOM folder (slices, spacing, description) and exit")
    _add_engine_options(seg)
    seg.set_defaults(func=run_segment)

    batch = sub.add_parser(
        "batch", help="segment many scans: files, DICOM folders or a KiTS-layout folder",
        description="Segment every case the inputs name, loading the networks once: one subfolder per case in "
        "--out-dir (segmentation, label map, report) and summary.csv (case, status, volumes per side, tumour "
        "diameter, seconds). A case that fails is recorded and the batch goes on.",
        epilog=f"exit codes: 0 every case done, {BATCH_FAILED} finished but at least one case failed (see "
        "summary.csv), 2 unusable arguments, 3 weights, 4 device, 130 cancelled (the summary lists the cases "
        "done so far)",
    )
    batch.add_argument("inputs", nargs="+", metavar="INPUT",
                       help="a volume file, a DICOM folder, a KiTS case folder (imaging.nii.gz) or a KiTS data "
                       "folder (case_*/imaging.nii.gz)")
    batch.add_argument("--out-dir", required=True, help="folder for the results: one subfolder per case")
    batch.add_argument("--skip-existing", action="store_true",
                       help="leave cases whose report is already in --out-dir as they are (resume a batch)")
    batch.add_argument("--snapshot", action="store_true", help="also write a PNG picture per case")
    _add_engine_options(batch)
    batch.set_defaults(func=run_batch)

    demo = sub.add_parser("demo", help="segment a synthetic CT with the bundled weights and show the result")
    demo.add_argument("--out", default="kidney-tumor-seg-demo", help="output folder")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the synthetic CT")
    demo.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    demo.add_argument("--weights", help="weights bundle (default: the bundled weights)")
    demo.set_defaults(func=run_demo)

    exp = sub.add_parser(
        "export", help="write a corrected segmentation and its CT as a KiTS training case",
        description="Write SEG (a .seg.nrrd, e.g. corrected in Slicer) and the CT it was made on as "
        "OUT/case_XXXXX/imaging.nii.gz + segmentation.nii.gz (0 background, 1 kidney, 2 tumour on the CT's grid), "
        "which 'train --data OUT' reads. Segments map by their terminology; existing cases are never overwritten.",
        epilog="exit codes: 0 written, 2 unusable input (segment that maps to no label, case exists, ...), 7 file error",
    )
    exp.add_argument("segmentation", help="Slicer segmentation file (.seg.nrrd)")
    exp.add_argument("--reference", required=True, help="the CT the segmentation was made on (file or DICOM folder)")
    exp.add_argument("--out", required=True, help="folder of KiTS cases (created if missing)")
    exp.add_argument("--case-id", help="case name or number (default: one past the highest case in --out)")
    exp.set_defaults(func=run_export)

    for module, names in (
        ("KidneyTumorSegLib.phantoms.cli", ("add_phantom_parser", "add_gallery_parser")),
        ("KidneyTumorSegLib.training.cli", ("add_train_parser", "add_evaluate_parser")),
    ):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:  # a part of the library that is not installed in this build
            continue
        for name in names:
            getattr(mod, name)(sub)
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    style = getattr(args, "progress", "bar")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return _fail(Cancelled(CANCELLED), style)
    except KidneyTumorSegError as err:
        return _fail(err, style)
    except MemoryError:
        return _fail(_out_of_memory(), style)
    except OSError as err:
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        reason = (err.strerror or str(err) or type(err).__name__).rstrip(".")
        return _fail(_exit(KidneyTumorSegError(f"A file could not be read or written{where}: {reason}."), 7), style)
    except Exception as err:  # never a traceback: one sentence, and the details on demand
        if "out of memory" in str(err).lower() or "can't allocate memory" in str(err).lower():
            return _fail(_out_of_memory(), style)
        if os.environ.get("KIDNEY_TUMOR_SEG_DEBUG"):
            import traceback

            traceback.print_exc()
        message = (
            f"An unexpected internal error stopped the run ({type(err).__name__}); no output was written, "
            "and setting KIDNEY_TUMOR_SEG_DEBUG=1 shows the details to report."
        )
        return _fail(_exit(KidneyTumorSegError(message), 1), style)


def _exit(err: KidneyTumorSegError, code: int) -> KidneyTumorSegError:
    err.exit_code = code
    return err


def _out_of_memory() -> KidneyTumorSegError:
    from .memory import NotEnoughMemoryError

    return NotEnoughMemoryError(
        "The computer ran out of memory; no output was written, so close other programs or use a computer "
        "with more memory."
    )


def _fail(err: KidneyTumorSegError, style: str) -> int:
    _say_error(err, style)
    return err.exit_code


def _say_error(err: Exception, style: str) -> None:
    if style == "json":
        print(json.dumps({"event": "error", "message": str(err), "exit_code": getattr(err, "exit_code", 1)}),
              flush=True)
    if isinstance(err, Cancelled):  # the user asked for it: no error, just what happened
        print(str(err), file=sys.stderr, flush=True)
    else:
        print(f"Error: {err}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
