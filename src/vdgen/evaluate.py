"""Evaluation as in the literature (VDM section 6): FVD between clip sources, and prediction / interpolation.

A *source* is a set of uint8 clips [F, H, W, C]: a folder of video files, a built-in dataset
(Moving MNIST, train or validation digits), or a checkpoint sampled on the fly. `fvd` compares two
sources through I3D logits (`vdgen.metrics`) and reports the sample counts with the number; it refuses
to compare a clip set with itself (a real-vs-real floor needs two disjoint sets, e.g. indices 0..N-1
and N..2N-1 of one dataset).

`evaluate_prediction` conditions on the first k frames of true clips and generates the rest with
`guidance.extend`; `evaluate_interpolation` keeps every m-th frame and fills the rest in with
`guidance.interpolate`. Both report PSNR / SSIM of the generated frames against the truth (a single
sample per clip, averaged over clips: not the best-of-N some papers report) and FVD of the whole clips,
next to a trivial baseline (repeat the last context frame; blend neighbouring known frames linearly).
Results are JSON-ready dicts (non-finite floats become the strings "inf" / "-inf" / "nan");
`table_rows` and `format_table` turn them into a plain table. Progress goes only through a callback
`progress(stage, done, total)`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vdgen.checkpoint import LoadedModel, load_model, read_model_configs
from vdgen.config import DiffusionConfig
from vdgen.data import MovingMNIST
from vdgen.diffusion import denoising_loss
from vdgen.errors import ConfigError, VdgenError, VideoInputError
from vdgen.frames import fit_frames, from_model, to_luma, to_model, to_rgb
from vdgen.generate import DEFAULT_SAMPLER, PrecisionDenoiser, default_steps, sample_videos
from vdgen.guidance import DEFAULT_STEPS, DEFAULT_W_R, extend, interpolate, plan_extension, plan_interpolation
from vdgen.i3d import load_i3d
from vdgen.metrics import fvd_from_features, i3d_features, psnr, ssim
from vdgen.precision import autocast
from vdgen.sampling import noise_options
from vdgen.schedule import logsnr_schedule_cosine
from vdgen.video import read_video

# progress(stage, done, total): stage names what is running ("sample a", "features b", "sample guidance", ...).
Progress = Callable[[str, int, "int | None"], None]

DATASETS = {"moving-mnist": "train", "moving-mnist-val": "val"}
DEFAULT_FRAMES = 16
FEATURE_BATCH = 8
METHODS = ("guidance", "replacement")
PREDICTION_BASELINE = "repeat-last-frame"
INTERPOLATION_BASELINE = "linear-blend"
SINGLE_SAMPLE_NOTE = "PSNR/SSIM: one sample per clip, mean over clips (not best of N)"


# ------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class DatasetSource:
    """Built-in Moving MNIST clips start .. start + n - 1 ('moving-mnist' train digits, '-val' held-out digits)."""

    name: str
    size: int | None = None  # 32 or 64; None: the other side's checkpoint resolution, else 32
    start: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ConfigError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        if self.size not in (None, 32, 64):
            raise ConfigError(f"{self.name} clips are 32x32 or 64x64, not {self.size}x{self.size}")
        if self.start < 0:
            raise ConfigError(f"the first clip index must be >= 0, got {self.start}")


@dataclass(frozen=True)
class FolderSource:
    """Every clip `vdgen.video.read_video` reads in a folder (sorted by name): files, or folders of PNG frames."""

    path: Path


@dataclass(frozen=True)
class CheckpointSource:
    """Clips sampled on the fly from a checkpoint: clip i from seed `seed + i`."""

    path: Path
    sampler: str = DEFAULT_SAMPLER
    steps: int = default_steps()
    seed: int = 0
    precision: str = "fp32"
    options: tuple[tuple[str, float], ...] = ()  # the sampler's keyword options, e.g. (("delta", 0.6), ("gamma", 0.1))


Source = DatasetSource | FolderSource | CheckpointSource


def parse_source(
    text: str,
    *,
    size: int | None = None,
    dataset_seed: int = 0,
    seed: int = 0,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    precision: str = "fp32",
    sampler_opts: dict[str, float] | None = None,
) -> Source:
    """A source from its text: `moving-mnist[-val][:SIZE][@START]`, a folder of clips, or a `.safetensors` checkpoint.

    `size` and `dataset_seed` apply to datasets; `seed` (the first sampling seed), `sampler`, `steps`
    (None: `default_steps()`, as `generate` samples), `precision` and `sampler_opts` (gamma,
    delta) to checkpoints.
    `moving-mnist-val:64@512` is the 64x64 validation set from clip 512 on.
    """
    name, _, start_text = text.partition("@")
    name, _, size_text = name.partition(":")
    if name in DATASETS:
        try:
            start = int(start_text) if start_text else 0
            parsed_size = int(size_text) if size_text else size
        except ValueError:
            raise ConfigError(f"bad dataset source {text!r}; expected {name}[:SIZE][@START], e.g. {name}:32@1000") from None
        return DatasetSource(name, parsed_size, start, dataset_seed)
    path = Path(text)
    if path.suffix.lower() == ".safetensors":
        if not path.is_file():
            raise ConfigError(f"{path}: no such checkpoint")
        options = tuple(sorted((sampler_opts or {}).items()))
        return CheckpointSource(path, sampler, default_steps(steps), seed, precision, options)
    if path.is_dir():
        return FolderSource(path)
    if path.exists():
        raise ConfigError(f"{path}: not a folder of clips or a .safetensors checkpoint")
    raise ConfigError(
        f"unknown source {text!r}: expected {' or '.join(DATASETS)}, a folder of clips, or a .safetensors checkpoint"
    )


def describe_source(source: Source) -> dict[str, Any]:
    """A JSON-ready description of a source (what a result records about it)."""
    if isinstance(source, DatasetSource):
        return {"kind": "dataset", "name": source.name, "size": source.size, "start": source.start, "seed": source.seed}
    if isinstance(source, FolderSource):
        return {"kind": "folder", "path": str(source.path)}
    return {
        "kind": "checkpoint", "path": str(source.path), "sampler": source.sampler, "steps": source.steps,
        "seed": source.seed, "precision": source.precision, "sampler_options": dict(source.options),
    }


def source_label(source: Source, n: int | None = None) -> str:
    """A short human label: `moving-mnist-val[0:256] 32x32`, a folder path, `ckpt.safetensors (ddim 50)`."""
    if isinstance(source, DatasetSource):
        stop = "" if n is None else source.start + n
        size = f" {source.size}x{source.size}" if source.size else ""
        return f"{source.name}[{source.start}:{stop}]{size}"
    if isinstance(source, FolderSource):
        return str(source.path)
    options = "".join(f" {name} {value:g}" for name, value in source.options)
    return f"{source.path.name} ({source.sampler} {source.steps}{options})"


def shared_clips(a: Source, n_a: int, b: Source, n_b: int) -> int:
    """How many clips two sources of n_a and n_b clips have in common (0: independent sets)."""
    if type(a) is not type(b):
        return 0
    if isinstance(a, FolderSource):
        return min(n_a, n_b) if a.path.resolve() == b.path.resolve() else 0
    if isinstance(a, DatasetSource):
        same = (a.name, a.size, a.seed) == (b.name, b.size, b.seed)
        first = a.start
    else:
        same = (a.path.resolve(), a.sampler, a.steps, a.precision) == (b.path.resolve(), b.sampler, b.steps, b.precision)
        first = a.seed
    other = b.start if isinstance(b, DatasetSource) else b.seed
    return max(0, min(first + n_a, other + n_b) - max(first, other)) if same else 0


class ClipReader:
    """Iterates a source's clips as uint8 [F, H, W, C]; counts what it skipped (folders) in `skipped_*`."""

    def __init__(self, source: Source, n: int | None, frames: int, *, device: str | torch.device = "cpu",
                 progress: Progress | None = None, stage: str = "clips", sample_batch: int = 8) -> None:
        if frames < 1:
            raise ConfigError(f"clips need at least 1 frame, got {frames}")
        if n is None and not isinstance(source, FolderSource):
            raise ConfigError("the number of clips is required for datasets and checkpoints")
        if n is not None and n < 1:
            raise ConfigError(f"the number of clips must be at least 1, got {n}")
        self.source, self.n, self.frames, self.device = source, n, frames, device
        self.progress, self.stage, self.sample_batch = progress, stage, sample_batch
        self.skipped_short = 0
        self.skipped_unreadable = 0
        self.count = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        if isinstance(self.source, DatasetSource):
            clips = self._dataset_clips(self.source)
        elif isinstance(self.source, FolderSource):
            clips = self._folder_clips(self.source)
        else:
            clips = self._checkpoint_clips(self.source)
        for clip in clips:
            self.count += 1
            yield clip

    def _dataset_clips(self, source: DatasetSource) -> Iterator[np.ndarray]:
        assert self.n is not None
        dataset = MovingMNIST(self.frames, source.size or 32, DATASETS[source.name], source.seed)
        for index in range(source.start, source.start + self.n):
            yield dataset.clip(index)[..., None]

    def _folder_clips(self, source: FolderSource) -> Iterator[np.ndarray]:
        if not source.path.is_dir():
            raise VideoInputError(f"{source.path}: not a folder")
        for entry in sorted(source.path.iterdir()):
            if self.n is not None and self.count >= self.n:
                return
            if entry.name.startswith("."):
                continue
            try:
                clip, _ = read_video(entry, max_frames=self.frames)
            except VideoInputError:
                self.skipped_unreadable += 1
                continue
            if clip.shape[0] < self.frames:
                self.skipped_short += 1
                continue
            yield clip[: self.frames]
        if self.n is not None and self.count < self.n:
            raise VideoInputError(
                f"{source.path}: only {self.count} clips of at least {self.frames} frames "
                f"({self.skipped_short} shorter, {self.skipped_unreadable} unreadable), {self.n} needed"
            )

    def _checkpoint_clips(self, source: CheckpointSource) -> Iterator[np.ndarray]:
        assert self.n is not None
        loaded = load_model(source.path, self.device)
        seeds = list(range(source.seed, source.seed + self.n))
        for start in range(0, self.n, self.sample_batch):
            chunk = seeds[start : start + self.sample_batch]

            def report(done: int, total: int, offset: int = start) -> None:
                if self.progress is not None:
                    self.progress(self.stage, offset + done // source.steps, self.n)

            yield from sample_videos(
                loaded.net, loaded.model_config, loaded.diffusion_config, chunk, steps=source.steps,
                sampler=source.sampler, frames=self.frames, device=self.device, precision=source.precision,
                batch_size=self.sample_batch, callback=report, sampler_opts=dict(source.options),
            )

    def report(self) -> dict[str, Any]:
        """What was read: the clip count and the skip counts."""
        out: dict[str, Any] = {"clips": self.count}
        if isinstance(self.source, FolderSource):
            out.update(skipped_short=self.skipped_short, skipped_unreadable=self.skipped_unreadable)
        return out


def read_clips(
    source: Source,
    n: int | None,
    frames: int,
    *,
    size: tuple[int, int] | None = None,
    resize: str = "crop",
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """n clips of a source as one uint8 array [N, F, H, W, C], fitted to `size` (H, W) if given; and what was read.

    A dataset of unspecified size is generated at `size` when that is a Moving MNIST size.
    """
    if isinstance(source, DatasetSource) and source.size is None:
        side = size[0] if size is not None and size[0] == size[1] and size[0] in (32, 64) else 32
        source = DatasetSource(source.name, side, source.start, source.seed)
    reader = ClipReader(source, n, frames, device=device, progress=progress, stage="read clips")
    clips = []
    for clip in reader:
        clips.append(clip if size is None or clip.shape[1:3] == tuple(size) else np.asarray(fit_frames(clip, size, resize)))
    if not clips:
        raise VideoInputError(f"{source_label(source)}: no clips of at least {frames} frames")
    return np.stack(clips), {**describe_source(source), "label": source_label(source, reader.count), **reader.report()}


class _Sized:
    """An iterable with a known length (so feature extraction can report a total)."""

    def __init__(self, iterable: Any, length: int) -> None:
        self.iterable, self.length = iterable, length

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable)

    def __len__(self) -> int:
        return self.length


def _resolve_size(source: Source, other: Source) -> Source:
    """A dataset of unspecified size takes the other side's checkpoint resolution (else 32)."""
    if not isinstance(source, DatasetSource) or source.size is not None:
        return source
    size = 32
    if isinstance(other, CheckpointSource):
        height = read_model_configs(other.path)[0].height
        size = height if height in (32, 64) else 32
    return DatasetSource(source.name, size, source.start, source.seed)


def _default_frames(*sources: Source) -> int:
    for source in sources:
        if isinstance(source, CheckpointSource):
            return read_model_configs(source.path)[0].frames
    return DEFAULT_FRAMES


# ---------------------------------------------------------------------------------------------- FVD


def clip_features(
    clips: Any,
    i3d: torch.nn.Module,
    *,
    batch_size: int = FEATURE_BATCH,
    progress: Progress | None = None,
    stage: str = "features",
) -> np.ndarray:
    """I3D logits [N, 400] of uint8 clips (an array [N, F, H, W, C] or an iterable of [F, H, W, C])."""
    report = None if progress is None else (lambda done, total: progress(stage, done, total))
    return i3d_features(clips, i3d, batch_size=batch_size, progress_callback=report)


def fvd(
    source_a: Source,
    source_b: Source,
    n: int | None,
    frames: int | None = None,
    *,
    n_b: int | None = None,
    i3d: torch.nn.Module | Path | None = None,
    batch_size: int = FEATURE_BATCH,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """FVD between n clips of source_a and n_b (default n) of source_b, each cut to `frames` (default: 16, or the checkpoint's).

    n None reads every usable clip of a folder. Refuses two sources that share clips (the same dataset
    indices, the same folder, the same checkpoint seeds and sampler) before any work: use disjoint sets
    for a floor. `i3d` is the network, or the path of its weights (None: the default weights).
    """
    n_b = n if n_b is None else n_b
    source_a, source_b = _resolve_size(source_a, source_b), _resolve_size(source_b, source_a)
    frames = frames or _default_frames(source_a, source_b)
    for count in (n, n_b):
        if count is not None and count < 2:
            raise ConfigError(f"FVD needs at least 2 clips per side, got {count}")
    # n is None only for folders, where any overlap means the same folder.
    shared = shared_clips(source_a, n or 1, source_b, n_b or 1)
    if shared:
        raise ConfigError(
            f"both sides share {shared} clips ({source_label(source_a, n)}); compare disjoint sets, "
            "e.g. moving-mnist-val@0 against moving-mnist-val@N, or two different folders or seeds"
        )
    if not isinstance(i3d, torch.nn.Module):
        i3d = load_i3d(i3d, device)
    started = time.perf_counter()
    sides, feats = {}, []
    for key, source, count in (("a", source_a, n), ("b", source_b, n_b)):
        reader = ClipReader(source, count, frames, device=device, progress=progress, stage=f"sample {key}")
        # A reader of known count passes as sized (progress with a total); a folder read whole does not.
        clips = _Sized(reader, count) if count is not None else iter(reader)
        feats.append(clip_features(clips, i3d, batch_size=batch_size, progress=progress, stage=f"features {key}"))
        sides[key] = {**describe_source(source), "label": source_label(source, reader.count), **reader.report()}
    warnings = [
        f"{side['label']}: skipped {side[what]} {what.split('_')[1]} clips"
        for side in sides.values() for what in ("skipped_short", "skipped_unreadable") if side.get(what)
    ]
    if min(len(f) for f in feats) < 2:
        raise VideoInputError(f"FVD needs at least 2 clips per side, got {len(feats[0])} and {len(feats[1])}")
    return _json_ready({
        "metric": "fvd",
        "fvd": fvd_from_features(*feats),
        "frames": frames,
        "a": sides["a"],
        "b": sides["b"],
        "seconds": time.perf_counter() - started,
        "warnings": warnings,
    })


# ------------------------------------------------------------------------------ conditional tasks


def _check_clips(clips: np.ndarray, loaded: LoadedModel, seeds: Sequence[int]) -> np.ndarray:
    """Clips as uint8 [N, F, H, W, C] in the model's channels (RGB -> luma for gray models)."""
    clips = np.asarray(clips)
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] not in (1, 3):
        raise VideoInputError(f"expected uint8 clips [N, F, H, W, C] with C 1 or 3, got {clips.dtype} {clips.shape}")
    config = loaded.model_config
    if clips.shape[2:4] != (config.height, config.width):
        raise VideoInputError(
            f"clips are {clips.shape[2]}x{clips.shape[3]}, the model makes {config.height}x{config.width}"
        )
    if len(seeds) != len(clips):
        raise ConfigError(f"need one seed per clip: got {len(seeds)} seeds for {len(clips)} clips")
    if clips.shape[-1] != config.channels:
        clips = np.asarray(to_luma(clips) if config.channels == 1 else to_rgb(clips))
    return clips


def _methods(method: str | Sequence[str]) -> list[str]:
    methods = [method] if isinstance(method, str) else list(method)
    if not methods:
        raise ConfigError(f"no conditioning method given; choose from {', '.join(METHODS)}")
    for name in methods:
        if name not in METHODS:
            raise ConfigError(f"unknown conditioning method {name!r}; choose from {', '.join(METHODS)}")
    return methods


def _frame_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """PSNR / SSIM of frames [N, P, H, W, C]: mean over all, per position (mean over clips), per clip (mean over frames)."""
    p, s = psnr(pred, truth), ssim(pred, truth)
    return {
        "psnr": p.mean,
        "ssim": s.mean,
        "psnr_per_frame": p.per_frame.mean(axis=0).tolist(),
        "ssim_per_frame": s.per_frame.mean(axis=0).tolist(),
        "psnr_per_clip": p.per_frame.mean(axis=1).tolist(),
        "ssim_per_clip": s.per_frame.mean(axis=1).tolist(),
    }


# generate(clip [C, F, H, W] in [-1, 1], method, seed, callback(window, windows, step, steps)) -> [C, F', H, W]
Generate = Callable[[torch.Tensor, str, int, Callable[[int, int, int, int], None]], torch.Tensor]


def _evaluate_conditional(
    truth: np.ndarray,
    generate: Generate,
    generated_positions: Sequence[int],
    baseline: tuple[str, np.ndarray],
    *,
    methods: list[str],
    windows_per_clip: int,
    seeds: Sequence[int],
    steps: int,
    i3d: torch.nn.Module | None,
    with_fvd: bool,
    batch_size: int,
    device: str | torch.device,
    progress: Progress | None,
) -> dict[str, Any]:
    """Generate every clip of `truth` [N, F, H, W, C] with each method; score them and the baseline against the truth.

    PSNR / SSIM over `generated_positions`, FVD of whole clips (when N >= 2 and `with_fvd`).
    """
    n = len(truth)
    outputs, seconds = {}, {}
    total = n * windows_per_clip * steps
    for method in methods:
        started = time.perf_counter()
        generated = []
        for i, (clip, seed) in enumerate(zip(truth, seeds)):

            def report(window: int, _windows: int, step: int, _steps: int, done: int = i * windows_per_clip * steps,
                       stage: str = f"sample {method}") -> None:
                if progress is not None:
                    progress(stage, done + window * steps + step, total)

            generated.append(from_model(generate(to_model(clip).to(device), method, int(seed), report)))
        outputs[method] = np.stack(generated)
        seconds[method] = time.perf_counter() - started
    outputs[baseline[0]] = baseline[1]

    started = time.perf_counter()
    warnings = []
    true_features = None
    if with_fvd and n < 2:
        warnings.append("FVD needs at least 2 clips; not computed")
    elif with_fvd:
        i3d = i3d if i3d is not None else load_i3d(device=device)
        true_features = clip_features(truth, i3d, batch_size=batch_size, progress=progress, stage="features truth")
    positions = list(generated_positions)
    rows = []
    for name, videos in outputs.items():
        row: dict[str, Any] = {"name": name, "baseline": name == baseline[0]}
        row.update(_frame_scores(videos[:, positions], truth[:, positions]))
        row["fvd"] = None
        if true_features is not None:
            assert i3d is not None
            features = clip_features(videos, i3d, batch_size=batch_size, progress=progress, stage=f"features {name}")
            row["fvd"] = fvd_from_features(features, true_features)
        if name in seconds:
            row["seconds_per_clip"] = seconds[name] / n
        rows.append(row)
    return {
        "clips": n,
        "frames": truth.shape[1],
        "windows_per_clip": windows_per_clip,
        "steps": steps,
        "seeds": [int(s) for s in seeds],
        "samples_per_clip": 1,
        "note": SINGLE_SAMPLE_NOTE,
        "results": rows,
        "seconds": {"sampling": sum(seconds.values()), "metrics": time.perf_counter() - started},
        "warnings": warnings,
    }


def _denoiser(loaded: LoadedModel, precision: str, device: str | torch.device) -> PrecisionDenoiser:
    loaded.net.eval()
    return PrecisionDenoiser(loaded.denoiser(), precision, device)


def repeat_last_frame(clips: np.ndarray, context: int) -> np.ndarray:
    """The prediction baseline: clips [N, F, H, W, C] with every frame from `context` on a copy of frame context - 1."""
    out = clips.copy()
    out[:, context:] = clips[:, context - 1 : context]
    return out


def linear_blend(known: np.ndarray, factor: int) -> np.ndarray:
    """The interpolation baseline: known frames [N, K, H, W, C] -> [N, (K - 1) factor + 1, ...], linear in time."""
    x = known.astype(np.float64)
    out = np.empty((known.shape[0], (known.shape[1] - 1) * factor + 1, *known.shape[2:]), dtype=np.float64)
    out[:, ::factor] = x
    for j in range(1, factor):
        out[:, j::factor] = (1.0 - j / factor) * x[:, :-1] + (j / factor) * x[:, 1:]
    return np.round(out).clip(0, 255).astype(np.uint8)


def evaluate_prediction(
    loaded: LoadedModel,
    clips: np.ndarray,
    context: int,
    *,
    method: str | Sequence[str] = "guidance",
    w_r: float = DEFAULT_W_R,
    sampler: str = "ancestral",
    steps: int = DEFAULT_STEPS,
    seeds: Sequence[int],
    window_context: int | None = None,
    sampler_opts: dict | None = None,
    precision: str = "fp32",
    i3d: torch.nn.Module | None = None,
    with_fvd: bool = True,
    batch_size: int = FEATURE_BATCH,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Predict frames context .. F-1 of true clips uint8 [N, F, H, W, C] from their first `context` (VDM sec. 3.1).

    Each clip is extended by `guidance.extend` with each method in `method` (windows of the model's
    length that keep `window_context` known frames, default `context`; clip i from seeds[i]). Reports per
    method, and for the repeat-last-frame baseline: PSNR / SSIM of the predicted frames (one sample per
    clip, mean over clips) and FVD of the full clips against the true ones (N >= 2; I3D needs F >= 9).
    `i3d` None loads the pretrained network when FVD is computed.
    """
    methods = _methods(method)
    noise = noise_options(sampler, sampler_opts)  # a bad option fails before any sampling
    clips = _check_clips(clips, loaded, seeds)
    frames = clips.shape[1]
    if not 1 <= context < frames:
        raise ConfigError(f"the context must be in [1, {frames - 1}] for {frames}-frame clips, got {context}")
    window = loaded.model_config.frames
    window_context = window_context or context
    plan = plan_extension(context, frames, window, window_context)
    denoiser = _denoiser(loaded, precision, device)

    def generate(clip: torch.Tensor, how: str, seed: int, callback: Callable[[int, int, int, int], None]) -> torch.Tensor:
        return extend(
            denoiser, clip[:, :context], frames, window=window, context=window_context, method=how, w_r=w_r,
            sampler=sampler, steps=steps, seed=seed, sampler_opts=sampler_opts, callback=callback,
        )

    result = _evaluate_conditional(
        clips, generate, range(context, frames), (PREDICTION_BASELINE, repeat_last_frame(clips, context)),
        methods=methods, windows_per_clip=len(plan), seeds=seeds, steps=steps, i3d=i3d, with_fvd=with_fvd,
        batch_size=batch_size, device=device, progress=progress,
    )
    header = {"task": "prediction", "context": context, "window": window, "window_context": window_context,
              "w_r": w_r, "sampler": sampler, "sampler_options": noise}
    return _json_ready({**header, **result})


def evaluate_interpolation(
    loaded: LoadedModel,
    clips: np.ndarray,
    factor: int,
    *,
    method: str | Sequence[str] = "guidance",
    w_r: float = DEFAULT_W_R,
    sampler: str = "ancestral",
    steps: int = DEFAULT_STEPS,
    seeds: Sequence[int],
    sampler_opts: dict | None = None,
    precision: str = "fp32",
    i3d: torch.nn.Module | None = None,
    with_fvd: bool = True,
    batch_size: int = FEATURE_BATCH,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Keep frames 0, m, 2m, .. of true clips uint8 [N, F, H, W, C] and fill in the rest with `guidance.interpolate`.

    The output has (K - 1) m + 1 frames for the K = (F - 1) // m + 1 kept ones (all F when m divides F - 1).
    Reports per method, and for linear blending of the kept frames: PSNR / SSIM of the generated frames
    (one sample per clip, mean over clips) and FVD of the whole output against the true frames.
    """
    methods = _methods(method)
    noise = noise_options(sampler, sampler_opts)  # a bad option fails before any sampling
    clips = _check_clips(clips, loaded, seeds)
    if factor < 2:
        raise ConfigError(f"the interpolation factor must be at least 2, got {factor}")
    kept = (clips.shape[1] - 1) // factor + 1
    if kept < 2:
        raise ConfigError(f"{clips.shape[1]}-frame clips keep fewer than 2 frames at factor {factor}")
    length = (kept - 1) * factor + 1
    truth = clips[:, :length]
    window = loaded.model_config.frames
    plan = plan_interpolation(kept, factor, window)
    denoiser = _denoiser(loaded, precision, device)

    def generate(clip: torch.Tensor, how: str, seed: int, callback: Callable[[int, int, int, int], None]) -> torch.Tensor:
        return interpolate(
            denoiser, clip[:, ::factor], factor, window=window, method=how, w_r=w_r, sampler=sampler,
            steps=steps, seed=seed, sampler_opts=sampler_opts, callback=callback,
        )

    result = _evaluate_conditional(
        truth, generate, [f for f in range(length) if f % factor],
        (INTERPOLATION_BASELINE, linear_blend(truth[:, ::factor], factor)),
        methods=methods, windows_per_clip=len(plan), seeds=seeds, steps=steps, i3d=i3d, with_fvd=with_fvd,
        batch_size=batch_size, device=device, progress=progress,
    )
    header = {"task": "interpolation", "factor": factor, "kept_frames": kept, "window": window, "w_r": w_r,
              "sampler": sampler, "sampler_options": noise}
    return _json_ready({**header, **result})



# ------------------------------------------------------------------------------------------ output


def _json_ready(value: Any) -> Any:
    """Plain JSON types throughout; non-finite floats as the strings 'inf', '-inf', 'nan'."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, Path):
        return str(value)
    return value


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A header and rows of strings for a result of `fvd`, `evaluate_prediction` or `evaluate_interpolation`."""
    if result.get("metric") == "fvd":
        header = ["a", "b", "clips a", "clips b", "frames", "FVD"]
        a, b = result["a"], result["b"]
        return header, [[a["label"], b["label"], str(a["clips"]), str(b["clips"]), str(result["frames"]),
                         _cell(result["fvd"], 1)]]
    if result.get("task") not in ("prediction", "interpolation"):
        raise VdgenError("not an evaluation result (no 'metric' fvd or 'task' prediction/interpolation)")
    header = ["method", "PSNR (dB)", "SSIM", "FVD", "s / clip"]
    rows = []
    for row in result["results"]:
        name = f"{row['name']} (baseline)" if row["baseline"] else row["name"]
        rows.append([name, _cell(row["psnr"], 2), _cell(row["ssim"], 3), _cell(row["fvd"], 1),
                     _cell(row.get("seconds_per_clip"), 1)])
    return header, rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows of strings as a plain, left-aligned text table with a rule under the header."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in (header, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ validation loss


def t_grid(points: int) -> list[float]:
    """The midpoints (i + 0.5) / points of `points` equal slices of [0, 1]."""
    if points < 1:
        raise ConfigError(f"the t grid needs at least 1 point, got {points}")
    return [(i + 0.5) / points for i in range(points)]


@torch.no_grad()
def validation_loss(
    net: torch.nn.Module, diffusion: DiffusionConfig, clips: torch.Tensor, ts: Sequence[float], seed: int,
    precision: str = "fp32", chunk: int = 16, independent_frames: bool = False,
) -> list[float]:
    """The denoising loss (MSE in the predicted space) of `net` on clips [N, C, F, H, W], at each t of `ts`.

    The training loss, without its sampling noise: the noise comes from one generator seeded with
    `seed` and is drawn in a fixed order, so two networks (two checkpoints, or raw and EMA weights)
    are scored on exactly the same noisy inputs, and their difference is theirs alone.
    `independent_frames` marks every frame as an independent image (temporal attention masked to the
    identity, as for joint training's image frames): the gap to the normal score, on the same noise,
    is what the network gains from seeing the other frames.
    """
    net.eval()
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for t in ts:
        total = 0.0
        for start in range(0, clips.shape[0], chunk):
            x = clips[start : start + chunk]
            eps = torch.randn(x.shape, generator=generator)
            logsnr = logsnr_schedule_cosine(torch.full((x.shape[0],), float(t), dtype=torch.float64))
            mask = torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=device) if independent_frames else None
            with autocast(precision, device):
                loss = denoising_loss(net, diffusion, x.to(device), logsnr.to(device), eps.to(device), mask)
            total += loss.item() * x.numel()
        losses.append(total / clips.numel())
    return losses
