"""Bad and doubtful input: whatever file a clinician hands over, the answer is clear.

Unusable files (2D, 4D, empty, truncated, not an image, missing, NaN, constant) end in one sentence
naming the file, exit code 2 and nothing written. Doubtful scans are handled as a user expects: a
CT not in Hounsfield units is refused unless ``--allow-non-ct``; a scan with no kidney in view gives
an empty but valid result that says so; one kidney, extreme voxel spacing and a scan too large for
the memory are handled.

Where the right answer must be known (single kidney, extreme spacing), the networks are "oracles":
real torch modules that call kidney what lies in the enhanced-kidney intensity band, so the
pipeline's own work (grids, boxes, windows, stitching, resampling back, sides) is what is checked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from KidneyTumorSegLib import memory, postprocess
from KidneyTumorSegLib.checks import check_ct_volume
from KidneyTumorSegLib.cli import main
from KidneyTumorSegLib.config import ModelConfig, SegmenterConfig
from KidneyTumorSegLib.errors import InputError, NotCTError
from KidneyTumorSegLib.io import read_volume, write_volume
from KidneyTumorSegLib.pipeline import NO_KIDNEY, Pipeline
from KidneyTumorSegLib.segfile import read_seg_nrrd
from KidneyTumorSegLib.volume import Volume
from KidneyTumorSegLib.weights import save_bundle, seeded_bundle

from .test_geometry import OBLIQUE_FLIPPED
from .test_pipeline import bundle_with_heads

REPO = Path(__file__).resolve().parents[1]
KIDNEY_HU, TUMOUR_HU = 200.0, 330.0


# --- synthetic scans with a known answer ------------------------------------------------------------
def synthetic_ct(
    shape_zyx=(30, 72, 80),
    spacing=(2.5, 2.5, 5.0),
    kidneys=("right", "left"),
    tumour_side: str | None = None,
    lungs: bool = False,
    air: bool = True,
    bone: bool = False,
    seed: int = 0,
    direction=None,
) -> tuple[Volume, np.ndarray]:
    """A CT in HU (int16) and its true labels: a body with subcutaneous fat, soft tissue, kidneys
    each in an 8 mm layer of perirenal fat (the pipeline discards a "kidney" with no fat around it).

    Physical centre at the origin; kidneys lie posterior, either side of the midline (LPS: +x is
    the patient's left); a tumour, if asked for, sits in the lateral half of that kidney.
    """
    nz, ny, nx = shape_zyx
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    extent = np.array([nx, ny, nz]) * np.asarray(spacing)
    grid = Volume(np.zeros(shape_zyx, np.int16), spacing, (0.0, 0.0, 0.0), direction)
    centre = grid.index_to_physical((np.array([nx, ny, nz]) - 1) / 2.0)
    grid = Volume(grid.array, spacing, tuple(-centre), direction)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij")
    x, y, z = np.moveaxis(grid.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)), 1, 0)
    x, y, z = (a.reshape(shape_zyx) for a in (x, y, z))
    ax, ay = 0.45 * extent[0], 0.36 * extent[1]
    r = (x / ax) ** 2 + (y / ay) ** 2
    rng = np.random.default_rng(seed)
    ct = np.where(r <= 1.0, -100.0, -1000.0 if air else -100.0)  # subcutaneous fat (or fat everywhere)
    ct[r <= 0.8] = 40.0  # soft tissue
    centre_x = {side: (1 if side == "left" else -1) * 0.45 * ax for side in kidneys}
    for cx in centre_x.values():  # perirenal fat, 8 mm beyond each kidney's outline
        ct[((x - cx) / 30.0) ** 2 + ((y - 0.3 * ay) / 26.0) ** 2 + (z / 38.0) ** 2 <= 1] = -100.0
    if lungs:
        for sx in (-1, 1):
            ct[((x - sx * 0.45 * ax) / (0.35 * ax)) ** 2 + (y / (0.6 * ay)) ** 2 <= 1] = -850.0
    if bone:
        ct[((x / 14.0) ** 2 + ((y - 0.6 * ay) / 14.0) ** 2) <= 1] = 700.0
    labels = np.zeros(shape_zyx, np.uint8)
    for side, cx in centre_x.items():
        kid = ((x - cx) / 22.0) ** 2 + ((y - 0.3 * ay) / 18.0) ** 2 + (z / 30.0) ** 2 <= 1
        labels[kid] = 1
        if tumour_side == side:
            lateral = cx + (1 if side == "left" else -1) * 10.0
            labels[kid & (((x - lateral) ** 2 + (y - 0.3 * ay) ** 2 + z**2) <= 10.0**2)] = 2
    ct[labels == 1] = KIDNEY_HU
    ct[labels == 2] = TUMOUR_HU
    ct += rng.normal(0.0, 8.0, shape_zyx)
    return grid.with_array(np.round(ct).astype(np.int16)), labels


class Band(torch.nn.Module):
    """An oracle network: logit +20 where the normalised intensity lies in a band, -20 elsewhere."""

    def __init__(self, bands, centre_channel: int | None = None, per_slice: bool = False):
        super().__init__()
        self.bands, self.centre, self.per_slice = bands, centre_channel, per_slice

    def forward(self, x):
        if self.centre is not None:
            x = x[:, self.centre : self.centre + 1]
        y = torch.cat([((x > lo) & (x < hi)).float() for lo, hi in self.bands], 1)
        if self.per_slice:
            y = y.amax(dim=(1, 2, 3))
        return 40.0 * (y - 0.5)


def oracle_config() -> ModelConfig:
    cfg = ModelConfig.tiny()
    cfg.segmenter = SegmenterConfig(width=4, depth=3, mrb_convs=2, spacing_mm=(2.0, 2.0, 2.0),
                                    patch_size_xyz=(32, 32, 20))
    return cfg


def oracle_pipeline() -> Pipeline:
    """HU window -200..350 -> [0, 1]: kidney (200 HU) 0.73, tumour (330 HU) 0.96, tissue 0.44."""
    pipe = Pipeline(seeded_bundle(oracle_config()), device="cpu")
    region, tumour = (0.6, 0.99), (0.88, 0.99)
    pipe.nets = {
        "z_localiser": Band([region], centre_channel=1, per_slice=True),
        "xy_localiser": Band([region]),
        "segmenter": Band([region, tumour]),
    }
    return pipe


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


# --- the command line ---------------------------------------------------------------------------
def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "KidneyTumorSegLib", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, env=env, timeout=300)


def one_sentence(message: str) -> bool:
    """A single line, a capital first letter, a full stop at the end, no second sentence inside."""
    return (
        "\n" not in message and message[:1].isupper() and message.endswith(".")
        and not re.search(r"[a-z)]\. [A-Z]", message[:-1])
    )


def assert_clean_error(stderr: str, code_phrase: str, path=None, warnings_before: bool = False) -> str:
    """stderr holds exactly one line, ``Error: <one sentence>``, naming ``path``; returns the sentence.

    With ``warnings_before``, ``Warning: ...`` lines of the run that preceded the error are allowed.
    """
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if warnings_before:
        lines = [ln for ln in lines if not ln.startswith("Warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    message = lines[0][len("Error: "):]
    assert "Traceback" not in stderr and one_sentence(message), message
    assert code_phrase in message, message
    if path is not None:
        assert str(path) in message, message
    return message


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    out = {}
    for name, heads in (("kidney", (10, 10, 10, -10)), ("none", (-10, -10, -10, -10))):
        b = bundle_with_heads(*heads)
        out[name] = save_bundle(d / f"{name}.safetensors", b.config, b.state_dicts, provenance={"name": name})
    return out


def _write_bad(kind: str, d: Path) -> Path:
    """One unusable input of each kind a user may hand over."""
    good = synthetic_ct(shape_zyx=(6, 16, 16))[0]
    if kind == "2d image":
        sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(d / "slice.nrrd"))
        return d / "slice.nrrd"
    if kind == "4d volume":
        sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), str(d / "series.nii.gz"))
        return d / "series.nii.gz"
    if kind == "colour volume":
        sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), str(d / "rgb.nrrd"))
        return d / "rgb.nrrd"
    if kind == "empty file":
        (d / "empty.nii.gz").write_bytes(b"")
        return d / "empty.nii.gz"
    if kind.startswith("truncated"):
        suffix = kind.split()[1]
        full = write_volume(good, d / f"full{suffix}", compress=suffix.endswith(".gz"))
        data = full.read_bytes()
        (d / f"cut{suffix}").write_bytes(data[: len(data) * 2 // 3])
        return d / f"cut{suffix}"
    if kind == "png renamed":
        from PIL import Image

        Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "picture.png")
        (d / "picture.png").rename(d / "scan.nii.gz")
        return d / "scan.nii.gz"
    if kind == "text renamed":
        (d / "notes.nii.gz").write_text("Patient notes, not an image.\n")
        return d / "notes.nii.gz"
    if kind == "missing path":
        return d / "no such scan.nii.gz"
    if kind in ("nan voxels", "infinite voxels"):
        arr = good.array.astype(np.float32)
        arr[2, 5, 5] = np.nan if kind == "nan voxels" else np.inf
        return write_volume(good.with_array(arr), d / "float.nii.gz")
    if kind == "constant image":
        return write_volume(good.with_array(np.full_like(good.array, -1000)), d / "flat.nrrd")
    if kind == "folder without dicom":
        (d / "folder").mkdir()
        (d / "folder" / "readme.txt").write_text("nothing here")
        return d / "folder"
    if kind == "single dicom slice":
        img = sitk.Cast(sitk.GetImageFromArray(good.array[3]), sitk.sitkInt16)
        sitk.WriteImage(img, str(d / "one.dcm"))
        return d / "one.dcm"
    raise AssertionError(kind)


BAD_INPUTS = {
    "2d image": "2D",
    "4d volume": "4 dimensions",
    "colour volume": "components",
    "empty file": "empty",
    "truncated .nii": "truncated",
    "truncated .nii.gz": "truncated",
    "truncated .nrrd": "damaged, truncated",
    "png renamed": "2D",
    "text renamed": "not in a format",
    "missing path": "does not exist",
    "nan voxels": "NaN or infinite",
    "infinite voxels": "NaN or infinite",
    "constant image": "constant",
    "folder without dicom": "no DICOM",
    "single dicom slice": "single DICOM slice",
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_unusable_input_ends_in_one_sentence_exit_2_and_nothing_written(kind, tmp_path, weights, capsys):
    bad = _write_bad(kind, tmp_path)
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["segment", str(bad), "-o", str(out / "seg.seg.nrrd"), "--labelmap", str(out / "lab.nii.gz"),
                 "--weights", str(weights["kidney"]), "--device", "cpu", "--progress", "none"])
    captured = capsys.readouterr()
    assert code == 2
    assert_clean_error(captured.err, BAD_INPUTS[kind], bad)
    assert captured.out == ""
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_truncated_nifti_through_the_real_process_speaks_json(tmp_path, weights):
    bad = _write_bad("truncated .nii", tmp_path)
    r = run_cli("segment", bad, "-o", tmp_path / "o" / "s.seg.nrrd", "--weights", weights["kidney"],
                "--device", "cpu", "--progress", "json")
    assert r.returncode == 2
    assert_clean_error(r.stderr, "truncated", bad)
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 2 and str(bad) in events[-1]["message"]
    assert not (tmp_path / "o").exists()


# --- CT in Hounsfield units or not --------------------------------------------------------------
@pytest.fixture(scope="module")
def abdomen():
    return synthetic_ct(shape_zyx=(24, 64, 72), spacing=(3.0, 3.0, 5.0), bone=True, tumour_side="left")[0]


def _variants(ct: Volume) -> dict[str, np.ndarray]:
    a = ct.array.astype(np.float32)
    nz, ny, nx = a.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    outside_fov = np.broadcast_to(np.hypot(yy - ny / 2, xx - nx / 2) > 0.48 * min(ny, nx), a.shape)
    body = a > -500
    ks, js, is_ = (np.flatnonzero(body.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    return {
        # CT in HU, as scanners and converters write it
        "hu": a,
        "hu with -3024 padding outside the field of view": np.where(outside_fov, -3024, a),
        "hu tightly cropped to the body": a[:, js[0] + 4 : js[-1] - 4, is_[0] + 4 : is_[-1] - 4],
        "hu with no air anywhere": np.where(a < -500, -100, a),
        # not CT in HU
        "raw 0-4095 (rescale not applied)": np.clip(a + 1024, 0, 4095),
        "raw cropped to the body": np.clip(a + 1024, 0, 4095)[:, js[0] + 4 : js[-1] - 4, is_[0] + 4 : is_[-1] - 4],
        "raw with -2000 padding": np.where(outside_fov, -2000, np.clip(a + 1024, 0, 4095)),
        "raw with -1024 padding": np.where(outside_fov, -1024, np.clip(a + 1024, 0, 4095)),
        "mr-like": np.where(a < -500, 0, np.abs(a) * 3.0 + 100.0),
        "normalised to 0-1": (a - a.min()) / (a.max() - a.min()),
        "z-scores": (a - a.mean()) / a.std(),
        "8-bit windowed export": np.clip((a + 160.0) / 400.0 * 255.0, 0, 255),
    }


@pytest.mark.parametrize("name", [
    "hu", "hu with -3024 padding outside the field of view", "hu tightly cropped to the body",
    "hu with no air anywhere",
])
def test_ct_in_hounsfield_units_passes(abdomen, name):
    arr = _variants(abdomen)[name]
    assert check_ct_volume(Volume(arr, abdomen.spacing), source="ct.nii.gz") == []


@pytest.mark.parametrize("name", [
    "raw 0-4095 (rescale not applied)", "raw cropped to the body", "raw with -2000 padding",
    "raw with -1024 padding", "mr-like", "normalised to 0-1", "z-scores", "8-bit windowed export",
])
def test_images_not_in_hounsfield_units_are_refused_unless_allowed(abdomen, name):
    vol = Volume(_variants(abdomen)[name], abdomen.spacing)
    with pytest.raises(NotCTError) as info:
        check_ct_volume(vol, source="scan.nrrd")
    msg = str(info.value)
    assert one_sentence(msg) and "scan.nrrd" in msg and "Hounsfield" in msg and "--allow-non-ct" in msg
    warnings = check_ct_volume(vol, allow_non_ct=True, source="scan.nrrd")
    assert len(warnings) == 1 and "Hounsfield" in warnings[0]


def test_raw_ct_from_the_command_line_exits_5_then_runs_when_allowed(tmp_path, weights, abdomen, capsys):
    raw = write_volume(abdomen.with_array(np.clip(abdomen.array + 1024, 0, 4095).astype(np.uint16)),
                       tmp_path / "raw.nii.gz")
    out = tmp_path / "out"
    code = main(["segment", str(raw), "-o", str(out / "s.seg.nrrd"), "--weights", str(weights["none"]),
                 "--device", "cpu", "--progress", "none"])
    msg = assert_clean_error(capsys.readouterr().err, "Hounsfield", raw)
    assert code == 5 and "rescale" in msg and not out.exists()
    r = run_cli("segment", raw, "-o", out / "s.seg.nrrd", "--report", out / "r.json", "--weights",
                weights["none"], "--device", "cpu", "--progress", "none", "--allow-non-ct")
    assert r.returncode == 0, r.stderr
    assert "Hounsfield" in r.stdout and "Traceback" not in r.stderr
    report = json.loads((out / "r.json").read_text())
    assert any("Hounsfield" in w for w in report["warnings"])


# --- no kidney in view, one kidney, extreme spacing --------------------------------------------
def test_chest_ct_with_no_kidney_gives_an_empty_valid_result_that_says_so(tmp_path, weights):
    chest, _ = synthetic_ct(shape_zyx=(20, 48, 56), spacing=(4.0, 4.0, 6.0), kidneys=(), lungs=True)
    ct = write_volume(chest, tmp_path / "chest.nii.gz")
    out = tmp_path / "out"
    r = run_cli("segment", ct, "-o", out / "chest.seg.nrrd", "--labelmap", out / "labels.nii.gz",
                "--report", out / "report.json", "--weights", weights["none"], "--device", "cpu",
                "--progress", "none")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert NO_KIDNEY in r.stdout and (r.stdout + r.stderr).count("No kidney") == 1  # said once
    masks, grid = read_seg_nrrd(out / "chest.seg.nrrd")
    assert masks == {} and grid.same_grid(chest, tol=1e-4)
    labels = read_volume(out / "labels.nii.gz")
    assert labels.same_grid(chest, tol=1e-4) and not labels.array.any()
    report = json.loads((out / "report.json").read_text())
    assert report["kidney_found"] is False and report["sides"] == {} and NO_KIDNEY in report["warnings"]
    # The networks decided "no kidney" above; an oracle that looks for enhanced kidney tissue agrees.
    assert oracle_pipeline().run(chest).empty


def head_ct() -> Volume:
    """A head in HU: brain (35 HU) inside a 7 mm skull (cortical bone, 900-1500 HU), air around."""
    nz, ny, nx = 24, 64, 64
    k, j, i = np.meshgrid(*[np.arange(n) for n in (nz, ny, nx)], indexing="ij")
    r = np.sqrt(((i - 31.5) * 4.0 / 80.0) ** 2 + ((j - 31.5) * 4.0 / 95.0) ** 2 + ((k - 11.5) * 5.0 / 70.0) ** 2)
    rng = np.random.default_rng(2)
    ct = np.where(r <= 1.0, 900.0 + 600.0 * rng.random(r.shape), -1000.0)
    ct[r <= 0.92] = 35.0
    ct += rng.normal(0, 6.0, r.shape)
    return Volume(np.round(ct).astype(np.int16), (4.0, 4.0, 5.0))


def test_head_ct_passes_as_hu_and_gives_an_empty_result():
    head = head_ct()
    assert check_ct_volume(head, source="head.nii.gz") == []
    result = oracle_pipeline().run(head)
    assert result.empty and NO_KIDNEY in result.report["warnings"] and result.labels.same_grid(head)


def test_single_kidney_with_a_tumour_is_found_on_its_side_and_measured():
    ct, truth = synthetic_ct(kidneys=("left",), tumour_side="left")
    result = oracle_pipeline().run(ct)
    assert set(result.structures) == {"kidney_left", "tumour_left"}
    assert set(result.report["sides"]) == {"left"} and result.report["kidney_found"] is True
    assert result.labels.same_grid(ct)
    assert dice(result.labels.array > 0, truth > 0) > 0.85
    assert dice(result.labels.array == 2, truth == 2) > 0.6
    side = result.report["sides"]["left"]
    true_ml = np.count_nonzero(truth) * ct.voxel_volume_ml
    assert side["kidney_with_tumour_ml"] == pytest.approx(true_ml, rel=0.15)
    assert side["tumour_count"] == 1 and 12.0 < side["tumour_diameter_mm"] < 28.0


def test_extreme_spacing_runs_and_lands_on_the_grid():
    """0.3 mm pixels and 10 mm slices: 33 times anisotropic, a small field of view without air."""
    ct, truth = synthetic_ct(shape_zyx=(10, 360, 400), spacing=(0.3, 0.3, 10.0), kidneys=("right",), air=False)
    result = oracle_pipeline().run(ct)
    assert result.labels.same_grid(ct) and result.labels.array.dtype == np.uint8
    assert set(result.report["sides"]) == {"right"}
    assert dice(result.labels.array > 0, truth > 0) > 0.8


# --- memory: estimate, refusal, chunked resampling -----------------------------------------------
def test_memory_estimate_and_refusal_with_a_mocked_available_memory(monkeypatch):
    cfg = ModelConfig.compact()
    small = memory.estimate_run_bytes((512, 512, 611), (0.78, 0.78, 0.8), 2, cfg)
    big = memory.estimate_run_bytes((1024, 1024, 2000), (0.4, 0.4, 0.25), 2, cfg)
    n_small, n_big = 512 * 512 * 611, 1024 * 1024 * 2000
    # Both cover about 40 x 40 x 50 cm, so only the whole-scan arrays differ: while segmenting, the
    # image (2 bytes a voxel), the label map and up to four structure masks (5).
    assert (big.total - small.total) / (n_big - n_small) == pytest.approx(7.0, abs=0.05)
    # Measured through the command line (see the report): 1.28 GB peak for 512 x 512 x 611
    # and 3.64 GB for 1024 x 1024 x 600, two kidneys found; the estimate must cover that, with a margin.
    assert 1.28 < small.gb < 3.0
    mid = memory.estimate_run_bytes((1024, 1024, 600), (0.39, 0.39, 0.8), 2, cfg)
    assert 3.64 < mid.gb < 7.0
    keep = memory.estimate_run_bytes((1024, 1024, 2000), (0.4, 0.4, 0.25), 2, cfg, keep_image=True)
    assert keep.total >= big.total  # a picture keeps the scan in memory while writing
    monkeypatch.setattr(memory, "available_bytes", lambda: int(64 * memory.GB))
    assert memory.check_run_fits((1024, 1024, 2000), (0.4, 0.4, 0.25), 2, cfg, "big.nii").total == big.total
    monkeypatch.setattr(memory, "available_bytes", lambda: int(8 * memory.GB))
    with pytest.raises(memory.NotEnoughMemoryError) as info:
        memory.check_run_fits((1024, 1024, 2000), (0.4, 0.4, 0.25), 2, cfg, "big.nii")
    msg = str(info.value)
    assert one_sentence(msg) and "big.nii" in msg and f"{big.gb:.1f} GB" in msg and "8.0 GB available" in msg
    assert info.value.exit_code == 6 and isinstance(info.value, InputError)
    memory.check_run_fits((512, 512, 611), (0.78, 0.78, 0.8), 2, cfg, "ct.nii")  # fits in 8 GB


def test_available_memory_reads_the_system_and_honours_the_users_cap(monkeypatch):
    monkeypatch.delenv(memory.MEMORY_LIMIT_ENV, raising=False)
    real = memory.available_bytes()
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        line = next(ln for ln in meminfo.read_text().splitlines() if ln.startswith("MemAvailable:"))
        assert real <= int(line.split()[1]) * 1024 * 1.2
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "1.5G")
    assert memory.available_bytes() == min(real, int(1.5 * 1024**3))
    assert memory.parse_size("512M") == 512 * 1024**2 and memory.parse_size("3GB") == 3 * 1024**3


def test_a_header_declaring_a_huge_image_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 100000\n"
                     b"encoding: raw\nendian: little\n\n" + bytes(64))
    with pytest.raises(memory.NotEnoughMemoryError) as info:
        read_volume(path)
    assert one_sentence(str(info.value)) and str(path) in str(info.value) and "100000 x 100000 x 100000" in str(info.value)


def test_run_too_large_for_the_memory_cap_exits_6_before_reading(tmp_path, weights, monkeypatch, capsys):
    ct = write_volume(synthetic_ct(shape_zyx=(6, 16, 16))[0], tmp_path / "ct.nii.gz")
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "300M")
    code = main(["segment", str(ct), "-o", str(tmp_path / "out" / "s.seg.nrrd"), "--weights", str(weights["kidney"]),
                 "--device", "cpu", "--progress", "none"])
    msg = assert_clean_error(capsys.readouterr().err, "needs about", ct)
    assert code == 6 and f"{memory.MEMORY_LIMIT_ENV}=300M limits this program to 0.3 GB" in msg
    assert not (tmp_path / "out").exists()


def _reference_split(vol, midline):
    """The obvious implementation (int32 components, ndimage centres of mass), memory be damned."""
    from scipy import ndimage

    arr = vol.array
    if midline is None:
        lo, hi = vol.physical_bounds()
        midline = float((lo[0] + hi[0]) / 2.0)
    comps, n = ndimage.label(arr > 0)
    out = {}
    for i, c in enumerate(ndimage.center_of_mass(arr > 0, comps, np.arange(1, n + 1)), start=1):
        side = "left" if vol.index_to_physical(np.asarray(c)[::-1])[0] > midline else "right"
        for name, value in (("kidney", 1), ("tumour", 2)):
            part = (comps == i) & (arr == value)
            if part.any():
                out[f"{name}_{side}"] = out.get(f"{name}_{side}", np.zeros(arr.shape, bool)) | part
    return out


def test_bounded_side_split_equals_the_plain_one():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for trial in range(6):
        field = ndimage.gaussian_filter(rng.normal(size=(24, 36, 40)), 3)
        labels = np.zeros(field.shape, np.uint8)
        labels[field > 0.02] = 1
        labels[field > 0.05] = 2
        vol = Volume(labels, (0.9, 1.1, 2.5), (-20.0, 5.0, 3.0), OBLIQUE_FLIPPED if trial % 2 else np.eye(3))
        midline = None if trial % 3 == 0 else float(rng.normal(0, 10))
        expected = _reference_split(vol, midline)
        got = postprocess.split_sides(vol, midline)
        assert set(got) == set(expected) and len(expected) >= 2
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_memory_estimate_counts_the_second_look_and_its_gate():
    """The coarse look's canvas and fusion, and the gate's labels and masks, are budgeted; they do not
    depend on the scan's size, only on the area segmented (the same here)."""
    from KidneyTumorSegLib.config import with_settings

    cfg = ModelConfig.bundled()
    one = memory.estimate_run_bytes((512, 512, 200), (0.8, 0.8, 2.0), 2, cfg).total
    two = memory.estimate_run_bytes((512, 512, 200), (0.8, 0.8, 2.0), 2,
                                    with_settings(cfg, ["segmenter.context_scale=1.5"])).total
    gated = memory.estimate_run_bytes((512, 512, 200), (0.8, 0.8, 2.0), 2,
                                      with_settings(cfg, ["segmenter.context_scale=1.5",
                                                          "segmenter.context_gate_ml=300"])).total
    assert one < two < gated
    assert (gated - two) / (two - one) < 1.0  # the gate costs less than the second look itself
