"""The command line end to end on a tiny checkpoint: outputs, sidecars, exit codes, clean errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vdgen.cli import main
from vdgen.frames import fit_frames, to_luma
from vdgen.video import read_video

CLIPS = Path(__file__).resolve().parent / "data" / "clips"
MP4, MKV, GIF = CLIPS / "cockatoo_71x45.mp4", CLIPS / "asl_again_80x60.mkv", CLIPS / "newtonscradle_100x75.gif"


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """cli(*args) -> (exit code, stdout, stderr), run in tmp_path with the progress bar off."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VDGEN_DEBUG", raising=False)
    monkeypatch.delenv("VDGEN_PROGRESS", raising=False)

    def run(*args: str | Path) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "Traceback" not in out
        return info.value.code, out, err

    return run


def files(folder: Path) -> set[str]:
    """Every path under `folder`, hidden temporaries included."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def fails(cli, folder: Path, *args, expect: str) -> str:
    """Run a command that must fail: exit 1, one 'error:' line naming the problem, no new files.

    Informational lines ('note: ...', the seed) may come before the error line.
    """
    before = files(folder)
    code, out, err = cli(*args)
    assert code == 1, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert expect in errors[0], errors[0]
    assert files(folder) == before
    return errors[0]


def generate(cli, checkpoint, output, *extra):
    return cli("generate", "-c", checkpoint, "--steps", "2", "--seed", "7", "--device", "cpu", "-o", output, *extra)


def frames_of(path: Path) -> np.ndarray:
    return read_video(path)[0]


def model_frames(clip: Path) -> np.ndarray:
    """What the tiny 1-channel 16x16 model receives from `clip`: luma, centre-cropped, area-resized."""
    return fit_frames(to_luma(frames_of(clip)), (16, 16), "crop")[..., 0]


# ------------------------------------------------------------------------------------------ generate


def test_generate_writes_video_sidecar_and_preview(cli, tiny_checkpoint, tmp_path):
    code, _, err = generate(cli, tiny_checkpoint, "out.mp4", "--preview")
    assert code == 0, err
    assert "seed 7" in err
    assert files(tmp_path) == {"out.mp4", "out.mp4.json", "out.png"}
    video = frames_of(tmp_path / "out.mp4")
    assert video.shape == (4, 16, 16, 3)
    sidecar = json.loads((tmp_path / "out.mp4.json").read_text())
    assert sidecar["seed"] == 7 and sidecar["steps"] == 2 and sidecar["sampler"] == "pc"
    assert sidecar["checkpoint"] == str(tiny_checkpoint)
    assert sidecar["frames"] == 4 and sidecar["command"] == "generate"
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    preview = frames_of(tmp_path / "out.png")
    assert preview.shape[0] == 1 and preview.shape[2] > 4 * 16  # one image: a contact sheet of the 4 frames


def test_generate_in_bf16_on_a_cpu_that_emulates_it_warns_and_still_runs(cli, tiny_checkpoint, emulating_cpu):
    code, _, err = generate(cli, tiny_checkpoint, "out.mp4", "--precision", "bf16")
    assert code == 0, err
    assert err.count("warning: this CPU has no native bf16") == 1
    code, _, err = generate(cli, tiny_checkpoint, "out32.mp4", "--precision", "fp32")
    assert code == 0 and "warning" not in err


def test_train_in_bf16_on_a_cpu_that_emulates_it_warns_once(cli, emulating_cpu):
    code, _, err = cli("train", "run", "--preset", "tiny", "--steps", "1", "--precision", "bf16")
    assert code == 0, err
    assert err.count("warning: this CPU has no native bf16") == 1


def test_train_messages_print_a_run_folder_name_verbatim(cli):
    # Rich would read "[bold]" as markup and drop it from the line.
    code, _, err = cli("train", "run[bold]", "--preset", "tiny", "--steps", "1")
    assert code == 0, err
    assert "training run[bold] from step 0 to 1" in err


def test_generate_defaults_to_256_steps_of_pc(cli, tiny_checkpoint, tmp_path, monkeypatch):
    code, _, err = cli("generate", "-c", tiny_checkpoint, "--seed", "1", "--device", "cpu", "-o", "default.gif")
    assert code == 0, err
    assert "pc 256 steps" in err
    sidecar = json.loads((tmp_path / "default.gif.json").read_text())
    assert (sidecar["sampler"], sidecar["steps"]) == ("pc", 256)
    # another sampler without --steps gets 256 steps too
    import vdgen.generate

    calls = []

    def record(net, model_config, diffusion_config, seeds, *, steps, sampler, **kwargs):
        calls.append((sampler, steps))
        return np.zeros((len(seeds), 4, 16, 16, 1), np.uint8)

    monkeypatch.setattr(vdgen.generate, "sample_videos", record)
    for sampler in ("ddim", "ancestral"):
        code, _, err = cli("generate", "-c", tiny_checkpoint, "--sampler", sampler, "--device", "cpu", "-o", f"{sampler}.gif")
        assert code == 0, err
    assert calls == [("ddim", 256), ("ancestral", 256)]


def test_sampler_options_reach_the_sampler_and_the_sidecar(cli, tiny_checkpoint, tmp_path, monkeypatch):
    from vdgen.generate import PC_DELTA
    from vdgen.sampling import DEFAULT_GAMMA

    assert generate(cli, tiny_checkpoint, "a.gif")[0] == 0
    assert json.loads((tmp_path / "a.gif.json").read_text())["sampler_options"] == {"gamma": DEFAULT_GAMMA, "delta": PC_DELTA}
    assert generate(cli, tiny_checkpoint, "b.gif", "--delta", "0.7", "--gamma", "0.5")[0] == 0
    assert json.loads((tmp_path / "b.gif.json").read_text())["sampler_options"] == {"gamma": 0.5, "delta": 0.7}
    assert not np.array_equal(frames_of(tmp_path / "a.gif"), frames_of(tmp_path / "b.gif"))
    assert generate(cli, tiny_checkpoint, "c.gif", "--sampler", "ddim")[0] == 0
    assert json.loads((tmp_path / "c.gif.json").read_text())["sampler_options"] == {}
    code, _, err = cli("extend", MP4, "-c", tiny_checkpoint, "--steps", "2", "--seed", "1", "--frames", "16",
                       "--sampler", "pc", "--delta", "0.2", "-o", "ext.gif")
    assert code == 0, err
    assert json.loads((tmp_path / "ext.gif.json").read_text())["sampler_options"] == {"gamma": DEFAULT_GAMMA, "delta": 0.2}


@pytest.mark.parametrize("extra, expect", [
    (("--sampler", "ddim", "--gamma", "0.2"), "--gamma applies to the ancestral and pc samplers, not ddim"),
    (("--sampler", "ancestral", "--delta", "0.2"), "--delta applies to the pc sampler, not ancestral"),
    (("--delta", "0"), "--delta must be in (0, 2]"),
    (("--gamma", "1.5"), "--gamma must be in [0, 1]"),
])
def test_bad_sampler_options(cli, tiny_checkpoint, tmp_path, extra, expect):
    fails(cli, tmp_path, "generate", "-c", tiny_checkpoint, "--steps", "2", "-o", "x.mp4", *extra, expect=expect)
    pc = () if "--sampler" in extra else ("--sampler", "pc")  # interpolate's default sampler is ancestral
    fails(cli, tmp_path, "interpolate", GIF, "-c", tiny_checkpoint, "--steps", "2", "-o", "y.mp4", *pc, *extra, expect=expect)


def test_sidecar_records_a_checkpoint_under_the_working_directory_relative(cli, tiny_checkpoint, tmp_path):
    (tmp_path / "weights").mkdir()
    local = tmp_path / "weights" / "model.safetensors"
    local.write_bytes(tiny_checkpoint.read_bytes())
    code, _, err = generate(cli, local, "out.mp4")
    assert code == 0, err
    assert json.loads((tmp_path / "out.mp4.json").read_text())["checkpoint"] == str(Path("weights") / "model.safetensors")


def test_generate_folder_output_is_png_frames_and_deterministic(cli, tiny_checkpoint, tmp_path):
    assert generate(cli, tiny_checkpoint, "frames", "--sampler", "ddim")[0] == 0
    assert sorted(os.listdir(tmp_path / "frames")) == [f"frame_{i:04d}.png" for i in range(4)]
    assert json.loads((tmp_path / "frames.json").read_text())["sampler"] == "ddim"
    assert generate(cli, tiny_checkpoint, "again", "--sampler", "ddim")[0] == 0
    first, again = frames_of(tmp_path / "frames"), frames_of(tmp_path / "again")
    assert first.shape == (4, 16, 16, 3)
    assert np.array_equal(first, again)  # same seed, same video


def test_generate_n_names_and_seeds(cli, tiny_checkpoint, tmp_path):
    assert generate(cli, tiny_checkpoint, "out.mp4", "-n", "3")[0] == 0
    expected = {f"out-{i}.mp4" for i in range(3)} | {f"out-{i}.mp4.json" for i in range(3)}
    assert files(tmp_path) == expected
    seeds = [json.loads((tmp_path / f"out-{i}.mp4.json").read_text())["seed"] for i in range(3)]
    assert seeds == [7, 8, 9]


def test_each_of_n_videos_equals_its_seed_alone(cli, tiny_checkpoint, tmp_path):
    assert generate(cli, tiny_checkpoint, "many", "-n", "3")[0] == 0
    assert cli("generate", "-c", tiny_checkpoint, "--steps", "2", "--seed", "8", "-o", "alone")[0] == 0
    assert np.array_equal(frames_of(tmp_path / "many-1"), frames_of(tmp_path / "alone"))
    assert not np.array_equal(frames_of(tmp_path / "many-0"), frames_of(tmp_path / "many-1"))


def test_generate_gif_and_frames_option(cli, tiny_checkpoint, tmp_path):
    assert generate(cli, tiny_checkpoint, "out.gif", "--frames", "6")[0] == 0
    assert frames_of(tmp_path / "out.gif").shape[0] == 6


def test_overwrite(cli, tiny_checkpoint, tmp_path):
    assert generate(cli, tiny_checkpoint, "out.mp4")[0] == 0
    before = (tmp_path / "out.mp4").read_bytes()
    fails(cli, tmp_path, "generate", "-c", tiny_checkpoint, "--steps", "2", "-o", "out.mp4", expect="already exists")
    assert (tmp_path / "out.mp4").read_bytes() == before  # untouched
    assert generate(cli, tiny_checkpoint, "out.mp4", "--overwrite")[0] == 0


@pytest.mark.parametrize(
    "args, expect",
    [
        (["-c", "missing.safetensors"], "no such checkpoint"),
        (["--sampler", "euler"], "euler"),
        (["--steps", "0"], "--steps"),
        (["-o", "out.avi"], "unsupported output type '.avi'"),
        (["-o", "no/such/folder/out.mp4"], "does not exist"),
        (["-n", "0"], "--num"),
        (["--fps", "0"], "--fps"),
        (["--frames", "34"], "--frames"),
        (["--frames", "0"], "--frames"),  # not silently the model's frame count
        (["--device", "tpu"], "--device"),
    ],
)
def test_generate_errors(args, expect, cli, tiny_checkpoint, tmp_path):
    fails(cli, tmp_path, "generate", "-c", tiny_checkpoint, "--steps", "2", *args, expect=expect)


def test_output_inside_a_file_is_refused(cli, tiny_checkpoint, tmp_path):
    (tmp_path / "plain").write_text("x")
    fails(cli, tmp_path, "generate", "-c", tiny_checkpoint, "--steps", "2", "-o", "plain/out.mp4", expect="plain")


def test_unwritable_folder_is_refused(cli, tiny_checkpoint, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:
        # root may write anywhere: make the permission check see the folder as other users would.
        import vdgen.atomic

        real_access = os.access
        monkeypatch.setattr(
            vdgen.atomic.os, "access", lambda p, mode: False if Path(p).resolve() == locked else real_access(p, mode)
        )
    try:
        fails(cli, tmp_path, "generate", "-c", tiny_checkpoint, "--steps", "2", "-o", "locked/out.mp4", expect="not writable")
    finally:
        locked.chmod(0o700)


def test_bad_checkpoint_file_is_one_line(cli, tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04junk-pickle")
    fails(cli, tmp_path, "generate", "-c", "bad.safetensors", "--steps", "2", expect="pickle")


def test_no_default_checkpoint(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("VDGEN_WEIGHTS", str(tmp_path / "weights"))
    fails(cli, tmp_path, "generate", "--steps", "2", expect="no default checkpoint")


# ------------------------------------------------------------------------------------------ extend / interpolate


@pytest.mark.parametrize("clip, total", [(MP4, 16), (MKV, 15)])
def test_extend_keeps_the_clip_and_reaches_the_length(clip, total, cli, tiny_checkpoint, tmp_path):
    given = model_frames(clip)
    code, _, err = cli("extend", clip, "-c", tiny_checkpoint, "--steps", "2", "--seed", "1", "--frames", total, "-o", "ext")
    assert code == 0, err
    out = frames_of(tmp_path / "ext")
    assert out.shape == (total, 16, 16, 3)
    assert np.array_equal(out[: len(given), :, :, 0], given)  # known frames exactly as given
    sidecar = json.loads((tmp_path / "ext.json").read_text())
    assert sidecar["command"] == "extend" and sidecar["seed"] == 1 and sidecar["output_frames"] == total
    assert sidecar["input_frames"] == len(given) and sidecar["checkpoint"] == str(tiny_checkpoint)


@pytest.mark.parametrize("factor", [2, 3])
def test_interpolate_keeps_every_kth_frame(factor, cli, tiny_checkpoint, tmp_path):
    given = model_frames(GIF)
    code, _, err = cli("interpolate", GIF, "-c", tiny_checkpoint, "--steps", "2", "--factor", factor, "-o", "interp")
    assert code == 0, err
    out = frames_of(tmp_path / "interp")
    assert out.shape == ((len(given) - 1) * factor + 1, 16, 16, 3)
    assert np.array_equal(out[::factor, :, :, 0], given)
    sidecar = json.loads((tmp_path / "interp.json").read_text())
    assert sidecar["factor"] == factor and sidecar["output_frames"] == len(out)


def test_interpolate_to_mp4_with_preview(cli, tiny_checkpoint, tmp_path):
    assert cli("interpolate", GIF, "-c", tiny_checkpoint, "--steps", "1", "-o", "i.mp4", "--preview")[0] == 0
    assert files(tmp_path) == {"i.mp4", "i.mp4.json", "i.png"}
    assert frames_of(tmp_path / "i.mp4").shape[0] == 17


def test_extend_errors(cli, tiny_checkpoint, tmp_path):
    run = ("extend", MP4, "-c", tiny_checkpoint, "--steps", "2")
    fails(cli, tmp_path, *run, "--frames", "8", "-o", "x.mp4", expect="--frames 8")  # fewer than the clip's 12 frames
    fails(cli, tmp_path, *run, "--frames", "16", "-o", "x.avi", expect=".avi")
    fails(cli, tmp_path, *run, "--frames", "16", "--context", "4", "-o", "x.mp4", expect="context")
    fails(cli, tmp_path, *run, "--frames", "16", "--context", "0", "-o", "x.mp4", expect="--context")  # not the default
    fails(cli, tmp_path, "extend", tmp_path / "missing.mp4", "-c", tiny_checkpoint, "-o", "x.mp4", expect="missing.mp4")
    fails(cli, tmp_path, "interpolate", GIF, "-c", tiny_checkpoint, "--factor", "1", "-o", "x.mp4", expect="--factor")
    fails(cli, tmp_path, "interpolate", GIF, "-c", tiny_checkpoint, "--factor", "4", "-o", "x.mp4", expect="window")


# ------------------------------------------------------------------------------------------ info


def test_info_prints_the_parameter_count(cli, tiny_checkpoint, tmp_path):
    code, out, err = cli("info", tiny_checkpoint)
    assert code == 0, err
    report = json.loads(out)
    assert report["parameters"] == 208_041
    assert report["model"]["frames"] == 4 and report["diffusion"]["parameterization"] == "v"
    assert report["provenance"]["made_by"] == "tests/conftest.py"
    fails(cli, tmp_path, "info", "missing.safetensors", expect="no such checkpoint")


def test_version_and_help(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("vdgen ")
    code, out, _ = cli("generate", "--help")
    assert code == 0 and "--sampler" in out


def test_delta_help_names_the_default_in_use():
    # The help text is written out (the CLI module does not import torch at start-up); keep it true.
    import vdgen.cli
    from vdgen.generate import PC_DELTA

    from vdgen.sampling import DEFAULT_DELTA

    assert f"Default {PC_DELTA:g} " in vdgen.cli.DeltaOpt.__metadata__[0].help
    assert f"Default {DEFAULT_DELTA:g} " in vdgen.cli.ConditionalDeltaOpt.__metadata__[0].help


def test_delta_defaults_reach_sample_pc(cli, tiny_checkpoint, monkeypatch):
    # generate samples at PC_DELTA; extend and interpolate keep the paper's delta (not measured there)
    import torch

    import vdgen.sampling
    from vdgen.generate import PC_DELTA
    from vdgen.sampling import DEFAULT_DELTA, DEFAULT_GAMMA

    seen = []

    def spy(denoiser, shape, logsnrs, generators, *, clip=True, callback=None, device="cpu", gamma=0.1, delta=0.1):
        seen.append((clip, gamma, delta))
        return torch.zeros(shape)

    monkeypatch.setitem(vdgen.sampling.SAMPLERS, "pc", spy)
    assert generate(cli, tiny_checkpoint, "a.gif")[0] == 0
    assert generate(cli, tiny_checkpoint, "b.gif", "--no-clip", "--gamma", "0.4")[0] == 0
    code, _, err = cli("extend", MP4, "-c", tiny_checkpoint, "--steps", "2", "--frames", "16", "--sampler", "pc", "-o", "e.gif")
    assert code == 0, err
    code, _, err = cli("interpolate", GIF, "-c", tiny_checkpoint, "--steps", "2", "--sampler", "pc", "--delta", "0.9",
                       "-o", "i.gif")
    assert code == 0, err
    assert seen[0] == (True, DEFAULT_GAMMA, PC_DELTA) and seen[1] == (False, 0.4, PC_DELTA)
    assert seen[2] == (True, DEFAULT_GAMMA, DEFAULT_DELTA) and seen[-1] == (True, DEFAULT_GAMMA, 0.9)
