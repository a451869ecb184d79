"""The training loop (vdgen.train): exact resume, run-folder rules, logs, export, EMA, joint training."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vdgen.train as train_module
from vdgen.checkpoint import load_model
from vdgen.cli import main
from vdgen.config import RunConfig, preset, to_dict
from vdgen.errors import TrainingError
from vdgen.train import TrainCallbacks, ema_decay_at, learning_rate, train, update_ema
from vdgen.video import write_png, write_video


def tiny(**train_changes) -> RunConfig:
    config = preset("tiny")
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train_changes))


def log_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "weights differ"


@pytest.fixture
def masks_seen(monkeypatch) -> list[torch.Tensor | None]:
    """The image_mask of every training forward pass, recorded on the network itself."""
    seen: list[torch.Tensor | None] = []
    real = train_module.build_network

    def spied(*args, **kwargs):
        net = real(*args, **kwargs)
        net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[2] if len(inputs) > 2 else None))
        return net

    monkeypatch.setattr(train_module, "build_network", spied)
    return seen


@pytest.mark.parametrize("decay_steps", [0, 4])
def test_stop_and_resume_matches_an_uninterrupted_run(tmp_path, decay_steps):
    config = tiny(steps=6, decay_steps=decay_steps)
    whole = train(tmp_path / "whole", config)
    first = train(tmp_path / "split", config, max_steps=3)
    assert first.step == 3
    resumed = train(tmp_path / "split", None, resume=True)
    assert resumed.step == whole.step == 6
    assert resumed.losses == whole.losses
    assert_same_weights(resumed.net, whole.net)
    assert_same_weights(resumed.ema, whole.ema)
    assert [r["loss"] for r in log_records(tmp_path / "split")] == [r["loss"] for r in log_records(tmp_path / "whole")]


def test_resume_with_another_model_is_an_error(tmp_path):
    train(tmp_path / "run", tiny(steps=1))
    other = dataclasses.replace(tiny(steps=2), model=dataclasses.replace(tiny().model, base_width=8))
    with pytest.raises(TrainingError, match="different model"):
        train(tmp_path / "run", other, resume=True)
    with pytest.raises(TrainingError, match="cannot resume"):
        train(tmp_path / "nothing", None, resume=True)


def test_a_new_run_does_not_overwrite_an_old_one(tmp_path):
    train(tmp_path / "run", tiny(steps=1))
    with pytest.raises(TrainingError, match="--resume"):
        train(tmp_path / "run", tiny(steps=1))


def test_log_export_and_loss_plot(tmp_path):
    config = tiny(steps=3, warmup_steps=4, lr=1e-3)
    state = train(tmp_path / "run", config)
    records = log_records(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["loss"] for r in records] == state.losses
    assert [r["lr"] for r in records] == pytest.approx([2.5e-4, 5e-4, 7.5e-4])
    loaded = load_model(tmp_path / "run" / "model.safetensors")
    assert loaded.model_config == config.model and loaded.provenance["weights"] == "ema"
    assert_same_weights(loaded.net, state.ema)
    assert any(not torch.equal(a, b) for a, b in zip(state.ema.parameters(), state.net.parameters()))
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0


def test_warm_up_learning_rate():
    assert [learning_rate(s, 1e-3, 4) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert learning_rate(0, 1e-3, 0) == 1e-3


def test_learning_rate_decays_linearly_over_the_last_decay_steps():
    assert [learning_rate(s, 1e-3, 0, 10, 4) for s in range(10)] == pytest.approx(
        [1e-3] * 6 + [8e-4, 6e-4, 4e-4, 2e-4]
    )
    # warm-up and decay overlap: the smaller factor wins
    assert [learning_rate(s, 1e-3, 4, 6, 4) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 6e-4, 4e-4, 2e-4]
    )
    assert learning_rate(9, 1e-3, 0, 10, 1) == pytest.approx(5e-4)  # one decay step is a real one
    with pytest.raises(ValueError, match="needs total_steps"):
        learning_rate(0, 1e-3, 0, 0, 4)


def test_a_cool_down_branch_leaves_the_constant_run_unchanged(tmp_path):
    """`--steps N --decay-steps D` on a copy of a run decays from where it stands; the original goes on."""
    import shutil

    train(tmp_path / "main", tiny(steps=4, warmup_steps=0))
    shutil.copytree(tmp_path / "main", tmp_path / "branch")
    with pytest.raises(SystemExit) as info:
        main(["train", str(tmp_path / "branch"), "--resume", "--steps", "7", "--decay-steps", "3"])
    assert info.value.code == 0
    lr = tiny().train.lr
    assert [r["lr"] for r in log_records(tmp_path / "branch")][4:] == pytest.approx([0.75 * lr, 0.5 * lr, 0.25 * lr])
    assert json.loads((tmp_path / "branch" / "config.json").read_text())["train"]["decay_steps"] == 3
    continued = train(tmp_path / "main", tiny(steps=7, warmup_steps=0), resume=True)
    assert [r["lr"] for r in log_records(tmp_path / "main")] == pytest.approx([lr] * 7)
    branch_losses = [r["loss"] for r in log_records(tmp_path / "branch")]
    # a step's loss is taken before its update: steps 1 to 5 see weights trained at the full rate
    assert branch_losses[:5] == continued.losses[:5]
    assert branch_losses[5] != continued.losses[5]


def test_resuming_inside_the_decay_says_so(tmp_path):
    train(tmp_path / "run", tiny(steps=3, warmup_steps=0))
    messages: list[str] = []
    train(tmp_path / "run", tiny(steps=5, warmup_steps=0, decay_steps=4), resume=True,
          callbacks=TrainCallbacks(on_message=messages.append))
    assert any("decays over steps 2 to 5; resuming after step 3, the next step at 0.40 of lr" in m for m in messages)


def test_decay_longer_than_the_run_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", str(tmp_path / "run"), "--preset", "tiny", "--steps", "2", "--decay-steps", "3"])
    assert info.value.code != 0
    assert "train.decay_steps must be in [0, train.steps]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ema_update_formula():
    torch.manual_seed(0)
    net, ema = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    net(torch.randn(8, 3))  # moves the running statistics (buffers)
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, net, decay=0.9)
    for e, b, p in zip(ema.parameters(), before, net.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p.detach())
    for e, b in zip(ema.buffers(), net.buffers()):
        assert torch.equal(e, b)


def test_ema_decay_warms_up_to_the_configured_value():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay_at(100_000, 0.999) == 0.999
    assert all(ema_decay_at(s, 0.999) <= ema_decay_at(s + 1, 0.999) for s in range(0, 20_000, 97))


def test_joint_training_mask_reaches_the_network(tmp_path, masks_seen):
    train(tmp_path / "run", tiny(steps=2, image_frames=2))
    assert len(masks_seen) == 2
    for mask in masks_seen:
        assert mask.tolist() == [[False] * 4 + [True] * 2] * 2


def test_cli_train(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["train", str(run), "--preset", "tiny", "--steps", "2"])
    assert info.value.code == 0
    assert [r["step"] for r in log_records(run)] == [1, 2]
    assert load_model(run / "model.safetensors").provenance["steps"] == 2


def test_training_on_a_folder_of_videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, frames in (("a.mp4", 8), ("b.gif", 6), ("c.mp4", 3)):
        write_video(folder / name, rng.integers(0, 256, (frames, 20, 24, 3), dtype=np.uint8), 10)
    messages: list[str] = []
    state = train(tmp_path / "run", tiny(steps=2, dataset=str(folder), image_frames=1, frame_skip=2),
                  callbacks=TrainCallbacks(on_message=messages.append))
    assert state.step == 2 and all(np.isfinite(state.losses))
    assert any("3 video clips" in m for m in messages)
    assert load_model(tmp_path / "run" / "model.safetensors").provenance["dataset"] == str(folder)


def test_training_on_a_folder_of_images_is_image_only(tmp_path, masks_seen):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        write_png(folder / f"{i}.png", rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))
    state = train(tmp_path / "run", tiny(steps=2, dataset=str(folder)))
    assert state.step == 2 and all(np.isfinite(state.losses))
    assert len(masks_seen) == 2 and all(mask is not None and bool(mask.all()) for mask in masks_seen)


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_an_infinite_gradient_stops_before_the_weights_change(tmp_path, monkeypatch):
    config = tiny(steps=4)
    train(tmp_path / "run", config, max_steps=2)
    saved = {k: v.clone() for k, v in load_model(tmp_path / "run" / "model.safetensors").net.state_dict().items()}
    real_loss = train_module.training_loss

    def poisoned(net, diffusion, x, generator, image_mask=None):
        return _InfiniteGradient.apply(real_loss(net, diffusion, x, generator, image_mask))

    monkeypatch.setattr(train_module, "training_loss", poisoned)
    with pytest.raises(TrainingError, match="gradient norm became (inf|nan) at step 3"):
        train(tmp_path / "run", None, resume=True)
    after = load_model(tmp_path / "run" / "model.safetensors").net.state_dict()
    assert all(torch.equal(saved[k], after[k]) for k in saved)


def test_training_samples_are_drawn_on_the_models_device(tmp_path, monkeypatch):
    # A model trained on a GPU must be sampled there: sample_videos' default device is the CPU.
    import vdgen.generate

    seen = {}
    real = vdgen.generate.sample_videos

    def spy(net, *args, **kwargs):
        seen["device"] = kwargs.get("device", "cpu (default)")
        seen["net_device"] = next(net.parameters()).device
        return real(net, *args, **kwargs)

    monkeypatch.setattr(vdgen.generate, "sample_videos", spy)
    train(tmp_path / "run", tiny(steps=1, sample_every=1, sample_steps=1))
    assert (tmp_path / "run" / "samples" / "step_0000001.png").exists()
    assert seen["device"] == seen["net_device"]


def test_resume_drops_log_lines_of_steps_the_state_lost(tmp_path):
    # A run killed after logging step k but before saving it logs k again on resume: keep one line per step.
    run = tmp_path / "run"
    train(run, tiny(steps=5), max_steps=2)
    with open(run / "log.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": 3, "loss": 9.0, "lr": 0.0, "samples_per_s": 0.0}) + "\n")
        handle.write('{"step": 4, "lo')  # a line cut short by the kill
    train(run, None, resume=True)
    records = log_records(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert 9.0 not in [r["loss"] for r in records]


def test_training_on_moving_mnist_needs_no_pyav(tmp_path):
    # A lent GPU machine may lack PyAV: training writes its contact sheets and loss plot without it.
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "av.py").write_text("raise ImportError('PyAV is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}
    check = subprocess.run([sys.executable, "-c", "import av"], env=env, capture_output=True, text=True)
    assert "PyAV is blocked" in check.stderr  # the control: av cannot be imported there
    config_path = tmp_path / "run.json"
    config_path.write_text(json.dumps(to_dict(tiny(steps=2, sample_every=2, sample_steps=2))))
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "vdgen", "train", str(run), "--config", str(config_path), "--threads", "1"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (run / "loss.png").stat().st_size > 0
    assert [p.name for p in (run / "samples").iterdir()] == ["step_0000002.png"]


def test_bf16_resumed_on_a_cpu_that_emulates_it_warns(tmp_path, emulating_cpu):
    train(tmp_path / "run", tiny(steps=1, warmup_steps=0, precision="bf16"))
    messages: list[str] = []
    # config None: the precision comes from the run's config.json alone
    train(tmp_path / "run", None, resume=True, max_steps=1, callbacks=TrainCallbacks(on_message=messages.append))
    assert sum("warning: this CPU has no native bf16" in m for m in messages) == 1
    messages.clear()
    emulating_cpu.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    train(tmp_path / "run", None, resume=True, max_steps=1, callbacks=TrainCallbacks(on_message=messages.append))
    assert messages and not any("warning" in m for m in messages)
