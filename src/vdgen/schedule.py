"""The continuous cosine log-SNR schedule and time grids (VDM section 2), pure and in float64.

t runs from 0 (clean, logsnr = LOGSNR_MAX) to 1 (pure noise, logsnr = LOGSNR_MIN). The schedule is
clipped to [LOGSNR_MIN, LOGSNR_MAX] by construction, so neither end evaluates to an infinity.
Shipped checkpoints depend on these constants: never change them in place.
"""

from __future__ import annotations

import math

import torch

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0

_B = math.atan(math.exp(-LOGSNR_MAX / 2))
_A = math.atan(math.exp(-LOGSNR_MIN / 2)) - _B


def logsnr_schedule_cosine(t: torch.Tensor) -> torch.Tensor:
    """lambda(t) = -2 log tan(a t + b), float64, lambda(0) = LOGSNR_MAX and lambda(1) = LOGSNR_MIN."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return -2.0 * torch.log(torch.tan(_A * t.clamp(0.0, 1.0) + _B))


def t_from_logsnr(logsnr: torch.Tensor) -> torch.Tensor:
    """Inverse of the cosine schedule: t(lambda) = (atan(exp(-lambda / 2)) - b) / a."""
    logsnr = torch.as_tensor(logsnr, dtype=torch.float64)
    return (torch.atan(torch.exp(-logsnr / 2)) - _B) / _A


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance-preserving alpha_t = sqrt(sigmoid(lambda)), sigma_t = sqrt(sigmoid(-lambda))."""
    logsnr = torch.as_tensor(logsnr, dtype=torch.float64)
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def uniform_time_grid(steps: int) -> torch.Tensor:
    """steps + 1 times from t = 1 down to t = 0, uniform in t (the paper's grid), float64."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def logsnr_grid(steps: int) -> torch.Tensor:
    """The log-SNR at each point of the uniform time grid, increasing from LOGSNR_MIN to LOGSNR_MAX."""
    return logsnr_schedule_cosine(uniform_time_grid(steps))
