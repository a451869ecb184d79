"""Unconditional sampling from a network: seeds in, uint8 frames out (the library behind `vdgen generate`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from vdgen.config import DiffusionConfig, ModelConfig
from vdgen.diffusion import Denoiser
from vdgen.errors import ConfigError
from vdgen.frames import from_model
from vdgen.precision import autocast
from vdgen.sampling import SAMPLERS, sample

# pc gave the lower FVD than the paper's ancestral sampler at equal cost, at delta 0.1 (README, "Measured quality").
DEFAULT_SAMPLER = "pc"
# 256 steps for every sampler (the paper's for ancestral; pc: 511 network evaluations). pc at 256 steps
# keeps the clip's digits in 77% of frames against 52.5% at 128 (bench/digit_score.py), at a worse FVD (300.1
# against 238.2 at 16 clips): the default follows the digit score (README "Measured quality").
DEFAULT_STEPS = 256
# The pc sampler's Langevin step size in the CLI (the library's sample_pc keeps the paper's 0.1): chosen
# by bench/digit_score.py on the shipped checkpoint (README, "Measured quality").
PC_DELTA = 0.6
SAMPLE_BATCH = 8


def default_steps(steps: int | None = None) -> int:
    """`steps` if given, else DEFAULT_STEPS (every sampler has the same default)."""
    return DEFAULT_STEPS if steps is None else steps


class PrecisionDenoiser:
    """A denoiser run under autocast whose x_hat comes back in float32."""

    def __init__(self, denoiser: Callable, precision: str, device: torch.device | str) -> None:
        self.denoiser, self.precision, self.device = denoiser, precision, device

    def __call__(self, z_t: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            return self.denoiser(z_t, logsnr).float()


def sample_videos(
    net: nn.Module,
    model_config: ModelConfig,
    diffusion_config: DiffusionConfig,
    seeds: Sequence[int],
    *,
    steps: int | None = None,
    sampler: str = DEFAULT_SAMPLER,
    frames: int | None = None,
    device: str | torch.device = "cpu",
    clip: bool = True,
    precision: str = "fp32",
    batch_size: int = SAMPLE_BATCH,
    callback: Callable[[int, int], None] | None = None,
    sampler_opts: dict | None = None,
) -> np.ndarray:
    """One video per seed as uint8 [N, F, H, W, C]; sample i depends only on seeds[i]; `steps` None: default_steps."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    steps = default_steps(steps)
    frames = frames or model_config.frames
    if not 1 <= frames <= model_config.max_relative_position + 1:
        raise ConfigError(f"--frames must be in [1, {model_config.max_relative_position + 1}] for this model")
    was_training = net.training
    net.eval()
    denoiser = PrecisionDenoiser(Denoiser(net, diffusion_config), precision, device)
    shape_one = (model_config.channels, frames, model_config.height, model_config.width)
    out = []
    total = len(seeds) * steps
    done = 0
    try:
        for start in range(0, len(seeds), batch_size):
            chunk = list(seeds[start : start + batch_size])

            def progress(step: int, n: int, _offset: int = done) -> None:
                if callback:
                    callback(_offset + step * len(chunk), total)

            x = sample(
                sampler, denoiser, (len(chunk), *shape_one), steps, chunk,
                clip=clip, callback=progress, device=device, **(sampler_opts or {}),
            )
            out.append(from_model(x))
            done += steps * len(chunk)
    finally:
        net.train(was_training)
    return np.concatenate(out)
