"""The CLI against hostile or broken inputs, full disks, strangers' checkpoints and failing training.

Every command that reads video (extend, interpolate, eval predict) gives, for every file of the bad-input
corpus (tests/data/bad), either a correct output or one line `error: FILE: PROBLEM` with exit code 1, no
traceback and no file left behind.
Run in-process through `vdgen.cli.main` with a tiny 8-frame model and 1 sampling step.
Set VDGEN_WRITE_OUTCOMES=1 to (re)write tests/data/bad/OUTCOMES.md from a full run of the corpus tests.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch

import vdgen.atomic
import vdgen.generate
import vdgen.train
import vdgen.video
from helpers_train import BAD, MODEL8, clean_error, corpus_outcomes, leftovers, make_checkpoint, run_cli, train_config, write_config
from vdgen.checkpoint import load_model, save_tensors
from vdgen.config import DiffusionConfig, to_dict
from vdgen.errors import CheckpointError, VdgenError
from vdgen.video import read_video

CORPUS = sorted(p.name for p in BAD.iterdir() if p.suffix != ".md")
EXTEND_TO = 25  # frames: longer than every corpus clip (24 at most), so every readable clip can be extended
COMMANDS = {
    "extend": ["extend", "{clip}", "--frames", str(EXTEND_TO)],
    "interpolate": ["interpolate", "{clip}", "--factor", "2"],
}
EVAL_FRAMES = 4  # frames per clip for `eval predict` (2 given, 2 predicted)
COMMON = ["--steps", "1", "--seed", "0", "--threads", "1"]
# Valid clips that a command cannot use: interpolation needs two frames.
UNUSABLE = {("interpolate", "single_frame.mp4"), ("interpolate", "still.png")}
OUTCOMES: dict[tuple[str, str], str] = {}
TABLE_COMMANDS = [*sorted(COMMANDS), "eval predict"]


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("VDGEN_DEBUG", raising=False)
    monkeypatch.delenv("VDGEN_PROGRESS", raising=False)


@pytest.fixture(scope="session")
def ckpt8(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt8") / "tiny8.safetensors")


def conditional_args(command: str, clip: Path, checkpoint: Path, output: Path, *extra) -> list:
    args = [a.format(clip=clip) for a in COMMANDS[command]]
    return [*args, "-c", checkpoint, "-o", output, *COMMON, *extra]


def check_output(command: str, output: Path) -> int:
    """A written result: the video reads back at the model's size with the right length; returns its frames."""
    settings = json.loads(output.with_name(output.name + ".json").read_text())
    frames, _ = read_video(output)
    expected = EXTEND_TO if command == "extend" else (settings["input_frames"] - 1) * 2 + 1
    assert frames.shape == (expected, MODEL8.height, MODEL8.width, 3)
    assert settings["output_frames"] == expected
    return expected


# ------------------------------------------------------------------------------------ the corpus


def test_corpus_is_the_one_the_readme_describes():
    assert sorted(corpus_outcomes()) == CORPUS and len(CORPUS) == 51


@pytest.mark.parametrize("name", CORPUS)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_corpus_file_gives_output_or_one_clean_error(command, name, ckpt8, tmp_path, capsys):
    clip = BAD / name
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "result.mp4"
    code, stderr = run_cli(conditional_args(command, clip, ckpt8, output), capsys)
    message = clean_error(stderr)
    if code == 0:
        frames = check_output(command, output)
        OUTCOMES[command, name] = f"output ({frames} frames)"
    else:
        OUTCOMES[command, name] = f"clean error: {message.replace(str(clip) + ': ', '')}" if message else "other"
        assert code == 1 and message is not None, stderr
        assert str(clip) in message, f"the message does not name the file: {message}"
        assert list(out_dir.iterdir()) == [], "a failed command left files behind"
    assert leftovers(out_dir) == []
    expected_ok = corpus_outcomes()[name] == "frames" and (command, name) not in UNUSABLE
    assert (code == 0) == expected_ok, f"{command} {name}: {stderr}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_folder_and_missing_path_as_clip(command, ckpt8, tmp_path, capsys):
    folder = tmp_path / "clip.mp4"  # a folder named like a file, without PNG frames
    folder.mkdir()
    for clip, problem in ((folder, "folder without PNG frames"), (tmp_path / "missing.mp4", "no such file")):
        code, stderr = run_cli(conditional_args(command, clip, ckpt8, tmp_path / "out.mp4"), capsys)
        message = clean_error(stderr)
        assert code == 1 and message and str(clip) in message and problem in message, stderr
        assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_file_through_eval_predict(name, ckpt8, tmp_path, capsys):
    """`vdgen eval predict FOLDER` with the one file in it. A folder source skips unreadable and short clips,
    so a bad file gives a clean error naming the folder and what was skipped (not the file's own problem)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(BAD / name, folder / name)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = out_dir / "result.json"
    code, stderr = run_cli(["eval", "predict", folder, "-c", ckpt8, "-n", "1", "--frames", EVAL_FRAMES, "--context", "2",
                            "--no-fvd", "--json", result, *COMMON], capsys)
    frames = len(read_video(BAD / name)[0]) if corpus_outcomes()[name] == "frames" else 0
    message = clean_error(stderr)
    if code == 0:
        data = json.loads(result.read_text())
        assert data["clips"] == 1 and data["frames"] == EVAL_FRAMES and data["source"]["skipped_unreadable"] == 0
        OUTCOMES["eval predict", name] = "output (scores)"
    else:
        OUTCOMES["eval predict", name] = f"clean error: {message.replace(str(folder) + ': ', '')}" if message else "other"
        assert code == 1 and message and str(folder) in message, stderr
        assert list(out_dir.iterdir()) == [], "a failed command left files behind"
    skipped = "1 unreadable" if frames == 0 else "1 shorter" if frames < EVAL_FRAMES else None
    assert (code == 0) == (skipped is None), stderr
    assert skipped is None or skipped in message


def test_eval_source_that_is_a_file_or_missing(ckpt8, tmp_path, capsys):
    for source, problem in ((BAD / "h264.mp4", "not a folder of clips"), (tmp_path / "missing", "unknown source")):
        code, stderr = run_cli(["eval", "predict", source, "-c", ckpt8, "-n", "1", "--frames", EVAL_FRAMES, "--context", "2",
                                "--no-fvd", *COMMON], capsys)
        message = clean_error(stderr)
        assert code == 1 and message and str(source) in message and problem in message, stderr


@pytest.fixture(scope="module", autouse=True)
def _write_outcomes_table():
    yield
    if os.environ.get("VDGEN_WRITE_OUTCOMES") and len(OUTCOMES) == len(CORPUS) * len(TABLE_COMMANDS):
        write_outcomes_table(BAD / "OUTCOMES.md")


def write_outcomes_table(path: Path) -> None:
    expected = corpus_outcomes()
    lines = [
        "# CLI outcomes for the bad-input corpus",
        "",
        "Written by `VDGEN_WRITE_OUTCOMES=1 pytest tests/test_reliability.py -k corpus` (do not edit by hand).",
        f"Each file run through `vdgen extend --frames {EXTEND_TO}`, `vdgen interpolate --factor 2` and `vdgen eval",
        f"predict FOLDER --frames {EVAL_FRAMES} --no-fvd` (FOLDER holding only that file) with a tiny 8-frame 16x16 model and",
        "1 sampling step. `output`: the command wrote a correct result; `clean error`: one line `error: FILE: PROBLEM`",
        "(eval: `FOLDER: ...`, the folder source skips bad clips), exit code 1, no traceback, no file left; `other`: a bug.",
        "`read_video` is the reader's expected outcome from README.md.",
        "",
        "| file | read_video | " + " | ".join(TABLE_COMMANDS) + " |",
        "|---|---|" + "---|" * len(TABLE_COMMANDS),
    ]
    for name in CORPUS:
        cells = [OUTCOMES[command, name] for command in TABLE_COMMANDS]
        lines.append(f"| {name} | {expected[name]} | " + " | ".join(cells) + " |")
    lines += ["", "| command | output | clean error | other |", "|---|---|---|---|"]
    for command in TABLE_COMMANDS:
        kinds = [OUTCOMES[command, name].split(" (")[0].split(":")[0] for name in CORPUS]
        lines.append(f"| {command} | {kinds.count('output')} | {kinds.count('clean error')} | {kinds.count('other')} |")
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------ resource limits


@pytest.mark.parametrize("name", ["huge_16000.y4m", "huge_screen.gif", "huge_30000.y4m"])
def test_decompression_bombs_are_refused_with_the_limit(name, ckpt8, tmp_path, capsys):
    code, stderr = run_cli(conditional_args("interpolate", BAD / name, ckpt8, tmp_path / "out.mp4"), capsys)
    message = clean_error(stderr)
    assert code == 1 and message and str(BAD / name) in message, stderr
    if name == "huge_30000.y4m":  # over libav's own limit: it refuses to open the file, and says why
        assert "Picture size 30000x30000 is invalid" in message, message
    else:
        assert "exceed" in message and "limit of" in message and "--max-pixels" in message, message


def test_limits_can_be_lowered_and_raised(ckpt8, tmp_path, capsys):
    clip = BAD / "h264.mp4"  # 64x48 = 3072 pixels per frame, 24 frames
    out = tmp_path / "out.mp4"
    code, stderr = run_cli(conditional_args("interpolate", clip, ckpt8, out, "--max-pixels", "3071"), capsys)
    message = clean_error(stderr)
    assert code == 1 and "64x48 frames exceed the limit of 3071" in message and "--max-pixels" in message, stderr
    code, stderr = run_cli(conditional_args("interpolate", clip, ckpt8, out, "--max-pixels", "3072", "--max-frames", "5"), capsys)
    assert code == 0, stderr
    assert json.loads(out.with_name("out.mp4.json").read_text())["input_frames"] == 5
    assert check_output("interpolate", out) == 9
    # The 16000x16000 bomb with the limit raised past it: no body, so no frames, and nothing allocated.
    code, stderr = run_cli(conditional_args("extend", BAD / "huge_16000.y4m", ckpt8, tmp_path / "b.mp4",
                                            "--max-pixels", str(16000 * 16000)), capsys)
    assert code == 1 and "decoded 0 frames" in clean_error(stderr), stderr
    code, stderr = run_cli(conditional_args("extend", clip, ckpt8, tmp_path / "c.mp4", "--max-frames", "0"), capsys)
    assert code == 1 and "--max-frames" in clean_error(stderr), stderr


def test_extend_frames_shorter_than_the_clip_names_the_clip(ckpt8, tmp_path, capsys):
    code, stderr = run_cli(["extend", BAD / "h264.mp4", "--frames", "10", "-c", ckpt8, "-o", tmp_path / "o.mp4", *COMMON], capsys)
    message = clean_error(stderr)
    assert code == 1 and str(BAD / "h264.mp4") in message and "--max-frames" in message, stderr


# ------------------------------------------------------------------------------------ outputs


def interpolate_to(output: Path, ckpt8: Path, capsys, *extra) -> tuple[int, str]:
    return run_cli(conditional_args("interpolate", BAD / "short_3.mp4", ckpt8, output, *extra), capsys)


def test_existing_output_needs_overwrite(ckpt8, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"earlier result")
    # Refused before any work: even the (missing) checkpoint is not looked at.
    code, stderr = run_cli(["generate", "-c", tmp_path / "missing.safetensors", "-o", out, *COMMON], capsys)
    assert code == 1 and "already exists" in clean_error(stderr) and "--overwrite" in stderr, stderr
    code, stderr = interpolate_to(out, ckpt8, capsys)
    assert code == 1 and "already exists" in clean_error(stderr)
    assert out.read_bytes() == b"earlier result"
    code, stderr = interpolate_to(out, ckpt8, capsys, "--overwrite")
    assert code == 0, stderr
    assert check_output("interpolate", out) == 5 and leftovers(tmp_path) == []


def test_output_folder_that_is_a_file_or_missing(ckpt8, tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for out, problem in ((not_a_folder / "out.mp4", "is not a folder"), (tmp_path / "nope" / "out.mp4", "does not exist")):
        code, stderr = interpolate_to(out, ckpt8, capsys)
        message = clean_error(stderr)
        assert code == 1 and message and problem in message, stderr


def test_unwritable_folder(ckpt8, tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "old.mp4").write_bytes(b"old")
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root (as in CI containers): permissions do not stop writes
            pytest.skip("running as root: chmod 555 does not make a folder unwritable (see the ENOSPC and file-as-folder tests)")
        code, stderr = interpolate_to(folder / "out.mp4", ckpt8, capsys)
        assert code == 1 and "not writable" in clean_error(stderr), stderr
        assert sorted(p.name for p in folder.iterdir()) == ["old.mp4"]
    finally:
        folder.chmod(0o755)


def test_permission_denied_at_write_time_keeps_the_earlier_file(ckpt8, tmp_path, capsys, monkeypatch):
    # What an unwritable folder does at write time, simulated so that it also holds when running as root.
    out = tmp_path / "out.mp4"
    out.write_bytes(b"earlier result")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(vdgen.atomic.tempfile, "mkstemp", denied)
    code, stderr = interpolate_to(out, ckpt8, capsys, "--overwrite")
    message = clean_error(stderr)
    assert code == 1 and message and "Permission denied" in message and str(out) in message, stderr
    assert out.read_bytes() == b"earlier result" and leftovers(tmp_path) == []


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["rename", "encoder"])
def test_full_disk_is_a_clean_error_and_keeps_the_earlier_file(where, ckpt8, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"earlier result")
    if where == "rename":
        monkeypatch.setattr(vdgen.atomic.os, "replace", _disk_full)
    else:
        def half_written(tmp, frames, rate):
            tmp.write_bytes(b"half a video")
            _disk_full()

        monkeypatch.setattr(vdgen.video, "_encode_mp4", half_written)
    code, stderr = interpolate_to(out, ckpt8, capsys, "--overwrite")
    message = clean_error(stderr)
    assert code == 1 and message and "no space left on device" in message and str(out) in message, stderr
    assert out.read_bytes() == b"earlier result" and leftovers(tmp_path) == []


def test_ctrl_c_while_writing_removes_the_temporary_file(ckpt8, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"earlier result")

    def interrupted(tmp, frames, rate):
        tmp.write_bytes(b"half a video")
        raise KeyboardInterrupt

    monkeypatch.setattr(vdgen.video, "_encode_mp4", interrupted)
    code, stderr = interpolate_to(out, ckpt8, capsys, "--overwrite")
    assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert out.read_bytes() == b"earlier result" and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ strangers' checkpoints


class Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _torch_zip(path: Path, marker: Path) -> None:
    torch.save({"state_dict": Payload(marker)}, path)


def _raw_header(path: Path, header: bytes, declared: int | None = None, body: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header) if declared is None else declared) + header + body)


def _metadata(model: dict | None = None, **changes) -> dict[str, str]:
    model = {**to_dict(MODEL8), **(model or {})}
    meta = {"format": "vdgen-model", "format_version": "1", "model_config": json.dumps(model),
            "diffusion_config": json.dumps(to_dict(DiffusionConfig())), "provenance": "{}"}
    return {**meta, **changes}


def _weights(model=MODEL8) -> dict[str, torch.Tensor]:
    from vdgen.checkpoint import build_network

    return build_network(model).state_dict()


def _oversized_header(path: Path, marker: Path) -> None:
    with open(path, "wb") as handle:  # sparse: 17 MB declared and present, beyond the 16 MB header limit
        handle.write(struct.pack("<Q", 17 * 2**20))
        handle.truncate(8 + 17 * 2**20 + 8)


STRANGERS = {
    "evil.pt": (lambda p, m: p.write_bytes(pickle.dumps(Payload(m), protocol=2)), "pickle"),
    "evil.ckpt": (_torch_zip, "pickle"),
    "evil.bin": (lambda p, m: p.write_bytes(pickle.dumps(Payload(m), protocol=0)), "pickle"),
    "pickle_named.safetensors": (lambda p, m: p.write_bytes(pickle.dumps(Payload(m), protocol=4)), "pickle"),
    "torch_zip_named.safetensors": (_torch_zip, "pickle"),
    "declared_past_end.safetensors": (lambda p, m: _raw_header(p, b"{}", declared=10**6), "malformed safetensors header"),
    "oversized_header.safetensors": (_oversized_header, "malformed safetensors header"),
    "not_json.safetensors": (lambda p, m: _raw_header(p, b"{not json}"), "not JSON"),
    "bad_entry.safetensors": (lambda p, m: _raw_header(p, json.dumps({"w": {"dtype": "F32", "shape": 5, "data_offsets": [0, 4]}}).encode(), body=b"\0" * 4), "malformed safetensors entry"),
    "plain_safetensors.safetensors": (lambda p, m: save_tensors(p, {"w": torch.zeros(2)}, {}), "not a vdgen model checkpoint"),
    "unknown_key.safetensors": (lambda p, m: save_tensors(p, _weights(), _metadata({"evil": 1})), "unknown key model.evil"),
    "absurd_frames.safetensors": (lambda p, m: save_tensors(p, _weights(), _metadata({"frames": 10**9})), "model.frames must be in"),
    "absurd_width.safetensors": (lambda p, m: save_tensors(p, {"w": torch.zeros(1)}, _metadata({"base_width": 4096, "multipliers": [64, 64, 64, 64], "heads": 64, "height": 64, "width": 64})), "parameters (limit"),
    "mismatched.safetensors": (lambda p, m: save_tensors(p, _weights(), _metadata({"base_width": 32})), "has shape"),
    "missing_tensor.safetensors": (lambda p, m: save_tensors(p, dict(list(_weights().items())[1:]), _metadata()), "missing tensor"),
    "future_version.safetensors": (lambda p, m: save_tensors(p, _weights(), _metadata(format_version="99")), "format version"),
}

TENSOR_PROBLEMS = {"parameters (limit", "has shape", "missing tensor"}


@pytest.mark.parametrize("name", sorted(STRANGERS))
def test_strangers_checkpoint_is_refused_cleanly_and_runs_nothing(name, tmp_path, capsys):
    make, problem = STRANGERS[name]
    path, marker = tmp_path / name, tmp_path / "marker"
    make(path, marker)
    assert not marker.exists()
    commands = [["generate", "-c", path, "-o", tmp_path / "out.mp4", *COMMON],
                ["extend", BAD / "h264.mp4", "-c", path, "-o", tmp_path / "ext.mp4", *COMMON]]
    if problem not in TENSOR_PROBLEMS:  # `info` reads the header and configs only
        commands.append(["info", path])
    for args in commands:
        code, stderr = run_cli(args, capsys)
        message = clean_error(stderr)
        assert code == 1 and message and str(path) in message and problem in message, stderr
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert [p.name for p in tmp_path.iterdir()] == [name], "a refused command left files behind"
    if problem == "pickle":
        assert "arbitrary code" in message


def test_oversized_config_is_refused_before_allocating(tmp_path):
    # 1.8 billion parameters (7 GB, under the 2e9 limit) declared by a tiny file: refused on shapes alone.
    path = tmp_path / "forged.safetensors"
    save_tensors(path, {"w": torch.zeros(1)}, _metadata({"base_width": 384, "multipliers": [1, 2, 4, 8], "height": 64, "width": 64}))
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="missing tensor"):
        load_model(path)
    assert time.monotonic() - started < 20  # building the real network would take minutes and 7 GB


# ------------------------------------------------------------------------------------ training faults


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(bad, tmp_path, capsys, monkeypatch):
    real = vdgen.train.training_loss
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * bad if len(calls) == 3 else loss

    monkeypatch.setattr(vdgen.train, "training_loss", poisoned)
    run = tmp_path / "run"
    code, stderr = run_cli(["train", run, "--config", write_config(tmp_path / "c.json", train_config(steps=6))], capsys)
    progress = [line for line in stderr.splitlines() if line.startswith(("training ", "step ", "saved ", "exported "))]
    message = clean_error("\n".join(line for line in stderr.splitlines() if line not in progress))
    assert code == 1 and message and f"loss became {bad}" in message and "step 3" in message, stderr
    assert "last good checkpoint" in message and "Traceback" not in stderr
    state = vdgen.train.load_state(run, train_config(steps=6), torch.device("cpu"))
    assert state.step == 2 and all(torch.isfinite(p).all() for p in state.net.parameters())
    load_model(run / "model.safetensors")
    assert leftovers(run) == []


# ------------------------------------------------------------------------------------ --debug


def _internal_bug(*args, **kwargs):
    raise RuntimeError("boom: an internal bug")


def test_internal_error_is_one_line_without_debug(ckpt8, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vdgen.generate, "sample_videos", _internal_bug)
    code, stderr = run_cli(["generate", "-c", ckpt8, "-o", tmp_path / "o.mp4", *COMMON], capsys)
    lines = [line for line in stderr.splitlines() if line.startswith(("internal error", "error", "Traceback"))]
    assert code == 1 and lines == ["internal error: RuntimeError: boom: an internal bug (rerun with --debug for the traceback and report it)"], stderr
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_full_traceback(how, ckpt8, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vdgen.generate, "sample_videos", _internal_bug)
    args = ["generate", "-c", ckpt8, "-o", tmp_path / "o.mp4", *COMMON]
    if how == "flag":
        args = ["--debug", *args]
    else:
        monkeypatch.setenv("VDGEN_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom") as info:
        run_cli(args, capsys)
    assert any(entry.name == "generate" for entry in info.traceback)  # the whole stack, from the command down
    # User errors too: --debug turns the one-line message into the traceback of the VdgenError.
    with pytest.raises(VdgenError, match="no such checkpoint"):
        run_cli([*args[: args.index("-c") + 1], tmp_path / "missing.safetensors", *args[args.index("-c") + 2:]], capsys)
