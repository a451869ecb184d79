"""Frozen configuration dataclasses: the model, the diffusion process and training.

Each is stored as JSON inside checkpoints and rebuilds the exact object; an unknown key or an
out-of-range value is a one-line ConfigError naming it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from vdgen.errors import ConfigError

T = TypeVar("T")

PARAMETERIZATIONS = ("eps", "v", "x")


@dataclass(frozen=True)
class ModelConfig:
    """The factorised space-time U-Net (VDM section 2)."""

    channels: int = 1  # 1 (gray) or 3 (RGB)
    frames: int = 16  # the training window; any count up to `max_relative_position + 1` works
    height: int = 32
    width: int = 32
    base_width: int = 32
    multipliers: tuple[int, ...] = (1, 2, 4)
    res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (16, 8)  # spatial sizes (min of H, W) with attention
    heads: int = 4
    dropout: float = 0.1
    max_relative_position: int = 32  # temporal relative-position range (offsets clipped beyond it)
    emb_dim: int = 0  # conditioning embedding size; 0 means 4 * base_width

    def __post_init__(self) -> None:
        _check(self.channels in (1, 3), "model.channels must be 1 or 3")
        _check(1 <= self.frames <= 1024, "model.frames must be in [1, 1024]")
        _check(1 <= self.base_width <= 4096, "model.base_width must be in [1, 4096]")
        _check(1 <= len(self.multipliers) <= 8, "model.multipliers must have 1 to 8 entries")
        _check(all(1 <= m <= 64 for m in self.multipliers), "model.multipliers must be in [1, 64]")
        _check(0 <= self.res_blocks <= 16, "model.res_blocks must be in [0, 16]")
        _check(1 <= self.heads <= 64, "model.heads must be in [1, 64]")
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        _check(1 <= self.max_relative_position <= 4096, "model.max_relative_position must be in [1, 4096]")
        _check(
            self.frames <= self.max_relative_position + 1,
            f"model.frames ({self.frames}) must be at most model.max_relative_position + 1 ({self.max_relative_position + 1})",
        )
        _check(0 <= self.emb_dim <= 16384, "model.emb_dim must be in [0, 16384]")
        stride = self.stride
        _check(
            8 <= self.height <= 4096 and 8 <= self.width <= 4096,
            "model.height and model.width must be in [8, 4096]",
        )
        _check(
            self.height % stride == 0 and self.width % stride == 0,
            f"model.height and model.width must be divisible by the U-Net stride {stride}",
        )
        for m in self.multipliers:
            width = self.base_width * m
            _check(width % self.heads == 0, f"channel width {width} must be divisible by heads {self.heads}")

    @property
    def stride(self) -> int:
        """Total spatial downsampling factor of the U-Net."""
        return 2 ** (len(self.multipliers) - 1)

    @property
    def cond_dim(self) -> int:
        return self.emb_dim or 4 * self.base_width


@dataclass(frozen=True)
class DiffusionConfig:
    """The continuous-time Gaussian diffusion (VDM section 1): what the network predicts."""

    parameterization: str = "v"
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        _check(
            self.parameterization in PARAMETERIZATIONS,
            f"diffusion.parameterization must be one of {', '.join(PARAMETERIZATIONS)}",
        )
        _check(self.schedule == "cosine", "diffusion.schedule must be 'cosine'")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping for `vdgen train`."""

    dataset: str = "moving-mnist"  # moving-mnist, or a folder of videos or images
    image_frames: int = 0  # K independent images appended to each video (joint training, VDM section 3)
    frame_skip: int = 1  # for video folders
    image_dataset: str = ""  # joint training's K images from this folder (images, or frames of videos); "": other clips
    batch_size: int = 16
    steps: int = 100_000
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.0
    warmup_steps: int = 500
    decay_steps: int = 0  # linear decay towards zero over the last decay_steps of steps; 0: constant after warm-up
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "fp32"  # fp32, bf16 (autocast), or auto (bf16 only where it measures faster)
    threads: int = 0  # 0: all cores
    log_every: int = 10
    sample_every: int = 500
    sample_steps: int = 64
    checkpoint_minutes: float = 5.0
    mnist_downsample: bool = True  # 64x64 Moving MNIST area-downsampled to 32x32

    def __post_init__(self) -> None:
        _check(0 <= self.image_frames <= 256, "train.image_frames must be in [0, 256]")
        _check(self.frame_skip >= 1, "train.frame_skip must be at least 1")
        _check(not self.image_dataset or self.image_frames > 0, "train.image_dataset needs train.image_frames > 0")
        _check(1 <= self.batch_size <= 65536, "train.batch_size must be in [1, 65536]")
        _check(self.steps >= 1, "train.steps must be at least 1")
        _check(0 < self.lr < 1, "train.lr must be in (0, 1)")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(0 <= self.decay_steps <= self.steps, "train.decay_steps must be in [0, train.steps]")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables)")
        _check(0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)")
        _check(self.precision in ("fp32", "bf16", "auto"), "train.precision must be fp32, bf16 or auto")
        _check(self.threads >= 0, "train.threads must be >= 0")
        _check(self.log_every >= 1 and self.sample_every >= 1, "train.log_every and sample_every must be >= 1")
        _check(self.sample_steps >= 1, "train.sample_steps must be >= 1")
        _check(self.checkpoint_minutes > 0, "train.checkpoint_minutes must be > 0")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs, as one file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Rebuild `cls` from `data`, refusing unknown keys and wrong types with a one-line error."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(known[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


_NESTED = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig}


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    if f.name in _NESTED and f.type in ("ModelConfig", "DiffusionConfig", "TrainConfig"):
        return from_dict(_NESTED[f.name], value, where)
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of integers")
        return tuple(value)
    return value


def load_run_config(text: str, source: str = "config") -> RunConfig:
    """Parse a run config from JSON text."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return from_dict(RunConfig, data, "config")


def merge(config: T, **changes: Any) -> T:
    """A copy of a frozen config with `changes` applied and validated."""
    try:
        return dataclasses.replace(config, **changes)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def preset(name: str) -> RunConfig:
    """A named run config: 'mmnist32' (the shipped checkpoint), 'mmnist64', or 'tiny' (tests)."""
    if name == "mmnist32":
        # Moving MNIST is generated on the fly (no overfitting), so dropout only slows learning.
        return RunConfig(
            model=ModelConfig(dropout=0.0),
            train=TrainConfig(lr=3e-4, warmup_steps=200, precision="auto", sample_every=500, ema_decay=0.999),
        )
    if name == "mmnist64":
        return RunConfig(
            model=ModelConfig(height=64, width=64, base_width=64, multipliers=(1, 2, 3, 4), attention_resolutions=(16, 8), dropout=0.0),
            train=TrainConfig(lr=3e-4, warmup_steps=500, mnist_downsample=False, precision="auto"),
        )
    if name == "tiny":
        return RunConfig(
            model=ModelConfig(frames=4, height=16, width=16, base_width=16, multipliers=(1, 2), attention_resolutions=(8,), heads=2, dropout=0.0),
            train=TrainConfig(batch_size=2, steps=4, warmup_steps=2, log_every=1, sample_every=1000, sample_steps=2, precision="fp32"),
        )
    raise ConfigError(f"unknown preset {name!r} (mmnist32, mmnist64, tiny)")


PRESETS = ("mmnist32", "mmnist64", "tiny")
