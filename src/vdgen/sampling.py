"""Samplers for continuous-time Gaussian diffusion (VDM section 2): pure functions over a denoiser.

Every sampler shares one signature,
    sample_<name>(denoiser, shape, logsnrs, generators, *, clip=True, callback=None, device="cpu", ...)
and walks the log-SNR grid `logsnrs` (float64 [steps + 1], increasing from LOGSNR_MIN to LOGSNR_MAX, as
`schedule.logsnr_grid(steps)` gives) from noise to data. A step goes from t (logsnrs[i]) to s
(logsnrs[i + 1]); the last step returns the x_hat of its evaluation instead of moving z to the clean
end. The denoiser returns x_hat = E[x | z_t] [B, C, F, H, W]; with `clip` it is clamped to [-1, 1]
before use, and eps_hat is always recomputed from that x_hat as (z_t - alpha_t x_hat) / sigma_t.
Randomness comes only from `generators`, one per sample, so a sample depends on its seed alone and
never on the batch it is drawn in. Progress is reported only through `callback(step, total)`,
called after each step with step = 1 .. total.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vdgen.errors import ConfigError
from vdgen.schedule import alpha_sigma, logsnr_grid

Denoiser = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int], None]

# The paper's UCF101 setting; BAIR and Kinetics-600 used 0.0, the text-to-video models 0.3.
DEFAULT_GAMMA = 0.1
# Langevin step size of the predictor-corrector sampler (paper, section 2).
DEFAULT_DELTA = 0.1
# The samplers' noise options, each sampler's keyword and the values that make sense: gamma in
# [0, 1] interpolates between two variances, delta in (0, MAX_DELTA] is a Langevin step.
NOISE_OPTIONS = {"ancestral": ("gamma",), "pc": ("gamma", "delta")}
MAX_DELTA = 2.0


def randn_per_sample(
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    device: torch.device | str = "cpu",
    out: Tensor | None = None,
) -> Tensor:
    """Standard normal noise [B, ...] (float32), sample i drawn from generators[i] alone; fills `out` if given."""
    if len(generators) != shape[0]:
        raise ConfigError(f"need one generator per sample: got {len(generators)} for a batch of {shape[0]}")
    if out is None:
        out = torch.empty(tuple(shape), dtype=torch.float32, device=device)
    for noise_i, generator in zip(out, generators):
        if generator.device == noise_i.device:
            noise_i.normal_(generator=generator)
        else:
            drawn = torch.empty(noise_i.shape, dtype=noise_i.dtype, device=generator.device)
            noise_i.copy_(drawn.normal_(generator=generator))
    return out


def _check_grid(shape: Sequence[int], logsnrs: Tensor, generators: Sequence[torch.Generator]) -> None:
    if logsnrs.ndim != 1 or logsnrs.numel() < 2:
        raise ConfigError("logsnrs must be a 1-D grid of at least 2 log-SNRs (steps + 1)")
    if not bool((logsnrs[1:] > logsnrs[:-1]).all()):
        raise ConfigError("logsnrs must increase from noise (LOGSNR_MIN) to data (LOGSNR_MAX)")
    if len(generators) != shape[0]:
        raise ConfigError(f"need one generator per sample: got {len(generators)} for a batch of {shape[0]}")


def _alpha_sigma(logsnr: float) -> tuple[float, float]:
    """alpha and sigma of one grid point as float64 Python scalars (one value for the whole batch)."""
    alpha, sigma = alpha_sigma(torch.tensor(logsnr, dtype=torch.float64))
    return alpha.item(), sigma.item()


def _predict(denoiser: Denoiser, z_t: Tensor, logsnr: float, clip: bool) -> Tensor:
    """x_hat(z_t) [B, C, F, H, W] with the step's log-SNR given per sample, optionally clipped to [-1, 1]."""
    logsnr_b = torch.full((z_t.shape[0],), logsnr, dtype=torch.float64, device=z_t.device)
    x_hat = denoiser(z_t, logsnr_b).to(z_t.dtype)
    assert x_hat.shape == z_t.shape, f"denoiser returned {tuple(x_hat.shape)} for z_t {tuple(z_t.shape)}"
    return x_hat.clamp(-1.0, 1.0) if clip else x_hat


# step(z, x_hat, lambda_t, lambda_s) moves z from z_t to z_s in place.
Step = Callable[[Tensor, Tensor, float, float], None]


def _integrate(
    denoiser: Denoiser,
    shape: Sequence[int],
    logsnrs: Tensor,
    generators: Sequence[torch.Generator],
    clip: bool,
    callback: Callback | None,
    device: torch.device | str,
    step: Step,
) -> Tensor:
    """The loop all samplers share: z_1 ~ N(0, I), then x_hat(z_t) and `step` to z_s; returns the last x_hat."""
    _check_grid(shape, logsnrs, generators)
    lambdas = logsnrs.double().tolist()
    steps = len(lambdas) - 1
    with torch.no_grad():
        # z_1 ~ N(0, I): at LOGSNR_MIN alpha_1 is 4.5e-5, so the data contributes nothing.
        z = randn_per_sample(shape, generators, device)
        for i in range(steps):
            x_hat = _predict(denoiser, z, lambdas[i], clip)
            # The last step returns x_hat rather than moving z to the clean end.
            if i < steps - 1:
                step(z, x_hat, lambdas[i], lambdas[i + 1])
            if callback is not None:
                callback(i + 1, steps)
    return x_hat


def _ancestral_step(
    denoiser: Denoiser,
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    clip: bool,
    device: torch.device | str,
    gamma: float,
    delta: float | None,
) -> Step:
    """The ancestral step, followed by one Langevin corrector step when delta is set."""
    noise = torch.empty(tuple(shape), dtype=torch.float32, device=device)

    def step(z: Tensor, x_hat: Tensor, lambda_t: float, lambda_s: float) -> None:
        (alpha_t, sigma_t), (alpha_s, sigma_s) = _alpha_sigma(lambda_t), _alpha_sigma(lambda_s)
        # Predictor: mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x_hat, r = exp(lambda_t - lambda_s).
        r = math.exp(lambda_t - lambda_s)
        one_minus_r = -math.expm1(lambda_t - lambda_s)
        # Variance interpolated in log space between the posterior and the forward-process variance.
        log_var = (1.0 - gamma) * math.log(one_minus_r * sigma_s**2) + gamma * math.log(one_minus_r * sigma_t**2)
        z.mul_(r * alpha_s / alpha_t).add_(x_hat, alpha=one_minus_r * alpha_s)
        z.add_(randn_per_sample(shape, generators, out=noise), alpha=math.exp(0.5 * log_var))
        if delta is not None:
            # Corrector: z_s <- z_s - 0.5 delta sigma_s eps_hat(z_s) + sqrt(delta) sigma_s noise; with
            # eps_hat = (z_s - alpha_s x_hat) / sigma_s that is z_s (1 - delta / 2) + (delta / 2) alpha_s x_hat.
            x_hat_s = _predict(denoiser, z, lambda_s, clip)
            z.mul_(1.0 - 0.5 * delta).add_(x_hat_s, alpha=0.5 * delta * alpha_s)
            z.add_(randn_per_sample(shape, generators, out=noise), alpha=math.sqrt(delta) * sigma_s)

    return step


def sample_ancestral(
    denoiser: Denoiser,
    shape: Sequence[int],
    logsnrs: Tensor,
    generators: Sequence[torch.Generator],
    *,
    clip: bool = True,
    callback: Callback | None = None,
    device: torch.device | str = "cpu",
    gamma: float = DEFAULT_GAMMA,
) -> Tensor:
    """Ancestral sampler with variance interpolation gamma (VDM section 2); returns x_hat [B, C, F, H, W]."""
    step = _ancestral_step(denoiser, shape, generators, clip, device, gamma, None)
    return _integrate(denoiser, shape, logsnrs, generators, clip, callback, device, step)


def sample_pc(
    denoiser: Denoiser,
    shape: Sequence[int],
    logsnrs: Tensor,
    generators: Sequence[torch.Generator],
    *,
    clip: bool = True,
    callback: Callback | None = None,
    device: torch.device | str = "cpu",
    gamma: float = DEFAULT_GAMMA,
    delta: float = DEFAULT_DELTA,
) -> Tensor:
    """Predictor-corrector: ancestral step + one Langevin step (VDM section 2), 2 NFE a step; x_hat [B, C, F, H, W]."""
    if delta <= 0:
        raise ConfigError(f"the Langevin step size delta must be positive, got {delta}")
    step = _ancestral_step(denoiser, shape, generators, clip, device, gamma, delta)
    return _integrate(denoiser, shape, logsnrs, generators, clip, callback, device, step)


def _ddim_step(z: Tensor, x_hat: Tensor, lambda_t: float, lambda_s: float) -> None:
    """z_s = alpha_s x_hat + sigma_s eps_hat, with eps_hat = (z_t - alpha_t x_hat) / sigma_t."""
    (alpha_t, sigma_t), (alpha_s, sigma_s) = _alpha_sigma(lambda_t), _alpha_sigma(lambda_s)
    z.sub_(x_hat, alpha=alpha_t).mul_(sigma_s / sigma_t).add_(x_hat, alpha=alpha_s)


def sample_ddim(
    denoiser: Denoiser,
    shape: Sequence[int],
    logsnrs: Tensor,
    generators: Sequence[torch.Generator],
    *,
    clip: bool = True,
    callback: Callback | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Deterministic DDIM, z_s = alpha_s x_hat + sigma_s eps_hat (VDM section 2); x_hat [B, C, F, H, W]."""
    return _integrate(denoiser, shape, logsnrs, generators, clip, callback, device, _ddim_step)


def _dpmpp_2m_step(shape: Sequence[int], device: torch.device | str) -> Step:
    """The DPM-Solver++(2M) multistep update, keeping the previous x_hat and step size h."""
    x_hat_prev = torch.empty(tuple(shape), dtype=torch.float32, device=device)
    h_prev: float | None = None

    def step(z: Tensor, x_hat: Tensor, lambda_t: float, lambda_s: float) -> None:
        nonlocal h_prev
        (_, sigma_t), (alpha_s, sigma_s) = _alpha_sigma(lambda_t), _alpha_sigma(lambda_s)
        h = 0.5 * (lambda_s - lambda_t)
        # D = (1 + 1/(2r)) x_hat - (1/(2r)) x_hat_prev with r = h_prev / h; the first step is DDIM (D = x_hat).
        half_inv_r = 0.0 if h_prev is None else h / (2.0 * h_prev)
        # z_s = (sigma_s / sigma_t) z_t - alpha_s (exp(-h) - 1) D, with D's two terms added in place.
        c = -alpha_s * math.expm1(-h)
        z.mul_(sigma_s / sigma_t).add_(x_hat, alpha=c * (1.0 + half_inv_r))
        if h_prev is not None:
            z.add_(x_hat_prev, alpha=-c * half_inv_r)
        x_hat_prev.copy_(x_hat)
        h_prev = h

    return step


def sample_dpmpp_2m(
    denoiser: Denoiser,
    shape: Sequence[int],
    logsnrs: Tensor,
    generators: Sequence[torch.Generator],
    *,
    clip: bool = True,
    callback: Callback | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """DPM-Solver++(2M) in half-log-SNR l = lambda / 2 (Lu et al. 2022; VDM section 2); x_hat [B, C, F, H, W]."""
    step = _dpmpp_2m_step(shape, device)
    return _integrate(denoiser, shape, logsnrs, generators, clip, callback, device, step)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ancestral": sample_ancestral,
    "pc": sample_pc,
    "ddim": sample_ddim,
    "dpm++": sample_dpmpp_2m,
}


def noise_options(name: str, given: dict | None = None) -> dict[str, float]:
    """The gamma / delta that sampler `name` runs with: `given` (a subset of NOISE_OPTIONS[name]) over the defaults,
    checked: gamma in [0, 1], delta in (0, MAX_DELTA]."""
    takes = NOISE_OPTIONS.get(name, ())
    given = dict(given or {})
    unknown = sorted(set(given) - set(takes))
    if unknown:
        raise ConfigError(f"sampler {name!r} has no option {unknown[0]!r}")
    defaults = {"gamma": DEFAULT_GAMMA, "delta": DEFAULT_DELTA}
    options = {option: float(given.get(option, defaults[option])) for option in takes}
    if not 0.0 <= options.get("gamma", 0.0) <= 1.0:
        raise ConfigError(f"gamma must be in [0, 1], got {options['gamma']:g}")
    if not 0.0 < options.get("delta", DEFAULT_DELTA) <= MAX_DELTA:
        raise ConfigError(f"delta must be in (0, {MAX_DELTA:g}], got {options['delta']:g}")
    return options


def evals_per_step(name: str) -> int:
    """Network evaluations per step of sampler `name`: 2 for pc (predictor and corrector), else 1."""
    return 2 if name == "pc" else 1


def sample(
    name: str,
    denoiser: Denoiser,
    shape: Sequence[int],
    steps: int,
    seeds_or_generators: Sequence[int | torch.Generator],
    **opts: object,
) -> Tensor:
    """Run sampler `name` on the paper's uniform-in-t grid of `steps` steps, one seed or generator per sample."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    sampler = SAMPLERS[name]
    accepted = inspect.signature(sampler).parameters
    for option in opts:
        if option not in accepted or accepted[option].kind is not inspect.Parameter.KEYWORD_ONLY:
            raise ConfigError(f"sampler {name!r} has no option {option!r}")
    generators = [
        g if isinstance(g, torch.Generator) else torch.Generator().manual_seed(int(g)) for g in seeds_or_generators
    ]
    return sampler(denoiser, tuple(shape), logsnr_grid(steps), generators, **opts)
