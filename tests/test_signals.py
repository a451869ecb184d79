"""Real signals to real `python -m vdgen` processes: Ctrl-C (SIGINT) and SIGKILL.

Ctrl-C during generate / extend / interpolate / train exits with 130 and leaves no temporary file;
training saves a resumable checkpoint first. Training killed with SIGKILL at seeded random moments
resumes from its last checkpoint each time, and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import torch

import vdgen.generate
from helpers_train import BAD, Cli, leftovers, make_checkpoint, run_cli, state_tensors, train_config, write_config
from vdgen.checkpoint import load_model
from vdgen.train import load_state, train

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("VDGEN_DEBUG", raising=False)


@pytest.fixture(scope="module")
def ckpt8(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("signals") / "tiny8.safetensors")


def test_ctrl_c_while_extending_exits_130_and_leaves_nothing(ckpt8, tmp_path):
    """A real SIGINT to a real process, while it samples (enough steps to still be running)."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cli = Cli(["extend", BAD / "h264.mp4", "--frames", "64", "--steps", "100000", "-c", ckpt8,
               "-o", out_dir / "result.mp4", "--seed", "0", "--threads", "1"], cwd=tmp_path)
    try:
        cli.wait_for(r"^seed 0 \|")
        time.sleep(0.3)  # into the sampling loop
        cli.send(signal.SIGINT)
        code, stderr = cli.finish()
    finally:
        cli.kill()
    assert code == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert list(out_dir.iterdir()) == [], "an interrupted command left files behind"


@pytest.mark.parametrize("command", ["generate", "interpolate"])
def test_ctrl_c_in_process_while_sampling(command, ckpt8, tmp_path, capsys, monkeypatch):
    """The same through the signal machinery in-process: SIGINT raised at the 3rd network call."""
    real_call = vdgen.generate.PrecisionDenoiser.__call__
    calls = []

    def call_then_ctrl_c(self, z_t, logsnr):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt right here
        return real_call(self, z_t, logsnr)

    monkeypatch.setattr(vdgen.generate.PrecisionDenoiser, "__call__", call_then_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    try:
        args = ["generate"] if command == "generate" else ["interpolate", BAD / "h264.mp4"]
        code, stderr = run_cli([*args, "-c", ckpt8, "-o", tmp_path / "result.mp4", "--steps", "50", "--seed", "0"], capsys)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 3 and code == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert [p.name for p in tmp_path.iterdir()] == [], "an interrupted command left files behind"


def saved_step(run: Path, config) -> int:
    """The step of run/state.safetensors (0 if none yet), after checking both checkpoints load."""
    if not (run / "state.safetensors").exists():
        return 0
    load_model(run / "model.safetensors")
    return load_state(run, config, CPU).step


def test_training_killed_and_interrupted_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, capsys):
    """SIGKILL three times at seeded random moments, then Ctrl-C, resuming each time; then finish."""
    steps = 16  # headroom: four interruptions advance at most 4 steps each
    config = train_config(steps=steps)
    config_file = write_config(tmp_path / "run.json", config)
    reference = tmp_path / "reference"
    train(reference, config)  # uninterrupted, in-process

    run = tmp_path / "run"
    rng = random.Random(20240501)
    step = 0
    for attempt in range(4):
        cli = Cli(["train", run, "--resume"] if attempt else ["train", run, "--config", config_file], cwd=tmp_path)
        try:
            started = cli.wait_for(r"training .* from step (\d+) to")
            assert int(started.group(1)) == step, "resume did not start from the last checkpoint"
            # Right after "step k" (k one or two steps on) or after its "saved" line, plus 0-50 ms: that
            # lands mid-save or mid-step.
            target = step + rng.randint(1, 2)
            cli.wait_for(rf"^step {target}/{steps} " if rng.random() < 0.5 else rf"^saved .* at step {target}$")
            time.sleep(rng.uniform(0.0, 0.05))
            assert cli.process.poll() is None, "training ended before the signal"
            cli.send(signal.SIGKILL if attempt < 3 else signal.SIGINT)
            code, stderr = cli.finish()
        finally:
            cli.kill()
        previous, step = step, saved_step(run, config)
        # "step k" is printed just before step k is saved: the checkpoint holds k - 1 or later.
        assert max(previous, target - 1) <= step <= target + 2
        if attempt < 3:
            assert code == -signal.SIGKILL
        else:  # Ctrl-C: a checkpoint of the last finished step first, then exit 130, nothing left over
            assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
            assert f"saved {run / 'state.safetensors'} at step {step}" in stderr
            assert leftovers(run) == [], "the stale temporary files of the killed runs were not removed"

    code, stderr = run_cli(["train", run, "--resume"], capsys)
    assert code == 0, stderr
    assert f"from step {step} to {steps}" in stderr
    final, expected = state_tensors(run / "state.safetensors"), state_tensors(reference / "state.safetensors")
    assert sorted(final) == sorted(expected)
    for name in expected:
        assert torch.equal(final[name], expected[name]), f"{name} differs from the uninterrupted run"
    assert saved_step(run, config) == steps and leftovers(run) == []
