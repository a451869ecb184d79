"""The `vdgen` command line: thin Typer commands over the library (the only module importing typer/rich).

Every user mistake is a `VdgenError`, printed as one line on stderr with exit code 1; Ctrl-C exits
with 130 and leaves no partial output; `--debug` (or VDGEN_DEBUG=1) shows full tracebacks.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

import vdgen
from vdgen.errors import ConfigError, VdgenError

app = typer.Typer(
    name="vdgen",
    help="Video Diffusion Models (Ho et al. 2022): generate, extend and interpolate short videos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_CHECKPOINT_NAME = "vdgen-mmnist32.safetensors"
VIDEO_SUFFIXES = {".mp4", ".gif"}


class Sampler(str, Enum):
    ancestral = "ancestral"
    pc = "pc"
    ddim = "ddim"
    dpmpp = "dpm++"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    auto = "auto"


class Method(str, Enum):
    guidance = "guidance"
    replacement = "replacement"


class Resize(str, Enum):
    crop = "crop"
    pad = "pad"
    stretch = "stretch"


_state = {"debug": False}


# ---------------------------------------------------------------- shared helpers


def weights_dir() -> Path:
    """The folder holding shipped weights: $VDGEN_WEIGHTS, else the repository's `weights/`."""
    override = os.environ.get("VDGEN_WEIGHTS")
    if override:
        return Path(override)
    return Path(vdgen.__file__).resolve().parents[2] / "weights"


def default_checkpoint() -> Path:
    path = weights_dir() / DEFAULT_CHECKPOINT_NAME
    if not path.exists():
        raise VdgenError(
            f"no default checkpoint at {path}; pass one with --checkpoint/-c "
            "(train one with `vdgen train`, or set VDGEN_WEIGHTS to the folder holding it)"
        )
    return path


def pick_device(device: Device) -> str:
    import torch

    if device is Device.auto:
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device is Device.cuda and not torch.cuda.is_available():
        raise VdgenError("--device cuda: no CUDA device is available")
    if device is Device.mps and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VdgenError("--device mps: no MPS device is available")
    return device.value


def set_threads(threads: int) -> None:
    import torch

    if threads < 0:
        raise ConfigError("--threads must be >= 0 (0: all cores)")
    if threads:
        torch.set_num_threads(threads)


def load_checkpoint(checkpoint: Optional[Path], device: str):
    from vdgen.checkpoint import load_model

    return load_model(checkpoint or default_checkpoint(), device)


def output_paths(output: Path, count: int) -> list[Path]:
    """`-n 4 -o out.mp4` -> out-0.mp4 ... out-3.mp4; a folder output -> folder-0/ ..."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def shown_path(path: Path) -> str:
    """A path as settings records it: relative to the working directory when inside it, so a
    sidecar written in a checkout does not record where that checkout lives."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def preview_path(output: Path) -> Path:
    return output.with_name((output.stem if output.suffix else output.name) + ".png")


def check_outputs(paths: list[Path], overwrite: bool, preview: bool) -> None:
    """Refuse existing outputs (without --overwrite) and unusable folders before any work is done."""
    from vdgen.atomic import check_writable

    for path in paths:
        if path.suffix and path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ConfigError(f"{path}: unsupported output type {path.suffix!r} (use .mp4, .gif, or a folder for PNG frames)")
        check_writable(path, overwrite)
        check_writable(sidecar_path(path), overwrite)
        if preview:
            check_writable(preview_path(path), overwrite)


def write_result(path: Path, frames, fps: float, settings: dict[str, Any], preview: bool) -> None:
    """Write the video, its sidecar JSON and optionally a PNG contact sheet, each atomically."""
    from vdgen.atomic import write_text_atomic
    from vdgen.video import contact_sheet, write_png, write_video

    write_video(path, frames, fps)
    write_text_atomic(sidecar_path(path), json.dumps(settings, indent=2) + "\n")
    if preview:
        write_png(preview_path(path), contact_sheet(frames))


def check_fps(fps: Optional[float]) -> None:
    if fps is not None and not (0 < fps <= 1000):
        raise ConfigError(f"--fps must be in (0, 1000], got {fps}")


def sampler_options(sampler: Sampler, gamma: Optional[float], delta: Optional[float], default_delta: float) -> dict[str, float]:
    """gamma and delta for the samplers that take them (defaults filled in; recorded in sidecars)."""
    from vdgen.sampling import NOISE_OPTIONS, noise_options

    takes = NOISE_OPTIONS.get(sampler.value, ())
    given = {"gamma": gamma, "delta": delta}
    for name, value in given.items():
        if value is not None and name not in takes:
            users = " and ".join(s for s, names in NOISE_OPTIONS.items() if name in names)
            raise ConfigError(f"--{name} applies to the {users} sampler{'s' if ' and ' in users else ''}, not {sampler.value}")
    chosen = {name: value for name, value in given.items() if value is not None}
    if "delta" in takes:
        chosen.setdefault("delta", default_delta)
    try:
        return noise_options(sampler.value, chosen)  # the library's defaults and ranges
    except ConfigError as exc:
        raise ConfigError(f"--{exc}") from None


def conditional_sampler_options(sampler: Sampler, gamma: Optional[float], delta: Optional[float]) -> dict[str, float]:
    """gamma / delta for extend, interpolate and their evaluations: pc at the paper's delta (generate's is not measured there)."""
    from vdgen.sampling import DEFAULT_DELTA

    return sampler_options(sampler, gamma, delta, DEFAULT_DELTA)


def make_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal and os.environ.get("VDGEN_PROGRESS") != "1",
    )


def resolve_seed(seed: Optional[int]) -> int:
    if seed is None:
        seed = secrets.randbelow(2**31)
    if not 0 <= seed < 2**63:
        raise ConfigError("--seed must be in [0, 2^63)")
    return seed


def resolve_precision(precision: Precision, device: str, warn: bool = True) -> str:
    """'fp32' or 'bf16'; with `warn`, a warning on stderr where bf16 would be emulated (see warn_precision)."""
    from vdgen import precision as precision_module

    resolved = precision_module.resolve_precision(precision.value, device)
    if warn:
        warn_precision(resolved, device)
    return resolved


def warn_precision(precision: str, device: str) -> None:
    """Warn on stderr when `precision` is bf16 on a CPU that only emulates it."""
    from vdgen.precision import emulated_bf16_warning

    warning = emulated_bf16_warning(precision, device)
    if warning:
        err.print(f"warning: {warning}", markup=False)

# ---------------------------------------------------------------- options shared by several commands

CheckpointOpt = Annotated[
    Optional[Path], typer.Option("--checkpoint", "-c", help="Model checkpoint (.safetensors). Default: the shipped one in weights/.")
]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, max=100_000, help="Sampling steps (NFE per sample; pc uses about twice as many).")]
SamplerOpt = Annotated[Sampler, typer.Option("--sampler", help="ancestral (the paper's), pc (ancestral + Langevin corrector), ddim, dpm++.")]
GenerateStepsOpt = Annotated[Optional[int], typer.Option(
    "--steps", min=1, max=100_000, help="Sampling steps. Default 256 for every sampler (pc: 2 network evaluations per step).",
)]
GenerateSamplerOpt = Annotated[Sampler, typer.Option(
    "--sampler", help="pc (ancestral + Langevin corrector; the default, lower FVD than ancestral at equal cost at delta 0.1), "
    "ancestral (the paper's), ddim, dpm++.",
)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (random when absent; always printed and recorded).")]
FpsOpt = Annotated[Optional[float], typer.Option("--fps", help="Frame rate of the output.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="auto, cpu, cuda or mps.")]
PrecisionOpt = Annotated[
    Precision, typer.Option("--precision", help="fp32, bf16, or auto (bf16 only where it measures faster, e.g. CPUs with AMX or AVX512_BF16).")
]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="CPU threads (0: all cores).")]
PreviewOpt = Annotated[bool, typer.Option("--preview", help="Also write a PNG contact sheet next to each output.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
NoClipOpt = Annotated[bool, typer.Option("--no-clip", help="Do not clip x_hat to [-1, 1] while sampling.")]
GammaOpt = Annotated[Optional[float], typer.Option(
    "--gamma", help="ancestral and pc: the step's variance, interpolated in log space from the posterior's (0) to the "
    "forward process's (1). Default 0.1 (the paper's).",
)]
DeltaOpt = Annotated[Optional[float], typer.Option(
    "--delta", help="pc: Langevin corrector step size. Default 0.6 (0.1 in the paper; chosen here by digit score, "
    "README 'Measured quality').",
)]
ConditionalDeltaOpt = Annotated[Optional[float], typer.Option(
    "--delta", help="pc: Langevin corrector step size. Default 0.1 (the paper's; generate's 0.6 is not measured here).",
)]


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also VDGEN_DEBUG=1).")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug or _state["debug"]
    if version:
        typer.echo(f"vdgen {vdgen.__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


# ---------------------------------------------------------------- generate


@app.command()
def generate(
    output: Annotated[Path, typer.Option("--output", "-o", help="out.mp4, out.gif, or a folder for PNG frames.")] = Path("out.mp4"),
    checkpoint: CheckpointOpt = None,
    steps: GenerateStepsOpt = None,
    sampler: GenerateSamplerOpt = Sampler.pc,
    num: Annotated[int, typer.Option("--num", "-n", min=1, max=10_000, help="Number of videos (seeds seed, seed+1, ...).")] = 1,
    seed: SeedOpt = None,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Frames per video (default: the model's).")] = None,
    fps: FpsOpt = 8.0,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    threads: ThreadsOpt = 0,
    preview: PreviewOpt = False,
    overwrite: OverwriteOpt = False,
    no_clip: NoClipOpt = False,
    gamma: GammaOpt = None,
    delta: DeltaOpt = None,
) -> None:
    """Sample videos from a checkpoint (unconditional) and write them as MP4, GIF or PNG frames."""
    from vdgen.generate import PC_DELTA, default_steps, sample_videos

    check_fps(fps)
    set_threads(threads)
    seed = resolve_seed(seed)
    steps = default_steps(steps)
    opts = sampler_options(sampler, gamma, delta, PC_DELTA)
    paths = output_paths(output, num)
    check_outputs(paths, overwrite, preview)
    dev = pick_device(device)
    loaded = load_checkpoint(checkpoint, dev)
    n_frames = frames or loaded.model_config.frames
    prec = resolve_precision(precision, dev)
    err.print(f"seed {seed} | {loaded.path} | {sampler.value} {steps} steps | {dev} {prec}")
    seeds = [seed + i for i in range(num)]
    started = time.monotonic()
    with make_progress() as progress:
        task = progress.add_task("sampling", total=num * steps)
        videos = sample_videos(
            loaded.net, loaded.model_config, loaded.diffusion_config, seeds, steps=steps, sampler=sampler.value,
            frames=n_frames, device=dev, clip=not no_clip, precision=prec, sampler_opts=opts,
            callback=lambda done, total: progress.update(task, completed=done),
        )
    elapsed = time.monotonic() - started
    for path, video, s in zip(paths, videos, seeds):
        settings = {
            "command": "generate", "vdgen_version": vdgen.__version__, "checkpoint": shown_path(loaded.path),
            "checkpoint_provenance": loaded.provenance, "seed": s, "steps": steps, "sampler": sampler.value,
            "sampler_options": opts, "frames": n_frames, "fps": fps, "clip_x_hat": not no_clip, "device": dev,
            "precision": prec, "seconds_for_batch": round(elapsed, 2),
        }
        write_result(path, video, fps, settings, preview)
        err.print(f"wrote {path}")


# ---------------------------------------------------------------- extend / interpolate


def _read_clip(clip: Path, loaded, resize: Resize, max_pixels: int, max_frames: int):
    """Read a clip and map it to the model: luma/RGB conversion (said once), resize; -> ([C,F,H,W], fps)."""
    from vdgen.frames import fit_frames, to_luma, to_model, to_rgb
    from vdgen.video import read_video

    if max_frames < 1 or max_pixels < 1:
        raise ConfigError("--max-frames and --max-pixels must be at least 1")
    frames, fps = read_video(clip, max_frames=max_frames, max_pixels=max_pixels)
    cfg = loaded.model_config
    if cfg.channels == 1 and frames.shape[-1] == 3:
        if not _is_gray(frames):
            err.print(f"note: {clip.name} is in colour; the model is 1-channel, so it is converted to luma")
        frames = to_luma(frames)
    elif cfg.channels == 3 and frames.shape[-1] == 1:
        err.print(f"note: {clip.name} is grayscale; replicated to RGB for the 3-channel model")
        frames = to_rgb(frames)
    if frames.shape[1:3] != (cfg.height, cfg.width):
        frames = fit_frames(frames, (cfg.height, cfg.width), resize.value)
    return to_model(frames), fps


def _is_gray(frames) -> bool:
    sample = frames[:: max(1, len(frames) // 8)].astype("int16")
    return bool(abs(sample[..., 0] - sample[..., 1]).max() <= 2 and abs(sample[..., 1] - sample[..., 2]).max() <= 2)


def _conditional(
    task: str,
    clip: Path,
    output: Path,
    checkpoint: Optional[Path],
    extra: dict[str, Any],
    *,
    method: Method,
    guidance_weight: float,
    sampler: Sampler,
    steps: int,
    seed: Optional[int],
    fps: Optional[float],
    device: Device,
    precision: Precision,
    threads: int,
    resize: Resize,
    preview: bool,
    overwrite: bool,
    no_clip: bool,
    gamma: Optional[float],
    delta: Optional[float],
    max_pixels: int,
    max_frames: int,
) -> None:
    """Shared body of extend and interpolate."""
    from vdgen.errors import VideoInputError
    from vdgen.frames import from_model
    from vdgen.generate import PrecisionDenoiser
    from vdgen.guidance import extend as extend_frames
    from vdgen.guidance import interpolate as interpolate_frames

    check_fps(fps)
    if guidance_weight < 0:
        raise ConfigError("--guidance-weight must be >= 0")
    opts = conditional_sampler_options(sampler, gamma, delta)
    set_threads(threads)
    seed = resolve_seed(seed)
    check_outputs([output], overwrite, preview)
    dev = pick_device(device)
    loaded = load_checkpoint(checkpoint, dev)
    x, clip_fps = _read_clip(clip, loaded, resize, max_pixels, max_frames)
    # Name the clip: these are the only clip-dependent checks left to the guidance plans.
    if task == "interpolate" and x.shape[1] < 2:
        raise VideoInputError(f"{clip}: has only 1 frame; interpolation needs at least 2")
    if task == "extend" and extra["frames"] < x.shape[1]:
        raise ConfigError(f"--frames {extra['frames']} is fewer than the {x.shape[1]} frames read from {clip} (read fewer with --max-frames)")
    prec = resolve_precision(precision, dev)
    denoiser = PrecisionDenoiser(loaded.denoiser(), prec, dev)
    window = loaded.model_config.frames
    common = dict(
        window=window, method=method.value, w_r=guidance_weight, sampler=sampler.value, steps=steps, seed=seed,
        sampler_opts={"clip": not no_clip, **opts},
    )
    err.print(f"seed {seed} | {loaded.path} | {clip.name}: {x.shape[1]} frames at {clip_fps:g} fps | {method.value} w_r={guidance_weight:g}")
    started = time.monotonic()
    with make_progress() as progress:
        bar = progress.add_task("windows", total=None)

        def report(window_index: int, n_windows: int, step: int, n_steps: int) -> None:
            progress.update(bar, total=n_windows * n_steps, completed=window_index * n_steps + step,
                            description=f"window {window_index + 1}/{n_windows}")

        if task == "extend":
            extra["context"] = extra["context"] or window // 2
            y = extend_frames(denoiser, x.to(dev), extra["frames"], context=extra["context"], callback=report, **common)
            out_fps = fps or clip_fps
        else:
            y = interpolate_frames(denoiser, x.to(dev), extra["factor"], callback=report, **common)
            out_fps = fps or clip_fps * extra["factor"]
    video = from_model(y.cpu())
    settings = {
        "command": task, "vdgen_version": vdgen.__version__, "input": shown_path(clip), "input_frames": int(x.shape[1]),
        "input_fps": clip_fps, "checkpoint": shown_path(loaded.path), "checkpoint_provenance": loaded.provenance,
        "seed": seed, "steps": steps, "sampler": sampler.value, "sampler_options": opts, "method": method.value,
        "guidance_weight": guidance_weight, "window": window, "resize": resize.value, "fps": out_fps, "clip_x_hat": not no_clip, "device": dev,
        "precision": prec, "output_frames": int(video.shape[0]), "seconds": round(time.monotonic() - started, 2), **extra,
    }
    write_result(output, video, out_fps, settings, preview)
    err.print(f"wrote {output} ({video.shape[0]} frames)")


ClipArg = Annotated[Path, typer.Argument(help="Input clip (MP4, MKV, GIF, MPEG, WebM, ... or a folder of PNG frames).")]
MethodOpt = Annotated[Method, typer.Option("--method", help="guidance (reconstruction guidance, VDM eq. 7) or replacement (baseline).")]
WeightOpt = Annotated[float, typer.Option("--guidance-weight", help="Reconstruction-guidance weight w_r.")]
ResizeOpt = Annotated[Resize, typer.Option("--resize", help="Map the clip to the model's size: crop (to aspect, then area-resize), pad or stretch.")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", help="Refuse clips whose frames have more pixels than this.")]
MaxFramesOpt = Annotated[int, typer.Option("--max-frames", help="Read at most this many frames of the clip.")]


@app.command()
def extend(
    clip: ClipArg,
    frames: Annotated[int, typer.Option("--frames", help="Total frames in the output, the clip's own frames included.")] = 64,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .mp4, .gif or folder.")] = Path("extended.mp4"),
    context: Annotated[Optional[int], typer.Option("--context", min=1, help="Frames of each window kept as known context x^a (default: half the model's window).")] = None,
    checkpoint: CheckpointOpt = None,
    method: MethodOpt = Method.guidance,
    guidance_weight: WeightOpt = 5.0,
    sampler: SamplerOpt = Sampler.ancestral,
    steps: StepsOpt = 64,
    seed: SeedOpt = None,
    fps: Annotated[Optional[float], typer.Option("--fps", help="Output frame rate (default: the clip's).")] = None,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    threads: ThreadsOpt = 0,
    resize: ResizeOpt = Resize.crop,
    preview: PreviewOpt = False,
    overwrite: OverwriteOpt = False,
    no_clip: NoClipOpt = False,
    gamma: GammaOpt = None,
    delta: ConditionalDeltaOpt = None,
    max_pixels: MaxPixelsOpt = 4096 * 4096,
    max_frames: MaxFramesOpt = 4096,
) -> None:
    """Continue a clip autoregressively to --frames frames in total, with reconstruction guidance."""
    _conditional(
        "extend", clip, output, checkpoint, {"frames": frames, "context": context}, method=method,
        guidance_weight=guidance_weight, sampler=sampler, steps=steps, seed=seed, fps=fps, device=device,
        precision=precision, threads=threads, resize=resize, preview=preview, overwrite=overwrite, no_clip=no_clip,
        gamma=gamma, delta=delta, max_pixels=max_pixels, max_frames=max_frames,
    )


@app.command()
def interpolate(
    clip: ClipArg,
    factor: Annotated[int, typer.Option("--factor", min=2, max=64, help="Temporal upsampling factor k: k-1 new frames between each pair.")] = 2,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .mp4, .gif or folder.")] = Path("interpolated.mp4"),
    checkpoint: CheckpointOpt = None,
    method: MethodOpt = Method.guidance,
    guidance_weight: WeightOpt = 5.0,
    sampler: SamplerOpt = Sampler.ancestral,
    steps: StepsOpt = 64,
    seed: SeedOpt = None,
    fps: Annotated[Optional[float], typer.Option("--fps", help="Output frame rate (default: the clip's times --factor).")] = None,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    threads: ThreadsOpt = 0,
    resize: ResizeOpt = Resize.crop,
    preview: PreviewOpt = False,
    overwrite: OverwriteOpt = False,
    no_clip: NoClipOpt = False,
    gamma: GammaOpt = None,
    delta: ConditionalDeltaOpt = None,
    max_pixels: MaxPixelsOpt = 4096 * 4096,
    max_frames: MaxFramesOpt = 4096,
) -> None:
    """Temporal upsampling: fill in frames between the clip's frames, with reconstruction guidance."""
    _conditional(
        "interpolate", clip, output, checkpoint, {"factor": factor}, method=method, guidance_weight=guidance_weight,
        sampler=sampler, steps=steps, seed=seed, fps=fps, device=device, precision=precision, threads=threads,
        resize=resize, preview=preview, overwrite=overwrite, no_clip=no_clip, gamma=gamma, delta=delta,
        max_pixels=max_pixels, max_frames=max_frames,
    )


# ---------------------------------------------------------------- eval

eval_app = typer.Typer(
    help="Evaluate: FVD between clip sources; prediction and interpolation next to simple baselines.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")

SourceArg = Annotated[
    str,
    typer.Argument(help="moving-mnist-val (held-out digits; moving-mnist-val:64@1000 is 64x64 from clip 1000 on), "
                        "moving-mnist (training digits), a folder of clips, or a .safetensors checkpoint (sampled)."),
]
I3dOpt = Annotated[Optional[Path], typer.Option("--i3d", help="I3D weights (default: weights/ or $VDGEN_WEIGHTS).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the full result to this JSON file.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, max=1024, help="Clips per I3D batch.")]
NoFvdOpt = Annotated[bool, typer.Option("--no-fvd", help="Skip FVD (PSNR / SSIM only; no I3D needed).")]


def _stage_reporter(progress):
    """progress(stage, done, total) for the evaluation library: one bar per stage."""
    bars: dict[str, Any] = {}

    def report(stage: str, done: int, total: Optional[int]) -> None:
        if stage not in bars:
            bars[stage] = progress.add_task(stage, total=total)
        progress.update(bars[stage], completed=done, total=total)

    return report


def _eval_setup(threads: int, device: Device, json_out: Optional[Path], overwrite: bool) -> str:
    from vdgen.atomic import check_writable

    set_threads(threads)
    if json_out is not None:
        check_writable(json_out, overwrite)
    return pick_device(device)


def _eval_report(result: dict[str, Any], json_out: Optional[Path]) -> None:
    """The result as a table on stdout, its warnings and notes on stderr, and optionally as JSON."""
    from vdgen.atomic import write_text_atomic
    from vdgen.evaluate import format_table, table_rows

    for warning in result.get("warnings", []):
        err.print(f"warning: {warning}", markup=False)
    typer.echo(format_table(*table_rows(result)))
    if "note" in result:
        err.print(f"{result['clips']} clips, seeds {result['seeds'][0]}..{result['seeds'][-1]}; {result['note']}", markup=False)
    if json_out is not None:
        write_text_atomic(json_out, json.dumps({"vdgen_version": vdgen.__version__, **result}, indent=2, allow_nan=False) + "\n")
        err.print(f"wrote {json_out}")


@eval_app.command("fvd")
def eval_fvd(
    source_a: SourceArg,
    source_b: SourceArg,
    num: Annotated[int, typer.Option("--num", "-n", min=0, help="Clips per side (0: every usable clip of a folder).")] = 256,
    num_b: Annotated[Optional[int], typer.Option("--num-b", min=0, help="Clips of SOURCE_B (default: --num).")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Frames per clip (default: a checkpoint's window, else 16).")] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Moving MNIST size, 32 or 64 (default: the checkpoint's, else 32).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="First sampling seed of a checkpoint source (clip i: seed + i).")] = 0,
    sampler: GenerateSamplerOpt = Sampler.pc,
    steps: GenerateStepsOpt = None,
    precision: PrecisionOpt = Precision.fp32,
    i3d: I3dOpt = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = 0,
    json_out: JsonOpt = None,
    overwrite: OverwriteOpt = False,
    gamma: GammaOpt = None,
    delta: DeltaOpt = None,
) -> None:
    """FVD between two clip sources (I3D logits, Kinetics-400); refuses a clip set against itself."""
    from vdgen.evaluate import CheckpointSource, fvd, parse_source
    from vdgen.generate import PC_DELTA

    opts = sampler_options(sampler, gamma, delta, PC_DELTA)  # checkpoints sample as `generate` does
    dev = _eval_setup(threads, device, json_out, overwrite)
    prec = resolve_precision(precision, dev, warn=False)
    options = dict(size=size, seed=seed, sampler=sampler.value, steps=steps, precision=prec, sampler_opts=opts)
    a, b = parse_source(source_a, **options), parse_source(source_b, **options)
    if any(isinstance(source, CheckpointSource) for source in (a, b)):
        warn_precision(prec, dev)  # only checkpoints sample; clips and Moving MNIST ignore the precision
    with make_progress() as progress:
        result = fvd(a, b, num or None, frames, n_b=None if num_b is None else (num_b or None), i3d=i3d,
                     batch_size=batch_size, device=dev, progress=_stage_reporter(progress))
    _eval_report(result, json_out)


def _eval_conditional(task: str, source: str, checkpoint: Optional[Path], num: int, frames: int, amount: int,
                      methods: list[Method], seed: int, resize: Resize, i3d: Optional[Path], no_fvd: bool,
                      device: Device, precision: Precision, threads: int, json_out: Optional[Path],
                      overwrite: bool, **options: Any) -> None:
    """Shared body of `eval predict` (amount: context frames) and `eval interpolate` (amount: factor)."""
    from vdgen.evaluate import evaluate_interpolation, evaluate_prediction, parse_source, read_clips
    from vdgen.i3d import load_i3d

    dev = _eval_setup(threads, device, json_out, overwrite)
    loaded = load_checkpoint(checkpoint, dev)
    cfg = loaded.model_config
    clips, read = read_clips(parse_source(source, seed=seed), num, frames, size=(cfg.height, cfg.width),
                             resize=resize.value, device=dev)
    network = None if no_fvd else load_i3d(i3d, dev)
    evaluate = evaluate_prediction if task == "predict" else evaluate_interpolation
    err.print(f"{loaded.path} | {read['label']}: {len(clips)} clips of {frames} frames | "
              f"{', '.join(m.value for m in methods)} | {options['sampler']} {options['steps']} steps"
              f"{''.join(f', {k} {v:g}' for k, v in options['sampler_opts'].items())}")
    with make_progress() as progress:
        result = evaluate(
            loaded, clips, amount, method=[m.value for m in methods], seeds=[seed + i for i in range(len(clips))],
            precision=resolve_precision(precision, dev), i3d=network, with_fvd=not no_fvd, device=dev,
            progress=_stage_reporter(progress), **options,
        )
    _eval_report({**result, "checkpoint": shown_path(loaded.path), "source": read}, json_out)


EvalSourceArg = Annotated[str, typer.Argument(help="True clips: moving-mnist-val (default; moving-mnist-val@1000 from clip 1000 on) or a folder of clips.")]
MethodsOpt = Annotated[list[Method], typer.Option("--method", help="guidance and/or replacement (repeat the option for both).")]
EvalNumOpt = Annotated[int, typer.Option("--num", "-n", min=1, help="Clips to evaluate (one sample each).")]
EvalSeedOpt = Annotated[int, typer.Option("--seed", min=0, help="First sampling seed (clip i: seed + i).")]


@eval_app.command("predict")
def eval_predict(
    source: EvalSourceArg = "moving-mnist-val",
    checkpoint: CheckpointOpt = None,
    num: EvalNumOpt = 64,
    frames: Annotated[int, typer.Option("--frames", min=2, help="Frames per clip, the context included.")] = 16,
    context: Annotated[int, typer.Option("--context", min=1, help="Given frames (and known frames per window).")] = 5,
    method: MethodsOpt = [Method.guidance],  # noqa: B006 (Typer reads the default, never mutates it)
    guidance_weight: WeightOpt = 5.0,
    sampler: SamplerOpt = Sampler.ancestral,
    steps: StepsOpt = 64,
    seed: EvalSeedOpt = 0,
    resize: ResizeOpt = Resize.crop,
    i3d: I3dOpt = None,
    no_fvd: NoFvdOpt = False,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    threads: ThreadsOpt = 0,
    json_out: JsonOpt = None,
    overwrite: OverwriteOpt = False,
    gamma: GammaOpt = None,
    delta: ConditionalDeltaOpt = None,
) -> None:
    """Video prediction: condition on the first --context frames of true clips, score the rest (PSNR, SSIM, FVD)."""
    _eval_conditional(
        "predict", source, checkpoint, num, frames, context, method, seed, resize, i3d, no_fvd, device, precision,
        threads, json_out, overwrite, w_r=guidance_weight, sampler=sampler.value, steps=steps,
        sampler_opts=conditional_sampler_options(sampler, gamma, delta),
    )


@eval_app.command("interpolate")
def eval_interpolate(
    source: EvalSourceArg = "moving-mnist-val",
    checkpoint: CheckpointOpt = None,
    num: EvalNumOpt = 64,
    frames: Annotated[int, typer.Option("--frames", min=3, help="Frames per true clip (factor * k + 1 uses all).")] = 17,
    factor: Annotated[int, typer.Option("--factor", min=2, max=64, help="Keep every factor-th frame; generate the rest.")] = 2,
    method: MethodsOpt = [Method.guidance],  # noqa: B006
    guidance_weight: WeightOpt = 5.0,
    sampler: SamplerOpt = Sampler.ancestral,
    steps: StepsOpt = 64,
    seed: EvalSeedOpt = 0,
    resize: ResizeOpt = Resize.crop,
    i3d: I3dOpt = None,
    no_fvd: NoFvdOpt = False,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    threads: ThreadsOpt = 0,
    json_out: JsonOpt = None,
    overwrite: OverwriteOpt = False,
    gamma: GammaOpt = None,
    delta: ConditionalDeltaOpt = None,
) -> None:
    """Temporal interpolation: keep every --factor-th frame of true clips, fill in the rest, score against blending."""
    _eval_conditional(
        "interpolate", source, checkpoint, num, frames, factor, method, seed, resize, i3d, no_fvd, device, precision,
        threads, json_out, overwrite, w_r=guidance_weight, sampler=sampler.value, steps=steps,
        sampler_opts=conditional_sampler_options(sampler, gamma, delta),
    )


# ---------------------------------------------------------------- info / train


@app.command()
def info(checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint (default: the shipped one).")] = None) -> None:
    """Print a checkpoint's config, parameter count and provenance."""
    from vdgen.checkpoint import read_model_configs
    from vdgen.config import to_dict

    path = checkpoint or default_checkpoint()
    model_config, diffusion_config, provenance, header = read_model_configs(path)
    params = sum(_numel(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    typer.echo(json.dumps(
        {
            "checkpoint": str(path),
            "parameters": params,
            "model": to_dict(model_config),
            "diffusion": to_dict(diffusion_config),
            "provenance": provenance,
        },
        indent=2,
    ))


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


@app.command()
def train(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (config.json, state, logs, samples, model.safetensors).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Run config JSON file (model, diffusion, train sections).")] = None,
    preset: Annotated[str, typer.Option("--preset", help="Named config: mmnist32 (the shipped model), mmnist64, tiny.")] = "mmnist32",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in RUN_DIR exactly where it stopped.")] = False,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Total training steps (overrides the config).")] = None,
    decay_steps: Annotated[Optional[int], typer.Option("--decay-steps", min=0, help="Decay the learning rate linearly towards zero over the last N of --steps (0: constant).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Batch size per process.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="moving-mnist, or a folder of videos or images.")] = None,
    image_frames: Annotated[Optional[int], typer.Option("--image-frames", min=0, help="K images per video (joint training).")] = None,
    image_dataset: Annotated[Optional[str], typer.Option("--image-dataset", help="Folder of images for the K joint-training frames (default: frames of other videos).")] = None,
    frame_skip: Annotated[Optional[int], typer.Option("--frame-skip", min=1, help="Stride between the frames of a training clip (video folders).")] = None,
    precision: Annotated[Optional[Precision], typer.Option("--precision", help="fp32, bf16 or auto.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=0, help="CPU threads (0: all).")] = None,
    device: DeviceOpt = Device.cpu,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after this many steps in this process.")] = None,
) -> None:
    """Train a model (or resume a run) and export its EMA weights to RUN_DIR/model.safetensors."""
    import dataclasses

    from vdgen import config as cfg
    from vdgen.train import TrainCallbacks, train as run_training

    run_config = None
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"{config}: no such config file")
        run_config = cfg.load_run_config(config.read_text(), str(config))
    elif not resume:
        run_config = cfg.preset(preset)
    elif (run_dir / "config.json").exists():
        run_config = cfg.load_run_config((run_dir / "config.json").read_text(), str(run_dir / "config.json"))
    overrides = {
        k: v for k, v in {
            "steps": steps, "decay_steps": decay_steps, "batch_size": batch_size, "dataset": dataset, "image_frames": image_frames,
            "image_dataset": image_dataset, "frame_skip": frame_skip,
            "precision": precision.value if precision else None, "threads": threads,
        }.items() if v is not None
    }
    if overrides:
        if run_config is None:
            raise ConfigError(f"cannot resume: {run_dir / 'config.json'} does not exist")
        run_config = dataclasses.replace(run_config, train=cfg.merge(run_config.train, **overrides))
    dev = pick_device(device)

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.description}"),
        TextColumn("ETA"), TimeRemainingColumn(), console=err,
        disable=not err.is_terminal and os.environ.get("VDGEN_PROGRESS") != "1",
    ) as progress:
        bar = progress.add_task("", total=None)

        def on_step(step: int, total: int, loss: float, lr: float, rate: float) -> None:
            progress.update(bar, completed=step, total=total, description=f"loss {loss:.4f} lr {lr:.1e} {rate:.2f} samples/s")
            if not progress.live.is_started or progress.disable:
                err.print(f"step {step}/{total} loss {loss:.4f} lr {lr:.2e} {rate:.2f} samples/s")

        callbacks = TrainCallbacks(
            on_step=on_step,
            on_checkpoint=lambda step, path: err.print(f"saved {path} at step {step}"),
            on_sample=lambda step, path: err.print(f"samples {path}"),
            on_message=lambda text: err.print(text, markup=False),
        )
        run_training(run_dir, run_config, resume=resume, device=dev, max_steps=max_steps, callbacks=callbacks)
    err.print(f"exported {run_dir / 'model.safetensors'}")


@app.command("convert-i3d", hidden=True)
def convert_i3d(
    src: Annotated[Path, typer.Argument(help="i3d-kinetics-400.ckpt (pickle of numpy arrays).")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors.")],
) -> None:
    """Convert the Kinetics-400 I3D pickle to safetensors (restricted unpickler: numpy arrays only)."""
    from vdgen.i3d import convert_i3d_checkpoint

    convert_i3d_checkpoint(src, dst)
    err.print(f"wrote {dst}")


# ---------------------------------------------------------------- entry point


def _click_exceptions() -> tuple[type, type, type]:
    """Typer's usage-error classes, reached through its public API.

    typer.BadParameter subclasses UsageError, which subclasses ClickException; that holds both in
    Typer releases built on click and in those that vendor their own copy of it.
    """
    usage_error = typer.BadParameter.__mro__[1]
    return usage_error, usage_error.__mro__[1], typer.Abort


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: VdgenError -> one line + exit 1; usage errors -> one line + exit 1; Ctrl-C -> 130."""
    UsageError, ClickException, Abort = _click_exceptions()
    args = sys.argv[1:] if argv is None else argv
    if argv is None:
        from vdgen.runtime import tune_malloc

        tune_malloc()
    _state["debug"] = "--debug" in args or os.environ.get("VDGEN_DEBUG", "") not in ("", "0")
    try:
        code = app(args=args, prog_name="vdgen", standalone_mode=False)
    except VdgenError as exc:
        if _state["debug"]:
            raise
        err.print("error: " + str(exc).replace("\r", "\\r").replace("\n", "\\n"), markup=False, soft_wrap=True)
        raise SystemExit(1) from None
    except Abort:
        err.print("interrupted", markup=False)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        raise SystemExit(130) from None
    except UsageError as exc:
        if _state["debug"]:
            raise
        hint = f" (see vdgen {exc.ctx.info_name} --help)" if exc.ctx is not None and exc.ctx.info_name != "vdgen" else " (see vdgen --help)"
        err.print(f"error: {exc.format_message()}{hint}", markup=False, soft_wrap=True)
        raise SystemExit(1) from None
    except ClickException as exc:
        err.print(f"error: {exc.format_message()}", markup=False, soft_wrap=True)
        raise SystemExit(1) from None
    except MemoryError:
        err.print("error: out of memory (try fewer frames, a smaller --num or a smaller model)", markup=False)
        raise SystemExit(1) from None
    except Exception as exc:  # a bug: one line unless --debug, and ask for a report
        if _state["debug"]:
            raise
        err.print(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  "(rerun with --debug for the traceback and report it)", markup=False, soft_wrap=True)
        raise SystemExit(1) from None
    if code == 130:  # Typer itself turns a KeyboardInterrupt inside a command into exit code 130
        err.print("interrupted", markup=False)
    raise SystemExit(code if isinstance(code, int) else 0)
