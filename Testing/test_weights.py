"""Weights bundles: round trip, and rejection of missing, truncated, tampered or foreign files."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.config import ModelConfig
from KidneyTumorSegLib.errors import WeightsError
from KidneyTumorSegLib.weights import load_bundle, networks_from_bundle, save_bundle, seeded_bundle


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory):
    b = seeded_bundle(ModelConfig.tiny(), seed=3)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_bundle(path, b.config, b.state_dicts, provenance={"name": "test"}, metrics={"dice": 0.5})
    return path, b


def test_round_trip_gives_identical_networks(bundle_file):
    path, original = bundle_file
    loaded = load_bundle(path)
    assert loaded.config == original.config
    assert loaded.header["provenance"]["name"] == "test"
    a = networks_from_bundle(original)["segmenter"]
    b = networks_from_bundle(loaded)["segmenter"]
    x = torch.randn(1, 1, 20, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x))


def test_half_precision_bundle_loads_close(tmp_path, bundle_file):
    _, original = bundle_file
    path = save_bundle(tmp_path / "half.safetensors", original.config, original.state_dicts, half=True)
    assert path.stat().st_size < bundle_file[0].stat().st_size
    loaded = load_bundle(path)
    for k, v in original.state_dicts["z_localiser"].items():
        if v.is_floating_point():
            torch.testing.assert_close(loaded.state_dicts["z_localiser"][k], v.float(), atol=2e-3, rtol=2e-3)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_bundle(tmp_path / "nope.safetensors")


def test_truncated_file_is_rejected(tmp_path, bundle_file):
    data = bundle_file[0].read_bytes()
    for cut in (5, 100, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match=str(bad)):
            load_bundle(bad)


def test_tampered_tensor_bytes_fail_the_checksum(tmp_path, bundle_file):
    data = bytearray(bundle_file[0].read_bytes())
    data[-4] ^= 0xFF  # flip bits inside the last tensor
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum"):
        load_bundle(bad)


def test_incompatible_version_and_configuration_are_named(tmp_path, bundle_file):
    path, original = bundle_file
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["kidney_tumor_seg"])

    def rewrite(new_meta, name):
        header["__metadata__"]["kidney_tumor_seg"] = json.dumps(new_meta)
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        out = tmp_path / name
        out.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
        return out

    with pytest.raises(WeightsError, match="format version 99"):
        load_bundle(rewrite({**meta, "format_version": 99}, "v99.safetensors"))
    wrong = json.loads(json.dumps(meta))
    wrong["config"]["segmenter"]["width"] = 8
    with pytest.raises(WeightsError, match="do not match"):
        networks_from_bundle(load_bundle(rewrite(wrong, "width.safetensors")))


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "evil.bin"])
def test_planted_pickle_is_rejected_without_running_it(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"state": _Boom()}))
    with pytest.raises(WeightsError, match="pickle"):
        load_bundle(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_torch_zip_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="not loaded"):
        load_bundle(path)


@pytest.mark.parametrize("prefix", [b"\x80", b"(", b"PK"])
def test_a_bundle_whose_header_length_starts_like_a_pickle_or_zip_still_loads(tmp_path, bundle_file, prefix):
    """The 8-byte header length is any number (a multiple of 8): its first bytes can read as a
    pickle opcode or as 'PK'. Found when the real bundle's header grew to 0xf628 bytes and was
    refused as a pickle."""
    _, original = bundle_file
    path = tmp_path / "padded.safetensors"
    target = int.from_bytes(prefix, "little")
    modulus = 256 ** len(prefix)

    def save(pad: int) -> bytes:
        save_bundle(path, original.config, original.state_dicts, provenance={"name": "x" * pad})
        return path.read_bytes()[: len(prefix)]

    first = int.from_bytes(save(0), "little")
    guess = (target - first) % modulus
    assert any(save(max(0, guess + d)) == prefix for d in range(-8, 9)), "no padding gave the prefix"
    loaded = load_bundle(path)
    assert loaded.header["provenance"]["name"].startswith("x")


def test_seeded_bundle_is_deterministic():
    a = seeded_bundle(ModelConfig.tiny(), seed=5).state_dicts["segmenter"]
    b = seeded_bundle(ModelConfig.tiny(), seed=5).state_dicts["segmenter"]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_a_second_look_is_an_inference_setting_and_off_in_bundles_without_it():
    from KidneyTumorSegLib.config import ModelConfig, with_settings

    base = ModelConfig.tiny()
    data = base.to_dict()
    for key in ("context_scale", "context_fusion", "context_gate_ml"):
        data["segmenter"].pop(key)  # a bundle written before the setting existed
    old = ModelConfig.from_dict(data).segmenter
    assert (old.context_scale, old.context_gate_ml, old.second_look) == (0.0, 0.0, False)
    tuned = with_settings(base, ["segmenter.context_scale=1.5", "segmenter.context_fusion=widen",
                                 "segmenter.context_gate_ml=300"])
    assert (tuned.segmenter.context_scale, tuned.segmenter.context_fusion) == (1.5, "widen")
    assert tuned.segmenter.context_gate_ml == 300.0
    assert tuned.segmenter.spacing_mm == base.segmenter.spacing_mm


def test_a_bundle_naming_an_unknown_fusion_is_refused_when_loaded(tmp_path):
    """A header with a fusion this version does not know (hand-made, or from a later version) fails
    at loading, in one sentence, instead of in the middle of a run."""
    bundle = seeded_bundle(ModelConfig.tiny(), seed=0)
    bundle.config.segmenter.context_fusion = "median"  # past the dataclass's own check
    path = save_bundle(tmp_path / "odd.safetensors", bundle.config, bundle.state_dicts)
    with pytest.raises(WeightsError, match=r"incompatible configuration \(context_fusion is one of mean"):
        load_bundle(path)


def test_the_empty_fossa_checks_are_inference_settings_off_in_older_bundles():
    """A v1.5 header lacks them: loaded, both checks are off; set with --set/--sweep they take
    their values; a share outside [0, 1] is refused."""
    from KidneyTumorSegLib.config import ModelConfig, with_settings
    from KidneyTumorSegLib.postprocess import PostprocessConfig

    data = ModelConfig.tiny().to_dict()
    for key in ("weak_region_confidence", "weak_region_support", "one_region_per_side", "min_rim_fat"):
        data["segmenter"].pop(key)
    assert ModelConfig.from_dict(data).segmenter.min_rim_fat == 0.0  # the fat check, off
    old = PostprocessConfig.from_model(ModelConfig.from_dict(data))
    assert (old.weak_confidence, old.weak_support, old.one_per_side) == (0.0, 0.0, False)
    tuned = with_settings(ModelConfig.tiny(), ["segmenter.weak_region_confidence=0.8",
                                               "segmenter.weak_region_support=0.5", "segmenter.one_region_per_side=true"])
    post = PostprocessConfig.from_model(tuned)
    assert (post.weak_confidence, post.weak_support, post.one_per_side) == (0.8, 0.5, True)
    with pytest.raises(ValueError, match="weak_region_support is a share in"):
        with_settings(ModelConfig.tiny(), ["segmenter.weak_region_support=1.5"])
