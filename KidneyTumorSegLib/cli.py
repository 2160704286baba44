"""The command line: ``kidney-tumor-seg`` (also ``python -m KidneyTumorSegLib``).

Every user error ends in one sentence on stderr and a non-zero exit code, never a traceback.
Outputs are written only after the run succeeded, each atomically, so Ctrl-C leaves nothing
half-written.

Exit codes: 0 done (also when no kidney is in view: the result is then empty and says so),
1 unexpected internal error, 2 unusable input or arguments, 3 weights missing or damaged,
4 device unavailable, 5 not a CT in Hounsfield units (``--allow-non-ct`` overrides), 6 not enough
memory, 7 a file could not be read or written, 130 cancelled (Ctrl-C, or SIGTERM from Slicer's Cancel). With ``--progress json`` stdout carries one JSON object per line (the protocol the
Slicer module reads): ``progress``, ``warning``, then ``done`` or ``error``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .errors import Cancelled, KidneyTumorSegError

log = logging.getLogger("KidneyTumorSeg")


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
        if self.reporter.style == "json":
            self.reporter.emit("warning", message=record.getMessage())
        else:
            print(f"Warning: {record.getMessage()}", file=sys.stderr, flush=True)


# --- [issue 6] output safety: checked before any work, written only when everything succeeded -----
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
    from .errors import InputError

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
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"The output {out} cannot be written: the folder {parent} is not writable.")
    if not str(args.output).endswith(".seg.nrrd"):
        raise InputError(f"The segmentation output {args.output} must end in .seg.nrrd.")
    if args.labelmap and not str(args.labelmap).lower().endswith(LABELMAP_SUFFIXES):
        raise InputError(
            f"The label map output {args.labelmap} must end in one of {', '.join(LABELMAP_SUFFIXES)}."
        )


def _format_suffix(path: Path) -> str:
    """The suffix that tells the writers the format: ``.seg.nrrd``, ``.nii.gz``, ``.png``, ..."""
    name = path.name.lower()
    for multi in (".seg.nrrd", ".nii.gz"):
        if name.endswith(multi):
            return path.name[-len(multi):]
    return path.suffix


class _StagedOutputs:
    """Outputs written to hidden files beside their targets, renamed into place all together at the end.

    A failure or Ctrl-C before :meth:`commit` removes every staged file and leaves whatever the
    targets held before untouched; signals are held back during the renames, so the outputs appear
    all together or not at all.
    """

    def __init__(self):
        self.token = secrets.token_hex(4)
        self.staged: list[tuple[Path, Path]] = []
        self.created: list[Path] = []  # folders made for the outputs, removed again if nothing lands

    def path(self, final) -> Path:
        final = Path(final)
        missing = [d for d in [final.parent, *final.parent.parents] if not d.exists()]
        final.parent.mkdir(parents=True, exist_ok=True)
        self.created += missing
        tmp = final.with_name(f".{final.name}.{self.token}.partial{_format_suffix(final)}")
        self.staged.append((tmp, final))
        return tmp

    def commit(self) -> None:
        blocked = {signal.SIGINT, signal.SIGTERM}
        can_block = hasattr(signal, "pthread_sigmask")
        if can_block:
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            for tmp, final in self.staged:
                os.replace(tmp, final)
            self.staged, self.created = [], []
        finally:
            if can_block:
                # A Ctrl-C that came during the renames is too late to cancel: the outputs are whole.
                for sig in signal.sigpending() & blocked:
                    signal.sigwait({sig})
                signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)

    def discard(self) -> None:
        for tmp, _ in self.staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        for folder in self.created:  # deepest first; a folder something else wrote into stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.staged, self.created = [], []


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


def run_segment(args) -> int:
    from .io import quiet_native_stderr, read_image_information, read_volume
    from .memory import check_run_fits
    from .pipeline import NO_KIDNEY, Pipeline
    from .report import summary_text, write_report

    reporter = Reporter(args.progress)
    handler = _JsonWarnings(reporter)
    log.addHandler(handler)
    log.propagate = False
    staged = _StagedOutputs()
    previous_sigterm = None
    with contextlib.suppress(ValueError, OSError):  # only possible in the main thread
        previous_sigterm = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        input_path = Path(args.input)
        _check_outputs(args, input_path)
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(max(1, args.threads))
        pipeline = Pipeline.from_weights(args.weights, device=args.device, allow_non_ct=args.allow_non_ct,
                                         mirror_x=False if getattr(args, "no_mirror", False) else None)
        with quiet_native_stderr():
            info = read_image_information(input_path)
        # [issue 6] refuse up front, before reading a voxel, a run that cannot fit in memory
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
        report["memory_estimate_gb"] = round(estimate.gb, 2)
        if not args.snapshot:  # [issue 6] only the picture needs the scan's voxels: free them now
            volume = _geometry_only(volume)
        t0 = time.perf_counter()
        outputs = _write_outputs(args, volume, result, staged)
        report["timings_s"]["write"] = round(time.perf_counter() - t0, 4)
        report["timings_s"]["total"] = round(
            sum(v for k, v in report["timings_s"].items() if k != "total"), 4
        )
        if args.report:
            write_report(report, staged.path(args.report))
            outputs["report"] = str(args.report)
        staged.commit()
        reporter.emit("done", report=report, outputs=outputs)
        reporter.info(summary_text(report))
        if result.empty:
            reporter.info(f"{NO_KIDNEY} The segmentation file holds no segment.")
        reporter.info("Wrote " + ", ".join(outputs.values()))
        return 0
    finally:
        staged.discard()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        log.removeHandler(handler)
        log.propagate = True


def _write_outputs(args, volume, result, staged: _StagedOutputs) -> dict[str, str]:
    """Write every output to its staged file; nothing is visible under the final names yet."""
    from .io import write_volume
    from .segfile import write_seg_nrrd

    write_seg_nrrd(staged.path(args.output), result.structures, volume)
    outputs = {"segmentation": str(args.output)}
    if args.labelmap:
        write_volume(result.labels, staged.path(args.labelmap))
        outputs["labelmap"] = str(args.labelmap)
    if args.snapshot:
        from .snapshot import write_snapshot

        write_snapshot(volume, result.labels, staged.path(args.snapshot), title=Path(args.input).name)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kidney-tumor-seg",
        description="Kidney and kidney-tumour segmentation in contrast-enhanced abdominal CT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment", help="segment a CT volume file or DICOM folder",
        epilog="exit codes: 0 done (also when no kidney is found), 1 internal error, 2 unusable input or "
        "arguments, 3 weights, 4 device, 5 not a CT in HU, 6 not enough memory, 7 file error, 130 cancelled",
    )
    seg.add_argument("input", help="CT volume (NIfTI, NRRD, MHA, ...) or a DICOM folder")
    seg.add_argument("-o", "--output", required=True, help="Slicer segmentation file to write (.seg.nrrd)")
    seg.add_argument("--labelmap", help="also write a label map (0 background, 1 kidney, 2 tumour)")
    seg.add_argument("--report", help="also write a JSON report (volumes, diameters, timings)")
    seg.add_argument("--snapshot", help="also write a PNG with axial and coronal views")
    seg.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    seg.add_argument("--threads", type=int, help="CPU threads for the networks (default: torch's; 1 is faster on a busy machine)")
    seg.add_argument("--weights", help="weights bundle (.safetensors); default: the bundled weights")
    seg.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    seg.add_argument("--allow-non-ct", action="store_true", help="run even if the image does not look like HU CT")
    seg.add_argument("--no-mirror", action="store_true",
                     help="skip test-time mirroring: one segmenter pass per window instead of two (faster, less accurate)")
    seg.set_defaults(func=run_segment)

    demo = sub.add_parser("demo", help="segment a synthetic CT with the bundled weights and show the result")
    demo.add_argument("--out", default="kidney-tumor-seg-demo", help="output folder")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--weights", help="weights bundle; default: the bundled weights")
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
        return _fail(Cancelled("Cancelled by the user; no output was written."), style)
    except KidneyTumorSegError as err:
        return _fail(err, style)
    except MemoryError:
        return _fail(_out_of_memory(), style)
    except OSError as err:
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        reason = (err.strerror or str(err) or type(err).__name__).rstrip(".")
        return _fail(_exit(KidneyTumorSegError(f"A file could not be read or written{where}: {reason}."), 7), style)
    except Exception as err:  # [issue 6] never a traceback: one sentence, and the details on demand
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
    print(f"Error: {err}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
