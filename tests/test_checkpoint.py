"""Checkpoints: an exact round trip, and a one-line CheckpointError for every broken or hostile file."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import stat
import struct
import time

import pytest
import torch

from vdgen.checkpoint import (
    FORMAT_VERSION,
    load_model,
    model_metadata,
    read_model_configs,
    save_model,
    save_tensors,
)
from vdgen.config import DiffusionConfig, preset, to_dict
from vdgen.errors import CheckpointError


@pytest.fixture(scope="module")
def tiny(make_net):
    config = dataclasses.replace(preset("tiny").model, max_relative_position=8, dropout=0.1)
    return make_net(max_relative_position=8, dropout=0.1), config, DiffusionConfig(parameterization="eps")


def write(path, tiny, tensors=None, **meta_changes):
    """A checkpoint of the tiny model with its tensors or metadata tampered with."""
    net, model_config, diffusion_config = tiny
    metadata = model_metadata(model_config, diffusion_config, {"step": 3})
    metadata.update(meta_changes)
    save_tensors(path, net.state_dict() if tensors is None else tensors, metadata)
    return path


def refused(path, *fragments: str) -> str:
    """Assert load_model(path) raises a one-line CheckpointError naming the file and each fragment."""
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_gives_identical_outputs(tmp_path, tiny):
    net, model_config, diffusion_config = tiny
    path = tmp_path / "model.safetensors"
    save_model(path, net.state_dict(), model_config, diffusion_config, {"step": 3, "dataset": "moving-mnist"})
    loaded = load_model(path)
    assert loaded.model_config == model_config
    assert loaded.diffusion_config == diffusion_config
    assert loaded.provenance["step"] == 3 and loaded.provenance["dataset"] == "moving-mnist"
    assert "vdgen_version" in loaded.provenance
    assert loaded.path == path
    assert not loaded.net.training
    for name, tensor in net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[name], tensor), name
    z = torch.randn(2, 1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    logsnr = torch.tensor([-2.0, 3.0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded.net(z, logsnr), net(z, logsnr))
        assert torch.equal(loaded.denoiser()(z, logsnr), loaded.denoiser()(z, logsnr))
    # header-only reading gives the same configs
    model_again, diffusion_again, provenance, header = read_model_configs(path)
    assert (model_again, diffusion_again) == (model_config, diffusion_config)
    assert header["__metadata__"]["format_version"] == str(FORMAT_VERSION)


def test_save_is_atomic_and_readable(tmp_path, tiny):
    path = write(tmp_path / "model.safetensors", tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # like any file the user writes


# ------------------------------------------------------------------------------------------ strict loading


def test_missing_tensor(tmp_path, tiny):
    tensors = dict(tiny[0].state_dict())
    del tensors["conv_out.bias"]
    refused(write(tmp_path / "m.safetensors", tiny, tensors), "missing tensor 'conv_out.bias'")


def test_extra_tensor(tmp_path, tiny):
    tensors = {**tiny[0].state_dict(), "head.weight": torch.zeros(3)}
    refused(write(tmp_path / "m.safetensors", tiny, tensors), "unexpected tensor 'head.weight'")


def test_mis_shaped_tensor(tmp_path, tiny):
    tensors = {**tiny[0].state_dict(), "mid_attn.temporal.relative_bias": torch.zeros(2, 9)}
    refused(write(tmp_path / "m.safetensors", tiny, tensors), "'mid_attn.temporal.relative_bias'", "(2, 9)", "(2, 17)")


def test_non_float_tensor(tmp_path, tiny):
    tensors = dict(tiny[0].state_dict())
    tensors["conv_in.weight"] = tensors["conv_in.weight"].to(torch.int8)
    refused(write(tmp_path / "m.safetensors", tiny, tensors), "'conv_in.weight'", "dtype I8")
    # half precision is a float: it loads, cast to the model's float32
    tensors = {name: t.half() for name, t in tiny[0].state_dict().items()}
    loaded = load_model(write(tmp_path / "half.safetensors", tiny, tensors))
    assert loaded.net.conv_in.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.net.conv_in.weight, tiny[0].conv_in.weight, atol=1e-3, rtol=1e-3)


def test_unknown_config_key(tmp_path, tiny):
    model = {**to_dict(tiny[1]), "colour": True}
    refused(write(tmp_path / "m.safetensors", tiny, model_config=json.dumps(model)), "unknown key model.colour")


def test_invalid_config_value(tmp_path, tiny):
    model = {**to_dict(tiny[1]), "channels": 2}
    refused(write(tmp_path / "m.safetensors", tiny, model_config=json.dumps(model)), "model.channels")
    diffusion = {"parameterization": "score", "schedule": "cosine"}
    refused(write(tmp_path / "d.safetensors", tiny, diffusion_config=json.dumps(diffusion)), "diffusion.parameterization")


def test_config_not_json(tmp_path, tiny):
    refused(write(tmp_path / "m.safetensors", tiny, model_config="{oops"), "not JSON")


def test_wrong_format_tag(tmp_path, tiny):
    refused(write(tmp_path / "m.safetensors", tiny, format="diffusers"), "not a vdgen model checkpoint")
    # safetensors from elsewhere, without vdgen metadata at all
    other = tmp_path / "other.safetensors"
    save_tensors(other, {"weight": torch.zeros(2)}, {})
    refused(other, "not a vdgen model checkpoint")


def test_wrong_format_version(tmp_path, tiny):
    refused(write(tmp_path / "m.safetensors", tiny, format_version="2"), "format version '2'", "not supported")


def test_absurd_size_is_refused_before_allocating(tmp_path, tiny):
    model = {**to_dict(tiny[1]), "base_width": 4096, "multipliers": [64, 64, 64]}  # about 10^13 parameters
    path = write(tmp_path / "m.safetensors", tiny, model_config=json.dumps(model))
    started = time.monotonic()
    refused(path, "parameters")
    assert time.monotonic() - started < 3.0


# ------------------------------------------------------------------------------------------ hostile and broken files


class Payload:
    """Unpickling this creates `marker`: proof that the loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_runs_when_unpickled(tmp_path):
    # The control for the tests below: the payload does create its marker when unpickled.
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors", "model.ckpt"])
def test_torch_save_pickle_is_refused_without_running_it(tmp_path, name, tiny):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"state_dict": tiny[0].state_dict(), "payload": Payload(marker)}, path)
    message = refused(path, "pickle", "safetensors", "arbitrary code")
    assert len(message) < 300
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_raw_pickles_are_refused_without_running_them(tmp_path, protocol, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"payload": Payload(marker), "pad": b"x" * 64}, protocol=protocol))
    refused(path)
    assert not marker.exists()


def padded_to_header_length(path, tiny, low_bytes: bytes):
    """A real checkpoint whose little-endian header length starts with `low_bytes` (metadata padded)."""
    write(path, tiny, pad="")
    (base,) = struct.unpack("<Q", path.read_bytes()[:8])
    modulus = 256 ** len(low_bytes)
    target = int.from_bytes(low_bytes, "little")
    target += (base + 8 - target + modulus - 1) // modulus * modulus  # the first such length past base + 8
    for pad in range(target - base - 8, target - base + 8):  # the JSON grows a byte a pad character
        write(path, tiny, pad="x" * pad)
        if path.read_bytes()[: len(low_bytes)] == low_bytes:
            return path
    raise AssertionError(f"no padding gives a header length starting with {low_bytes!r}")


@pytest.mark.parametrize("low_bytes", [b"\x80", b"PK"], ids=["pickle-proto-byte", "zip-magic"])
@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_header_length_that_starts_like_a_pickle_still_loads(tmp_path, tiny, low_bytes, name):
    # safetensors pads its header to a multiple of 8, so a length whose low byte is 0x80 (pickle's
    # PROTO) happens to about 1 file in 32: such a file is safetensors, not a pickle.
    net = tiny[0]
    path = padded_to_header_length(tmp_path / name, tiny, low_bytes)
    loaded = load_model(path)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key


def test_header_length_beyond_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"__metadata__": {}}')
    refused(path, "malformed safetensors header", "10000")
    body = b'{"__metadata__": {}}'
    path.write_bytes(struct.pack("<Q", len(body) + 4) + body)  # 4 bytes more than there are
    refused(path, "malformed safetensors header", f"declared {len(body) + 4} bytes")


def test_header_not_json(tmp_path):
    path = tmp_path / "m.safetensors"
    body = b"\xff\xfenot json at all"
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    refused(path, "malformed safetensors header", "not JSON")
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    refused(path, "malformed safetensors header")


def test_tensor_data_beyond_the_file(tmp_path, tiny):
    path = write(tmp_path / "m.safetensors", tiny)
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    refused(path, "malformed safetensors entry")


@pytest.mark.parametrize("name", ["empty.safetensors", "empty.pt"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    message = refused(path, "empty")
    assert "pickle" not in message


def test_directory(tmp_path):
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    refused(folder, "folder")


def test_missing_path(tmp_path):
    refused(tmp_path / "nowhere.safetensors", "no such checkpoint")
