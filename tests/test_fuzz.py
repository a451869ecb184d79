"""Property-based fuzzing of the two readers of untrusted files: `read_video` and the checkpoint loader.

Random bytes and mutated valid files (bytes flipped, cut, inserted; header fields replaced) may give a
result or a `VdgenError` subclass, never another exception and never a hang. Each test is bounded
(a few seconds; an alarm turns a stuck example into a failure) so the suite can run them every time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdgen.checkpoint import build_network, load_model, read_header, save_model
from vdgen.config import DiffusionConfig, ModelConfig
from vdgen.errors import VdgenError
from vdgen.video import read_video, write_video

EXAMPLE_SECONDS = 5  # one example running longer than this is a hang
# VDGEN_FUZZ_SCALE=50 fuzzes 50 times longer with fresh random examples (a manual hunt); the default
# run is derandomized, so the suite is repeatable and takes a few seconds per test.
SCALE = int(os.environ.get("VDGEN_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE, deadline=None, derandomize=SCALE == 1, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# A network small enough that a successful load costs milliseconds.
SMALL_MODEL = ModelConfig(frames=2, height=8, width=8, base_width=8, multipliers=(1,), attention_resolutions=(8,), heads=1)
SUFFIXES = [".mp4", ".gif", ".mkv", ".y4m", ".webm", ".avi", ".mpg", ".png", ".h264", ".bin"]


class Samples(dict):
    """Valid files as bytes, with a short repr so a failing example's report stays readable."""

    def __repr__(self) -> str:
        return f"<valid {', '.join(self)}>"


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging the suite) if the body runs longer than `seconds`."""

    def expired(signum, frame):
        raise TimeoutError(f"example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def only_clean_errors(call) -> None:
    """Run `call()`: success or a VdgenError pass; anything else (or a hang) fails the example."""
    with time_limit(EXAMPLE_SECONDS):
        try:
            call()
        except VdgenError as exc:
            message = str(exc)
            assert message and "\n" not in message, f"not a one-line message: {message!r}"


@st.composite
def mutations(draw, size: int, hot: int | None = None):
    """A list of (op, position, payload) edits; positions favour the first `hot` bytes when given."""
    positions = st.integers(0, max(size - 1, 0))
    if hot:
        positions = st.one_of(st.integers(0, hot - 1), positions)
    ops = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]), positions, st.binary(min_size=1, max_size=16))
    return draw(st.lists(ops, min_size=1, max_size=6))


def mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for op, pos, payload in edits:
        pos = min(pos, len(buf))
        if op == "flip" and pos < len(buf):
            buf[pos] ^= payload[0] or 0xFF
        elif op == "set":
            buf[pos : pos + len(payload)] = payload
        elif op == "insert":
            buf[pos:pos] = payload
        elif op == "delete":
            del buf[pos : pos + len(payload)]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


# ------------------------------------------------------------------------------------ video reader


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="vdgen-fuzz-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def valid_videos(workdir) -> dict[str, bytes]:
    """Small valid clips (6 frames, 16x16) as bytes: H.264 MP4 and GIF."""
    y, x = np.mgrid[0:16, 0:16]
    frames = np.stack([((x * 13 + y * 7 + 20 * f) % 256).astype(np.uint8) for f in range(6)])[..., None].repeat(3, -1)
    out = Samples()
    for suffix in (".mp4", ".gif"):
        path = workdir / f"valid{suffix}"
        write_video(path, frames, fps=8)
        out[suffix] = path.read_bytes()
    return out


def read_limited(path: Path) -> None:
    # Small limits: a mutated header may declare any size, and fuzzing must not allocate gigabytes.
    frames, fps = read_video(path, max_frames=32, max_pixels=256 * 256, max_total_pixels=32 * 256 * 256)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3 and len(frames) >= 1
    assert np.isfinite(fps) and fps > 0


@fuzz(60)
@given(data=st.binary(max_size=4096), suffix=st.sampled_from(SUFFIXES))
def test_read_video_random_bytes(workdir, data, suffix):
    path = workdir / f"random{suffix}"
    path.write_bytes(data)
    only_clean_errors(lambda: read_limited(path))


@fuzz(120)
@given(data=st.data(), kind=st.sampled_from([".mp4", ".gif"]), suffix=st.sampled_from([".mp4", ".gif", ".mkv"]))
def test_read_video_mutated_valid_clip(workdir, valid_videos, data, kind, suffix):
    original = valid_videos[kind]
    # MP4 and GIF keep the structure that sizes depend on in their first few hundred bytes (ftyp/moov with
    # faststart, the logical screen descriptor): mutate there more often.
    edited = mutate(original, data.draw(mutations(len(original), hot=512)))
    path = workdir / f"mutated{suffix}"
    path.write_bytes(edited)
    only_clean_errors(lambda: read_limited(path))


# ------------------------------------------------------------------------------------ checkpoint loader


@pytest.fixture(scope="module")
def valid_checkpoint(workdir) -> Samples:
    torch.manual_seed(0)
    path = workdir / "valid.safetensors"
    save_model(path, build_network(SMALL_MODEL).state_dict(), SMALL_MODEL, DiffusionConfig(), {"made_by": "test_fuzz"})
    return Samples(checkpoint=path.read_bytes())


def split_checkpoint(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join_checkpoint(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def load_both(path: Path) -> None:
    read_header(path)
    loaded = load_model(path)
    assert isinstance(loaded.net, torch.nn.Module)


@fuzz(60)
@given(data=st.one_of(st.binary(max_size=512), st.builds(lambda n, rest: struct.pack("<Q", n) + rest, st.integers(0, 2**64 - 1), st.binary(max_size=256))),
       suffix=st.sampled_from([".safetensors", ".pt", ".ckpt", ".bin", ""]))
def test_checkpoint_random_bytes(workdir, data, suffix):
    path = workdir / f"random{suffix or '_noext'}"
    path.write_bytes(data)
    only_clean_errors(lambda: load_both(path))


@fuzz(80)
@given(data=st.data())
def test_checkpoint_mutated_bytes(workdir, valid_checkpoint, data):
    original = valid_checkpoint["checkpoint"]
    (length,) = struct.unpack("<Q", original[:8])
    edited = mutate(original, data.draw(mutations(len(original), hot=8 + length)))
    path = workdir / "mutated.safetensors"
    path.write_bytes(edited)
    only_clean_errors(lambda: load_both(path))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
MODEL_KEYS = sorted(json.loads(json.dumps(SMALL_MODEL.__dict__, default=list)))


@fuzz(100)
@given(data=st.data())
def test_checkpoint_mutated_header_fields(workdir, valid_checkpoint, data):
    """Replace header fields with arbitrary JSON: tensor dtype/shape/offsets, config values, metadata."""
    header, body = split_checkpoint(valid_checkpoint["checkpoint"])
    names = sorted(k for k in header if k != "__metadata__")
    target = data.draw(st.sampled_from(["tensor", "model_config", "metadata", "diffusion_config"]))
    if target == "tensor":
        name = data.draw(st.sampled_from(names))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        header[name][field] = data.draw(st.one_of(JSON_VALUES, st.lists(st.integers(-5, 2**40), max_size=5)))
    elif target in ("model_config", "diffusion_config"):
        config = json.loads(header["__metadata__"][target])
        key = data.draw(st.sampled_from(MODEL_KEYS + ["parameterization", "schedule", "unknown"]))
        config[key] = data.draw(st.one_of(JSON_VALUES, st.integers(0, 5000), st.lists(st.integers(0, 70), max_size=9)))
        header["__metadata__"][target] = json.dumps(config)
    else:
        key = data.draw(st.sampled_from(["format", "format_version", "provenance", "model_config"]))
        header["__metadata__"][key] = data.draw(st.one_of(st.text(max_size=12), JSON_VALUES.map(json.dumps)))
    path = workdir / "fields.safetensors"
    path.write_bytes(join_checkpoint(header, body))
    only_clean_errors(lambda: load_both(path))
