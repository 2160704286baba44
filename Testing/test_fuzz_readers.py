"""A bounded, seeded fuzz of the readers: any bytes give a valid Volume or a clear InputError.

Small valid NIfTI, NRRD and MHA files (compressed and not, several voxel types, oblique geometry) are
mutated (bit flips, overwritten and inserted bytes, truncation, extreme values in header fields),
and random bytes and random headers are added. ``read_volume`` must answer every case with either
a usable :class:`Volume` (3D, finite positive spacing, finite origin, orthonormal direction) or an
:class:`InputError` whose message is one sentence naming the file, never another exception type.

The loop runs in a child interpreter with a capped address space, so a segmentation fault or an
abort in a C++ reader shows as a failed test that names the case (not as a crashed test session),
a hang is stopped by ``faulthandler``, and a header declaring a huge image cannot eat the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .test_bad_input import one_sentence

REPO = Path(__file__).resolve().parents[1]
CASES = 150
SEED = 20240611

DRIVER = r'''
import faulthandler, gzip, json, random, resource, struct, sys, zlib
from pathlib import Path
import numpy as np

faulthandler.enable()
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.io import read_volume, write_volume
from KidneyTumorSegLib.volume import Volume

work, seed, n_cases = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with open("/proc/self/status") as fh:  # a case may declare a huge image: refuse, never swap
    vm = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 4 * 1024**3, resource.RLIM_INFINITY))

rng = random.Random(seed)
nrng = np.random.default_rng(seed)


def rotation(a, b):
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    return np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cb, -sb], [0, sb, cb]])


def seed_files():
    """Valid small files: every format, compressed or not, int16 / float32 / uint8, oblique."""
    out = []
    for i, (suffix, compress) in enumerate([(".nii", False), (".nii.gz", True), (".nrrd", False),
                                            (".nrrd", True), (".mha", False), (".mha", True)]):
        for dtype in (np.int16, np.float32, np.uint8):
            shape = tuple(int(v) for v in nrng.integers(3, 9, 3))
            arr = nrng.integers(-1000, 1000, shape).astype(dtype) if dtype != np.uint8 else nrng.integers(0, 255, shape).astype(dtype)
            vol = Volume(arr, tuple(nrng.uniform(0.3, 5.0, 3)), tuple(nrng.uniform(-200, 200, 3)),
                         rotation(*nrng.uniform(-0.5, 0.5, 2)))
            path = write_volume(vol, work / f"seed{i}{np.dtype(dtype).name}{suffix}", compress=compress)
            out.append((suffix, path.read_bytes()))
    import SimpleITK as sitk  # a DICOM slice too: GDCM parses it

    sitk.WriteImage(sitk.GetImageFromArray(nrng.integers(-1000, 1000, (12, 10)).astype(np.int16)),
                    str(work / "seed.dcm"))
    out.append((".dcm", (work / "seed.dcm").read_bytes()))
    return out


EXTREMES = ["0", "-1", "1e308", "-1e308", "nan", "inf", "1e-300", "2147483647", "99999999999", "abc", "",
            "3.5", "-0", "65536", "-2147483648"]
TYPES = ["short", "float", "double", "uchar", "int64", "complex", "block", "MET_SHORT", "MET_FLOAT", "MET_UCHAR",
         "MET_LONG_LONG", "MET_OTHER", "MET_STRING"]
NIFTI_FIELDS = [(40, "h", 8), (70, "h", 1), (72, "h", 1), (76, "f", 8), (108, "f", 1), (112, "f", 2),
                (252, "h", 2), (256, "f", 6), (280, "f", 12)]
NIFTI_VALUES = [0, -1, 1, 2, 7, 8, 16, 32, 64, 128, 255, 256, 511, 1024, 2048, 32767, -32768,
                float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 1e-30, 0.5]


def flip_bits(data, k):
    data = bytearray(data)
    for _ in range(k):
        if data:
            i = rng.randrange(min(len(data), 600) if rng.random() < 0.7 else len(data))
            data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def overwrite(data):
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) + data[i + 40:]


def insert(data):
    i = rng.randrange(len(data) + 1)
    return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) + data[i:]


def truncate(data):
    return data[: rng.randrange(len(data) + 1)]


def text_header_edit(data):
    """Change one NRRD / MHA header line: an extreme number, another type, a dropped or doubled line."""
    sep = b"\n\n" if data.startswith(b"NRRD") else b"ElementDataFile = LOCAL\n"
    head, found, body = data.partition(sep)
    lines = head.split(b"\n")
    i = rng.randrange(len(lines))
    choice = rng.random()
    if choice < 0.6:
        tokens = lines[i].split(b" ")
        j = rng.randrange(len(tokens))
        tokens[j] = (rng.choice(TYPES) if rng.random() < 0.2 else rng.choice(EXTREMES)).encode()
        lines[i] = b" ".join(tokens)
    elif choice < 0.8:
        del lines[i]
    else:
        lines.insert(i, lines[i])
    return b"\n".join(lines) + found + body


def nifti_field_edit(data):
    """Set a NIfTI-1 header field (dims, type, spacing, offset, scaling, orientation) to an extreme."""
    gz = data[:2] == b"\x1f\x8b"
    raw = bytearray(gzip.decompress(data) if gz else data)
    for _ in range(rng.randrange(1, 4)):
        offset, code, count = rng.choice(NIFTI_FIELDS)
        k = rng.randrange(count)
        value = rng.choice(NIFTI_VALUES)
        if code == "h":
            value = int(value) if value == value and abs(value) < 32768 else -1
        struct.pack_into("<" + code, raw, offset + k * struct.calcsize(code), value)
    return gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)


def random_file():
    kind = rng.randrange(4)
    blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 1500)))
    if kind == 0:
        return rng.choice([".nii", ".nii.gz", ".nrrd", ".mha", ".dcm", ".png"]), blob
    if kind == 1:
        fields = [f"{k}: {rng.choice(EXTREMES + TYPES)}" for k in
                  rng.sample(["type", "dimension", "sizes", "encoding", "endian", "spacings", "space",
                              "space directions", "space origin", "kinds"], rng.randrange(1, 10))]
        return ".nrrd", ("NRRD0004\n" + "\n".join(fields) + "\n\n").encode() + blob
    if kind == 2:
        fields = [f"{k} = {rng.choice(EXTREMES + TYPES)}" for k in
                  rng.sample(["ObjectType", "NDims", "DimSize", "ElementType", "ElementSpacing", "Offset",
                              "TransformMatrix", "CompressedData", "BinaryDataByteOrderMSB"], rng.randrange(1, 9))]
        return ".mha", ("\n".join(fields) + "\nElementDataFile = LOCAL\n").encode() + blob
    head = bytearray(352)
    struct.pack_into("<i", head, 0, 348)
    head[344:348] = b"n+1\0"
    for offset, code, count in NIFTI_FIELDS:
        for k in range(count):
            value = rng.choice(NIFTI_VALUES)
            if code == "h":
                value = int(value) if value == value and abs(value) < 32768 else 3
            struct.pack_into("<" + code, head, offset + k * struct.calcsize(code), value)
    return rng.choice([".nii", ".nii.gz"]), bytes(head) + blob


def check_volume(vol):
    problems = []
    if vol.array.ndim != 3 or min(vol.array.shape) < 1:
        problems.append(f"shape {vol.array.shape}")
    if not (np.all(np.isfinite(vol.spacing)) and min(vol.spacing) > 0):
        problems.append(f"spacing {vol.spacing}")
    if not np.all(np.isfinite(vol.origin)):
        problems.append(f"origin {vol.origin}")
    d = vol.direction
    if not (np.all(np.isfinite(d)) and np.allclose(d.T @ d, np.eye(3), atol=0.02)):
        problems.append("direction")
    if vol.array.dtype.kind == "f" and not np.all(np.isfinite(vol.array)):
        problems.append("non-finite voxels")
    return problems


seeds = seed_files()
mutators = [("bit flips", lambda d: flip_bits(d, rng.randrange(1, 9))), ("overwrite", overwrite),
            ("insert", insert), ("truncate", truncate)]
for case in range(n_cases):
    r = rng.random()
    if r < 0.15:
        kind = "random"
        suffix, data = random_file()
    else:
        suffix, data = rng.choice(seeds)
        if r < 0.45 and suffix in (".nii", ".nii.gz"):
            kind, data = "nifti field", nifti_field_edit(data)
        elif r < 0.45:
            kind, data = "header line", text_header_edit(data)
        else:
            kind, fn = rng.choice(mutators)
            data = fn(data)
    path = work / f"case{case:03d}{suffix}"
    path.write_bytes(data)
    print(json.dumps({"case": case, "kind": kind, "file": path.name, "started": True}), flush=True)
    faulthandler.dump_traceback_later(30, exit=True)  # a hang ends the child, naming this case
    try:
        vol = read_volume(path)
        result = {"outcome": "volume", "problems": check_volume(vol), "shape": list(vol.array.shape)}
    except InputError as err:
        result = {"outcome": "input_error", "type": type(err).__name__, "message": str(err)}
    except BaseException as err:  # noqa: BLE001 - the point is to catch every kind
        result = {"outcome": "other", "type": type(err).__name__, "message": str(err)[:300]}
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps({"case": case, "kind": kind, "file": path.name, "path": str(path), **result}), flush=True)
    path.unlink()
'''


@pytest.mark.timeout(300)
def test_fuzzed_files_give_a_volume_or_one_clear_input_error(tmp_path):
    r = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path), str(SEED), str(CASES)],
                       capture_output=True, text=True, cwd=REPO, timeout=280)
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    started = [rec for rec in records if rec.get("started")]
    done = [rec for rec in records if not rec.get("started")]
    last = started[-1] if started else None
    assert r.returncode == 0, f"the reader crashed or hung on {last}: {r.stderr[-2000:]}"
    assert len(done) == CASES
    others = [rec for rec in done if rec["outcome"] == "other"]
    assert others == [], others
    bad_volumes = [rec for rec in done if rec["outcome"] == "volume" and rec["problems"]]
    assert bad_volumes == [], bad_volumes
    for rec in done:
        if rec["outcome"] == "input_error":
            assert one_sentence(rec["message"]) and rec["path"] in rec["message"], rec
    outcomes = {rec["outcome"] for rec in done}
    kinds = {rec["kind"] for rec in done}
    # The fuzz is not trivial: some mutations still read as volumes, most are refused, every
    # kind of mutation was tried.
    assert outcomes == {"volume", "input_error"}
    assert kinds == {"random", "nifti field", "header line", "bit flips", "overwrite", "insert", "truncate"}
