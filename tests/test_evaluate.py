"""Evaluation: clip sources and FVD between them, prediction / interpolation scores and their baselines.

A tiny random U-Net (conftest's randomised 'tiny' preset: 4-frame windows at 16x16) and a small stand-in for I3D keep
every test at CPU speed; the numbers are not meaningful, the plumbing and the baselines are.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vdgen.checkpoint import LoadedModel
from vdgen.errors import ConfigError, VideoInputError
from vdgen.evaluate import (
    CheckpointSource,
    DatasetSource,
    FolderSource,
    describe_source,
    evaluate_interpolation,
    evaluate_prediction,
    format_table,
    fvd,
    linear_blend,
    parse_source,
    read_clips,
    repeat_last_frame,
    shared_clips,
    source_label,
    t_grid,
    table_rows,
    validation_loss,
)
from vdgen.video import write_video


class TinyI3D(torch.nn.Module):
    """A stand-in for I3D: [B, 3, F, 224, 224] -> [B, 400] from pooled colour and frame-to-frame change."""

    def __init__(self):
        super().__init__()
        self.projection = torch.nn.Parameter(torch.randn(24, 400, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        pooled = torch.nn.functional.avg_pool3d(x, (1, 112, 112)).transpose(1, 2).flatten(2)  # [B, F, 3 * 2 * 2]
        change = pooled.diff(dim=1).abs().mean(dim=1)
        return torch.cat([pooled.mean(dim=1), change], dim=1) @ self.projection


@pytest.fixture(scope="module")
def tiny_model(make_net, tiny_config):
    return LoadedModel(make_net(0), tiny_config.model, tiny_config.diffusion, {}, Path("tiny.safetensors"))


def clips_like(n, frames=8, size=16, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, frames, size, size, channels), dtype=np.uint8)


def strict_json(result):
    return json.loads(json.dumps(result, allow_nan=False))


# ------------------------------------------------------------------------------------------ sources


def test_parse_source(tmp_path):
    assert parse_source("moving-mnist-val") == DatasetSource("moving-mnist-val")
    assert parse_source("moving-mnist", size=64, dataset_seed=3, seed=9) == DatasetSource("moving-mnist", 64, 0, 3)
    assert parse_source("moving-mnist-val:64@512") == DatasetSource("moving-mnist-val", 64, 512)
    assert parse_source(str(tmp_path)) == FolderSource(tmp_path)
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    assert parse_source(str(checkpoint), sampler="ddim", steps=25, seed=7) == CheckpointSource(checkpoint, "ddim", 25, 7)
    pc = parse_source(str(checkpoint), sampler="pc", sampler_opts={"gamma": 0.1, "delta": 0.6})
    assert pc == CheckpointSource(checkpoint, "pc", 256, 0, "fp32", (("delta", 0.6), ("gamma", 0.1)))
    assert describe_source(pc)["sampler_options"] == {"delta": 0.6, "gamma": 0.1}
    assert source_label(pc) == "model.safetensors (pc 256 delta 0.6 gamma 0.1)"
    assert pc != parse_source(str(checkpoint), sampler="pc")  # other options, other clips


@pytest.mark.parametrize(
    "text, message",
    [
        ("moving-mnist-val@x", "bad dataset source"),
        ("moving-mnist:48", "32x32 or 64x64"),
        ("missing.safetensors", "no such checkpoint"),
        ("ucf101", "unknown source"),
    ],
)
def test_parse_source_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_source(text)


def test_shared_clips():
    val = DatasetSource("moving-mnist-val", 32)
    assert shared_clips(val, 8, val, 8) == 8
    assert shared_clips(val, 8, DatasetSource("moving-mnist-val", 32, start=6), 8) == 2
    assert shared_clips(val, 8, DatasetSource("moving-mnist-val", 32, start=8), 8) == 0
    assert shared_clips(val, 8, DatasetSource("moving-mnist", 32), 8) == 0
    assert shared_clips(val, 8, DatasetSource("moving-mnist-val", 64), 8) == 0
    ckpt = CheckpointSource(Path("a.safetensors"), "ddim", 10, seed=0)
    assert shared_clips(ckpt, 4, CheckpointSource(Path("a.safetensors"), "ddim", 10, seed=2), 4) == 2
    assert shared_clips(ckpt, 4, CheckpointSource(Path("a.safetensors"), "ddim", 25, seed=0), 4) == 0


def test_fvd_refuses_a_clip_set_against_itself(tmp_path):
    val = parse_source("moving-mnist-val")
    with pytest.raises(ConfigError, match="share 4 clips"):
        fvd(val, val, 4, 4, i3d=TinyI3D())
    with pytest.raises(ConfigError, match="share 2 clips"):
        fvd(val, parse_source("moving-mnist-val@2"), 4, 4, i3d=TinyI3D())
    with pytest.raises(ConfigError, match="share"):
        fvd(FolderSource(tmp_path), FolderSource(tmp_path / "."), None, 4, i3d=TinyI3D())
    with pytest.raises(ConfigError, match="at least 2 clips"):
        fvd(val, parse_source("moving-mnist-val@10"), 1, 4, i3d=TinyI3D())


def test_fvd_between_disjoint_real_sets_is_json_ready():
    calls = []
    result = fvd(
        parse_source("moving-mnist-val"), parse_source("moving-mnist-val@4"), 4, 4, i3d=TinyI3D(),
        batch_size=3, progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert strict_json(result) == result
    assert result["fvd"] >= 0 and result["frames"] == 4
    assert (result["a"]["clips"], result["b"]["clips"]) == (4, 4)
    assert result["a"]["size"] == 32 and result["b"]["start"] == 4
    assert calls == [("features a", 3, 4), ("features a", 4, 4), ("features b", 3, 4), ("features b", 4, 4)]
    header, rows = table_rows(result)
    assert header[-1] == "FVD" and rows[0][:2] == ["moving-mnist-val[0:4] 32x32", "moving-mnist-val[4:8] 32x32"]
    assert "FVD" in format_table(header, rows)


def test_folder_source_cuts_clips_and_counts_what_it_skips(tmp_path):
    frames = clips_like(3, frames=6, channels=3)
    write_video(tmp_path / "a", frames[0], fps=8)
    write_video(tmp_path / "b", frames[1], fps=8)
    write_video(tmp_path / "c_short", frames[2][:3], fps=8)
    (tmp_path / "notes.txt").write_text("not a video")
    other = parse_source("moving-mnist-val")
    result = fvd(FolderSource(tmp_path), other, None, 4, n_b=3, i3d=TinyI3D())
    assert result["a"]["clips"] == 2 and result["b"]["clips"] == 3
    assert (result["a"]["skipped_short"], result["a"]["skipped_unreadable"]) == (1, 1)
    assert len(result["warnings"]) == 2
    with pytest.raises(VideoInputError, match="only 2 clips of at least 4 frames"):
        fvd(FolderSource(tmp_path), other, 3, 4, i3d=TinyI3D())


def test_read_clips_fits_folder_clips_and_sizes_datasets(tmp_path):
    for i, clip in enumerate(clips_like(2, frames=5, size=24, channels=3)):
        write_video(tmp_path / f"clip{i}", clip, fps=8)
    clips, report = read_clips(FolderSource(tmp_path), None, 4, size=(16, 16))
    assert clips.shape == (2, 4, 16, 16, 3) and report["clips"] == 2 and report["skipped_short"] == 0
    clips, report = read_clips(parse_source("moving-mnist-val@3"), 2, 4, size=(64, 64))
    assert clips.shape == (2, 4, 64, 64, 1) and report["size"] == 64 and report["label"] == "moving-mnist-val[3:5] 64x64"


def test_checkpoint_source_samples_on_the_fly(tiny_checkpoint):
    path = tiny_checkpoint
    model = CheckpointSource(path, "ddim", steps=2)
    result = fvd(model, parse_source("moving-mnist-val"), 2, i3d=TinyI3D())
    assert result["frames"] == 4  # the checkpoint's window
    assert result["a"]["kind"] == "checkpoint" and result["a"]["clips"] == 2
    assert result["b"]["size"] == 32  # 16x16 is no Moving MNIST size: the 32x32 default
    with pytest.raises(ConfigError, match="share 2 clips"):
        fvd(model, CheckpointSource(path, "ddim", steps=2), 2, i3d=TinyI3D())


# ------------------------------------------------------------------------------------------ baselines


def test_repeat_last_frame_and_linear_blend():
    clips = clips_like(2, frames=5)
    repeated = repeat_last_frame(clips, 2)
    assert (repeated[:, :2] == clips[:, :2]).all() and (repeated[:, 2:] == clips[:, 1:2]).all()
    ramp = (np.arange(9, dtype=np.uint8) * 20)[None, :, None, None, None] * np.ones((1, 1, 4, 4, 1), np.uint8)
    assert (linear_blend(ramp[:, ::2], 2) == ramp).all()
    assert (linear_blend(ramp[:, ::4], 4) == ramp).all()


def test_prediction_scores_methods_and_baseline(tiny_model):
    # Static clips: repeating the last context frame is exact (PSNR inf), the random model is not.
    clips = np.repeat(clips_like(2, frames=1), 8, axis=1)
    calls = []
    result = evaluate_prediction(
        tiny_model, clips, 2, method=("guidance", "replacement"), sampler="ddim", steps=2, seeds=[0, 1],
        i3d=TinyI3D(), progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert strict_json(result) == result
    assert [r["name"] for r in result["results"]] == ["guidance", "replacement", "repeat-last-frame"]
    assert result["samples_per_clip"] == 1 and "not best of N" in result["note"]
    assert result["windows_per_clip"] == 3  # 2 given frames, 2 new per 4-frame window, 6 to predict
    for row in result["results"]:
        assert len(row["psnr_per_frame"]) == len(row["ssim_per_frame"]) == 6
        assert row["fvd"] is not None
    guidance, replacement, baseline = result["results"]
    assert guidance["psnr_per_clip"] != replacement["psnr_per_clip"]  # the gradient term takes part
    assert baseline["psnr"] == "inf" and baseline["ssim"] == pytest.approx(1.0) and baseline["fvd"] == pytest.approx(0)
    assert math.isfinite(guidance["psnr"]) and guidance["seconds_per_clip"] > 0
    assert ("sample guidance", 12, 12) in calls and ("sample replacement", 12, 12) in calls
    header, rows = table_rows(result)
    assert len(rows) == 3 and rows[2][0] == "repeat-last-frame (baseline)" and rows[2][1] == "inf"


def test_prediction_depends_on_the_seed_only(tiny_model):
    clips = clips_like(2, frames=6)
    both = evaluate_prediction(tiny_model, clips, 3, method="replacement", steps=2, seeds=[5, 6], with_fvd=False)
    alone = evaluate_prediction(tiny_model, clips[1:], 3, method="replacement", steps=2, seeds=[6], with_fvd=False)
    assert alone["results"][0]["psnr_per_clip"] == both["results"][0]["psnr_per_clip"][1:]
    other = evaluate_prediction(tiny_model, clips[1:], 3, method="replacement", steps=2, seeds=[7], with_fvd=False)
    assert other["results"][0]["psnr_per_clip"] != alone["results"][0]["psnr_per_clip"]
    assert both["results"][0]["fvd"] is None and both["warnings"] == []


def test_interpolation_on_a_linear_ramp_makes_blending_exact(tiny_model):
    ramp = (np.arange(9, dtype=np.uint8) * 25)[None, :, None, None, None] * np.ones((2, 1, 16, 16, 1), np.uint8)
    result = evaluate_interpolation(tiny_model, ramp, 2, sampler="ddim", steps=2, seeds=[0, 1], i3d=TinyI3D())
    assert strict_json(result) == result
    assert (result["frames"], result["kept_frames"]) == (9, 5)
    model, baseline = result["results"]
    assert baseline["name"] == "linear-blend" and baseline["psnr"] == "inf" and baseline["ssim"] == pytest.approx(1.0)
    assert len(model["psnr_per_frame"]) == 4 and math.isfinite(model["psnr"])


def test_interpolation_drops_the_frames_past_the_last_kept_one(tiny_model):
    result = evaluate_interpolation(tiny_model, clips_like(1, frames=8), 3, sampler="ddim", steps=1, seeds=[0])
    assert (result["frames"], result["kept_frames"]) == (7, 3)
    assert result["results"][0]["fvd"] is None and result["warnings"] == ["FVD needs at least 2 clips; not computed"]


def test_rgb_clips_are_turned_to_luma_for_a_gray_model(tiny_model):
    result = evaluate_prediction(tiny_model, clips_like(1, frames=5, channels=3), 2, sampler="ddim", steps=1, seeds=[0],
                                 with_fvd=False)
    assert result["clips"] == 1


def test_conditional_evaluation_errors(tiny_model):
    clips = clips_like(2)
    with pytest.raises(VideoInputError, match="the model makes 16x16"):
        evaluate_prediction(tiny_model, clips_like(2, size=32), 2, seeds=[0, 1])
    with pytest.raises(ConfigError, match="one seed per clip"):
        evaluate_prediction(tiny_model, clips, 2, seeds=[0])
    with pytest.raises(ConfigError, match="unknown conditioning method"):
        evaluate_prediction(tiny_model, clips, 2, method="inpaint", seeds=[0, 1])
    with pytest.raises(ConfigError, match="context must be in"):
        evaluate_prediction(tiny_model, clips, 8, seeds=[0, 1])
    with pytest.raises(ConfigError, match="at least 2"):
        evaluate_interpolation(tiny_model, clips, 1, seeds=[0, 1])


# ------------------------------------------------------------------------------------------ CLI


def run_cli(args, capsys):
    from vdgen.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_eval_fvd_warns_about_emulated_bf16_only_when_a_checkpoint_samples(tiny_checkpoint, capsys, monkeypatch, emulating_cpu):
    import vdgen.evaluate

    # Moving MNIST against itself: nothing samples, so --precision bf16 is moot; the refusal stays one line.
    code, _, err = run_cli(["eval", "fvd", "moving-mnist-val", "moving-mnist-val", "-n", "4", "--precision", "bf16"], capsys)
    assert code == 1 and "share 4 clips" in err and len(err.strip().splitlines()) == 1

    def stop(*args, **kwargs):
        raise ConfigError("stopped before sampling")

    monkeypatch.setattr(vdgen.evaluate, "fvd", stop)
    code, _, err = run_cli(["eval", "fvd", str(tiny_checkpoint), "moving-mnist-val", "--precision", "bf16"], capsys)
    assert code == 1 and err.count("warning: this CPU has no native bf16") == 1


def test_cli_eval_fvd_refuses_a_set_against_itself(capsys):
    code, _, err = run_cli(["eval", "fvd", "moving-mnist-val", "moving-mnist-val", "-n", "4"], capsys)
    assert code == 1 and "share 4 clips" in err and len(err.strip().splitlines()) == 1


def test_cli_eval_fvd_samples_a_checkpoint_as_generate_does_by_default(tiny_checkpoint, capsys, monkeypatch):
    import vdgen.evaluate

    seen = []

    def capture(a, b, *args, **kwargs):
        seen.append(a)
        raise ConfigError("stopped before sampling")

    monkeypatch.setattr(vdgen.evaluate, "fvd", capture)
    code, _, err = run_cli(["eval", "fvd", str(tiny_checkpoint), "moving-mnist-val", "-n", "2"], capsys)
    assert code == 1 and "stopped before sampling" in err
    assert isinstance(seen[0], CheckpointSource) and (seen[0].sampler, seen[0].steps) == ("pc", 256)
    for extra in (["--sampler", "dpm++"], ["--sampler", "ddim", "--steps", "9"]):
        assert run_cli(["eval", "fvd", str(tiny_checkpoint), "moving-mnist-val", *extra], capsys)[0] == 1
    assert [(s.sampler, s.steps) for s in seen[1:]] == [("dpm++", 256), ("ddim", 9)]
    # pc samples at generate's delta unless told otherwise; the options are part of the source
    from vdgen.generate import PC_DELTA

    assert dict(seen[0].options) == {"gamma": 0.1, "delta": PC_DELTA} and seen[1].options == ()
    assert run_cli(["eval", "fvd", str(tiny_checkpoint), "moving-mnist-val", "--delta", "0.2"], capsys)[0] == 1
    assert dict(seen[-1].options)["delta"] == 0.2
    code, _, err = run_cli(["eval", "fvd", str(tiny_checkpoint), "moving-mnist-val", "--sampler", "ddim", "--delta", "0.2"], capsys)
    assert code == 1 and "--delta applies to the pc sampler, not ddim" in err
    # the library agrees: a checkpoint source without sampler or steps samples as generate does
    source = parse_source(str(tiny_checkpoint))
    assert (source.sampler, source.steps) == ("pc", 256)


def test_cli_eval_predict_prints_a_table_and_writes_json(tiny_checkpoint, tmp_path, capsys):
    out_json = tmp_path / "predict.json"
    code, out, err = run_cli(
        ["eval", "predict", "-c", str(tiny_checkpoint), "-n", "1", "--frames", "6", "--context", "2", "--steps", "1",
         "--sampler", "ddim", "--method", "guidance", "--method", "replacement", "--no-fvd", "--threads", "1",
         "--json", str(out_json)],
        capsys,
    )
    assert code == 0, err
    assert out.splitlines()[0].split()[:2] == ["method", "PSNR"] and "repeat-last-frame (baseline)" in out
    result = json.loads(out_json.read_text())
    # The tiny model is 16x16, no Moving MNIST size: clips are made at 32x32 and fitted to the model.
    assert result["task"] == "prediction" and result["source"]["size"] == 32 and result["frames"] == 6
    assert [r["name"] for r in result["results"]] == ["guidance", "replacement", "repeat-last-frame"]
    assert result["sampler_options"] == {}  # ddim has no noise options
    code, _, err = run_cli(["eval", "interpolate", "-c", str(tiny_checkpoint), "-n", "1", "--frames", "5",
                            "--json", str(out_json)], capsys)
    assert code == 1 and "exists" in err


def test_cli_eval_predict_and_interpolate_take_gamma_and_delta(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from vdgen.sampling import DEFAULT_DELTA, DEFAULT_GAMMA

    common = ["-c", str(tiny_checkpoint), "-n", "1", "--steps", "1", "--no-fvd", "--threads", "1"]
    out_json = tmp_path / "interpolate.json"
    code, _, err = run_cli(["eval", "interpolate", *common, "--frames", "5", "--sampler", "pc", "--delta", "0.4",
                            "--json", str(out_json)], capsys)
    assert code == 0, err
    assert "pc 1 steps, gamma 0.1, delta 0.4" in err
    assert json.loads(out_json.read_text())["sampler_options"] == {"gamma": DEFAULT_GAMMA, "delta": 0.4}
    # the defaults are extend's and interpolate's: the paper's delta, and they reach the sampler
    import vdgen.evaluate

    seen = []
    real_extend = vdgen.evaluate.extend

    def spy(*args, **kwargs):
        seen.append(kwargs["sampler_opts"])
        return real_extend(*args, **kwargs)

    monkeypatch.setattr(vdgen.evaluate, "extend", spy)
    code, _, err = run_cli(["eval", "predict", *common, "--frames", "4", "--context", "2", "--sampler", "pc",
                            "--gamma", "0.3"], capsys)
    assert code == 0, err
    assert seen == [{"gamma": 0.3, "delta": DEFAULT_DELTA}]
    seen.clear()
    real_interpolate = vdgen.evaluate.interpolate

    def spy_interpolate(*args, **kwargs):
        seen.append(kwargs["sampler_opts"])
        return real_interpolate(*args, **kwargs)

    monkeypatch.setattr(vdgen.evaluate, "interpolate", spy_interpolate)
    code, _, err = run_cli(["eval", "interpolate", *common, "--frames", "5", "--sampler", "ancestral", "--gamma", "0.7"], capsys)
    assert code == 0, err
    assert seen == [{"gamma": 0.7}]
    # bad options fail before the checkpoint is even loaded
    import vdgen.cli

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the checkpoint before checking the options")

    monkeypatch.setattr(vdgen.cli, "load_checkpoint", no_loading)
    for task, extra in (("predict", ["--frames", "4"]), ("interpolate", ["--frames", "5"])):
        code, _, err = run_cli(["eval", task, *common, *extra, "--delta", "0.2"], capsys)
        assert code == 1 and "--delta applies to the pc sampler, not ancestral" in err
        code, _, err = run_cli(["eval", task, *common, *extra, "--sampler", "pc", "--delta", "3"], capsys)
        assert code == 1 and "--delta must be in (0, 2]" in err
        code, _, err = run_cli(["eval", task, *common, *extra, "--gamma", "1.5"], capsys)
        assert code == 1 and "--gamma must be in [0, 1]" in err


def test_library_evaluation_rejects_an_unknown_sampler_option_before_sampling(tiny_checkpoint):
    from vdgen.checkpoint import load_model

    loaded = load_model(tiny_checkpoint)
    clips = np.zeros((1, 4, 16, 16, 1), np.uint8)
    with pytest.raises(ConfigError, match="sampler 'ancestral' has no option 'delta'"):
        evaluate_prediction(loaded, clips, 2, seeds=[0], sampler_opts={"delta": 0.3}, with_fvd=False)
    with pytest.raises(ConfigError, match="delta must be in"):
        evaluate_interpolation(loaded, clips, 2, seeds=[0], sampler="pc", sampler_opts={"delta": 5}, with_fvd=False)


class _Zero(torch.nn.Module):
    """A 'network' that predicts 0 everywhere: its loss is the mean square of the target."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z, logsnr, image_mask=None):
        return torch.zeros_like(z)


def test_validation_loss_of_a_zero_prediction_is_the_targets_mean_square():
    from vdgen.config import DiffusionConfig
    from vdgen.schedule import alpha_sigma, logsnr_schedule_cosine

    clips = torch.full((4, 1, 4, 16, 16), 0.5)
    ts = t_grid(4)
    assert ts == [0.125, 0.375, 0.625, 0.875]
    # x-prediction: the target is x itself, whatever the noise
    assert validation_loss(_Zero(), DiffusionConfig(parameterization="x"), clips, ts, seed=0) == pytest.approx([0.25] * 4)
    # v = alpha eps - sigma x: E[v^2] = alpha^2 + sigma^2 x^2 (4,096 noise values per t)
    v = validation_loss(_Zero(), DiffusionConfig(parameterization="v"), clips, ts, seed=0)
    alpha, sigma = alpha_sigma(logsnr_schedule_cosine(torch.tensor(ts, dtype=torch.float64)))
    expected = (alpha**2 + 0.25 * sigma**2).tolist()
    assert v == pytest.approx(expected, abs=0.08)
    assert v[0] > 0.9 and v[-1] < 0.45  # the grid runs from little noise (v ~ eps) to much (v ~ -x)
    # partial chunks weigh by their size: clips of 0.5, 0.5 and 1.0, two per chunk
    mixed = torch.cat([torch.full((2, 1, 4, 16, 16), 0.5), torch.full((1, 1, 4, 16, 16), 1.0)])
    x_loss = validation_loss(_Zero(), DiffusionConfig(parameterization="x"), mixed, [0.5], seed=0, chunk=2)
    assert x_loss == pytest.approx([(0.25 + 0.25 + 1.0) / 3])


def test_validation_loss_pairs_the_noise_by_seed():
    from vdgen.config import DiffusionConfig

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, 3, padding=1)
    wrapped = _Wrapped(net)
    clips = torch.rand(3, 1, 4, 8, 8) * 2 - 1
    a = validation_loss(wrapped, DiffusionConfig(), clips, [0.3, 0.7], seed=5)
    assert validation_loss(wrapped, DiffusionConfig(), clips, [0.3, 0.7], seed=5) == a
    assert validation_loss(wrapped, DiffusionConfig(), clips, [0.3, 0.7], seed=6) != a
    with pytest.raises(ConfigError, match="at least 1 point"):
        t_grid(0)


class _Wrapped(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z, logsnr, image_mask=None):
        return self.net(z)


class _MaskRecorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.masks = []

    def forward(self, z, logsnr, image_mask=None):
        self.masks.append(image_mask)
        return torch.zeros_like(z)


def test_validation_loss_with_independent_frames_masks_every_frame(make_net):
    from vdgen.config import DiffusionConfig

    recorder = _MaskRecorder()
    clips = torch.zeros(3, 1, 4, 16, 16)
    plain = validation_loss(recorder, DiffusionConfig(), clips, [0.5], seed=0, chunk=2)
    assert recorder.masks == [None, None]
    recorder.masks.clear()
    masked = validation_loss(recorder, DiffusionConfig(), clips, [0.5], seed=0, chunk=2, independent_frames=True)
    assert masked == plain  # the same noise: a network that ignores the mask scores the same
    assert [tuple(m.shape) for m in recorder.masks] == [(2, 4), (1, 4)]
    assert all(m.dtype == torch.bool and bool(m.all()) for m in recorder.masks)
    # on a real (randomised) U-Net the masked score differs: its temporal attention sees other frames
    net = make_net()
    clips = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    normal = validation_loss(net, DiffusionConfig(), clips, [0.3, 0.7], seed=1)
    alone = validation_loss(net, DiffusionConfig(), clips, [0.3, 0.7], seed=1, independent_frames=True)
    assert all(abs(a - b) > 1e-6 for a, b in zip(normal, alone))
