"""The command line: ``kidney-tumor-seg`` (also ``python -m KidneyTumorSegLib``).

Every user error ends in one sentence on stderr and a non-zero exit code, never a traceback.
Outputs are written only after the run succeeded, each atomically, so Ctrl-C leaves nothing
half-written. With ``--progress json`` stdout carries one JSON object per line (the protocol the
Slicer module reads): ``progress``, ``warning``, then ``done`` or ``error``.
"""

from __future__ import annotations

import argparse
import json
import logging
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


def _check_outputs(args, input_path: Path) -> None:
    """Refuse outputs that would overwrite the input or land in a folder that cannot be written."""
    from .errors import InputError

    if not input_path.exists():
        raise InputError(f"The input {input_path} does not exist.")
    for out in [args.output, args.labelmap, args.report, args.snapshot]:
        if out is None:
            continue
        out = Path(out)
        if out.exists() and input_path.exists() and out.resolve() == input_path.resolve():
            raise InputError(f"The output {out} is the input itself; choose another output path.")
        if out.is_dir():
            raise InputError(f"The output {out} is a folder; give a file name.")
    if not str(args.output).endswith(".seg.nrrd"):
        raise InputError(f"The segmentation output {args.output} must end in .seg.nrrd.")


def run_segment(args) -> int:
    from .io import read_volume
    from .pipeline import Pipeline
    from .report import summary_text, write_report

    reporter = Reporter(args.progress)
    handler = _JsonWarnings(reporter)
    log.addHandler(handler)
    log.propagate = False
    try:
        _check_outputs(args, Path(args.input))
        pipeline = Pipeline.from_weights(args.weights, device=args.device, allow_non_ct=args.allow_non_ct)
        reporter.progress(0.0, f"Reading {args.input}")
        t0 = time.perf_counter()
        volume = read_volume(args.input)
        t_read = time.perf_counter() - t0
        result = pipeline.run(volume, progress=reporter.progress)
        report = result.report
        report["timings_s"]["read"] = round(t_read, 4)
        report["input"] = {
            "path": str(args.input),
            "shape_zyx": list(volume.array.shape),
            "spacing_xyz": list(volume.spacing),
        }
        t0 = time.perf_counter()
        outputs = _write_outputs(args, volume, result)
        report["timings_s"]["write"] = round(time.perf_counter() - t0, 4)
        report["timings_s"]["total"] = round(
            sum(v for k, v in report["timings_s"].items() if k != "total"), 4
        )
        if args.report:
            write_report(report, args.report)
        reporter.emit("done", report=report, outputs=outputs)
        reporter.info(summary_text(report))
        reporter.info("Wrote " + ", ".join(outputs.values()))
        return 0
    finally:
        log.removeHandler(handler)
        log.propagate = True


def _write_outputs(args, volume, result) -> dict[str, str]:
    from .io import write_volume
    from .segfile import write_seg_nrrd

    outputs = {"segmentation": str(write_seg_nrrd(args.output, result.structures, volume))}
    if args.labelmap:
        outputs["labelmap"] = str(write_volume(result.labels, args.labelmap))
    if args.snapshot:
        from .snapshot import write_snapshot

        outputs["snapshot"] = str(write_snapshot(volume, result.labels, args.snapshot, title=Path(args.input).name))
    if args.report:
        outputs["report"] = str(args.report)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kidney-tumor-seg",
        description="Kidney and kidney-tumour segmentation in contrast-enhanced abdominal CT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment a CT volume file or DICOM folder")
    seg.add_argument("input", help="CT volume (NIfTI, NRRD, MHA, ...) or a DICOM folder")
    seg.add_argument("-o", "--output", required=True, help="Slicer segmentation file to write (.seg.nrrd)")
    seg.add_argument("--labelmap", help="also write a label map (0 background, 1 kidney, 2 tumour)")
    seg.add_argument("--report", help="also write a JSON report (volumes, diameters, timings)")
    seg.add_argument("--snapshot", help="also write a PNG with axial and coronal views")
    seg.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    seg.add_argument("--weights", help="weights bundle (.safetensors); default: the bundled weights")
    seg.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    seg.add_argument("--allow-non-ct", action="store_true", help="run even if the image does not look like HU CT")
    seg.set_defaults(func=run_segment)

    demo = sub.add_parser("demo", help="segment a synthetic CT with the bundled weights and show the result")
    demo.add_argument("--out", default="kidney-tumor-seg-demo", help="output folder")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--weights", help="weights bundle; default: the bundled weights")
    demo.set_defaults(func=run_demo)

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
        err = Cancelled("Cancelled by the user; no output was written.")
        _say_error(err, style)
        return err.exit_code
    except KidneyTumorSegError as err:
        _say_error(err, style)
        return err.exit_code
    except MemoryError:
        _say_error(KidneyTumorSegError("The computer ran out of memory; try a smaller volume or the CPU."), style)
        return 6
    except OSError as err:
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        _say_error(KidneyTumorSegError(f"A file could not be read or written{where}: {err.strerror or err}."), style)
        return 7


def _say_error(err: Exception, style: str) -> None:
    if style == "json":
        print(json.dumps({"event": "error", "message": str(err)}), flush=True)
    print(f"Error: {err}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
