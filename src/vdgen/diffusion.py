"""The parameterisation wrapper, the forward process q(z_t | x) and the training loss (VDM section 1).

The network predicts eps, v or x (DiffusionConfig.parameterization); this module alone knows
which, and exposes x_hat(z_t, logsnr) to the samplers.
"""

from __future__ import annotations

import torch
from torch import nn

from vdgen.config import DiffusionConfig
from vdgen.schedule import alpha_sigma, logsnr_schedule_cosine


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1, 1] in the dtype and device of `like`."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(device=like.device, dtype=like.dtype)


def x_from_eps(z_t: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """x = (z - sigma eps) / alpha."""
    return (z_t - sigma_t * eps) / alpha_t


def x_from_v(z_t: torch.Tensor, v: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """x = alpha z - sigma v."""
    return alpha_t * z_t - sigma_t * v


def eps_from_x(z_t: torch.Tensor, x: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """eps = (z - alpha x) / sigma."""
    return (z_t - alpha_t * x) / sigma_t


def v_from_x_eps(x: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """v = alpha eps - sigma x."""
    return alpha_t * eps - sigma_t * x


def q_sample(x: torch.Tensor, logsnr: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z_t = alpha_t x + sigma_t eps for x [B, ...], logsnr [B]."""
    alpha_t, sigma_t = alpha_sigma(logsnr)
    return _bcast(alpha_t, x) * x + _bcast(sigma_t, x) * eps


class Denoiser:
    """x_hat(z_t, logsnr) from a network predicting eps, v or x; the samplers' denoiser callable."""

    def __init__(self, net: nn.Module, config: DiffusionConfig, image_mask: torch.Tensor | None = None) -> None:
        self.net = net
        self.config = config
        self.image_mask = image_mask

    def raw(self, z_t: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        """The network output for z_t [B, C, F, H, W], logsnr [B] (float64)."""
        logsnr = logsnr.reshape(-1).expand(z_t.shape[0])
        return self.net(z_t, logsnr, self.image_mask)

    def __call__(self, z_t: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        """x_hat [B, C, F, H, W] for z_t [B, C, F, H, W] and logsnr [B]."""
        logsnr = torch.as_tensor(logsnr, dtype=torch.float64).reshape(-1).expand(z_t.shape[0])
        out = self.raw(z_t, logsnr).to(z_t.dtype)
        return prediction_to_x(self.config.parameterization, z_t, out, logsnr)


def prediction_to_x(parameterization: str, z_t: torch.Tensor, out: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """Convert a network output in the given parameterisation to x_hat."""
    alpha_t, sigma_t = alpha_sigma(logsnr)
    alpha_t, sigma_t = _bcast(alpha_t, z_t), _bcast(sigma_t, z_t)
    if parameterization == "v":
        return x_from_v(z_t, out, alpha_t, sigma_t)
    if parameterization == "eps":
        return x_from_eps(z_t, out, alpha_t, sigma_t)
    return out


def training_target(parameterization: str, x: torch.Tensor, eps: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """What the network should output for clean x and noise eps at logsnr."""
    if parameterization == "v":
        alpha_t, sigma_t = alpha_sigma(logsnr)
        return v_from_x_eps(x, eps, _bcast(alpha_t, x), _bcast(sigma_t, x))
    if parameterization == "eps":
        return eps
    return x


def training_loss(
    net: nn.Module,
    config: DiffusionConfig,
    x: torch.Tensor,
    generator: torch.Generator,
    image_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE in the predicted space with t ~ U[0, 1] (VDM section 1); x [B, C, F, H, W] in [-1, 1]."""
    batch = x.shape[0]
    # Draw on the generator's device so a CPU generator can seed training on any device.
    t = torch.rand(batch, generator=generator, dtype=torch.float64, device=generator.device).to(x.device)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    return denoising_loss(net, config, x, logsnr_schedule_cosine(t), eps, image_mask)


def denoising_loss(
    net: nn.Module,
    config: DiffusionConfig,
    x: torch.Tensor,
    logsnr: torch.Tensor,
    eps: torch.Tensor,
    image_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE in the predicted space for clean x, noise eps and log-SNR [B]: the training loss at given t and noise."""
    z_t = q_sample(x, logsnr, eps)
    target = training_target(config.parameterization, x, eps, logsnr)
    out = net(z_t, logsnr, image_mask)
    return (out.float() - target).pow(2).mean()
