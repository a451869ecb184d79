"""The cosine log-SNR schedule, the eps / v / x parameterisations, q_sample, the loss, and seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vdgen.config import DiffusionConfig
from vdgen.diffusion import (
    denoising_loss,
    Denoiser,
    eps_from_x,
    prediction_to_x,
    q_sample,
    training_loss,
    training_target,
    v_from_x_eps,
    x_from_eps,
    x_from_v,
)
from vdgen.errors import ConfigError
from vdgen.generate import sample_videos
from vdgen.sampling import SAMPLERS, sample
from vdgen.schedule import (
    LOGSNR_MAX,
    LOGSNR_MIN,
    alpha_sigma,
    logsnr_grid,
    logsnr_schedule_cosine,
    t_from_logsnr,
    uniform_time_grid,
)

LOGSNRS = [-20.0, -12.0, -3.0, 0.0, 2.5, 9.0, 20.0]


def f64(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def column(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).view(-1, 1, 1, 1, 1)


# ------------------------------------------------------------------------------------------ schedule


def test_variance_preserving():
    logsnr = torch.linspace(-20, 20, 401, dtype=torch.float64)
    alpha, sigma = alpha_sigma(logsnr)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(logsnr), atol=1e-12, rtol=0)
    # lambda = log(alpha^2 / sigma^2)
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), logsnr, atol=1e-9, rtol=0)
    assert alpha.dtype == sigma.dtype == torch.float64


def test_endpoints_are_the_clipping_values_and_finite():
    assert (LOGSNR_MIN, LOGSNR_MAX) == (-20.0, 20.0)
    ends = logsnr_schedule_cosine(torch.tensor([0.0, 1.0]))
    assert ends.dtype == torch.float64
    assert torch.isfinite(ends).all()
    assert ends[0].item() == pytest.approx(20.0, abs=1e-9)
    assert ends[1].item() == pytest.approx(-20.0, abs=1e-9)
    # Outside [0, 1] the schedule stays clipped rather than reaching an infinity.
    outside = logsnr_schedule_cosine(torch.tensor([-0.5, 1.5]))
    assert torch.isfinite(outside).all() and outside.max() <= 20.0 + 1e-9 and outside.min() >= -20.0 - 1e-9


def test_cosine_shape():
    # tan(a t + b) is symmetric about t = 1/2 because atan(x) + atan(1/x) = pi / 2.
    assert logsnr_schedule_cosine(torch.tensor(0.5)).item() == pytest.approx(0.0, abs=1e-9)
    b = math.atan(math.exp(-10.0))
    a = math.atan(math.exp(10.0)) - b
    for t in (0.1, 0.25, 0.9):
        logsnr = logsnr_schedule_cosine(torch.tensor(t, dtype=torch.float64)).item()
        assert logsnr == pytest.approx(-2 * math.log(math.tan(a * t + b)), abs=1e-9)
        assert logsnr == pytest.approx(-logsnr_schedule_cosine(torch.tensor(1 - t, dtype=torch.float64)).item(), abs=1e-9)


def test_monotone_decreasing():
    logsnr = logsnr_schedule_cosine(torch.linspace(0, 1, 10_001, dtype=torch.float64))
    assert (logsnr[1:] < logsnr[:-1]).all()


def test_t_from_logsnr_is_the_inverse():
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(t_from_logsnr(logsnr_schedule_cosine(t)), t, atol=1e-9, rtol=0)
    logsnr = torch.linspace(-20, 20, 1001, dtype=torch.float64)
    torch.testing.assert_close(logsnr_schedule_cosine(t_from_logsnr(logsnr)), logsnr, atol=1e-7, rtol=0)


def test_time_grids():
    grid = uniform_time_grid(4)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    lam = logsnr_grid(8)
    assert lam.shape == (9,) and lam.dtype == torch.float64
    assert lam[0].item() == pytest.approx(-20.0) and lam[-1].item() == pytest.approx(20.0)
    assert (lam[1:] > lam[:-1]).all()
    with pytest.raises(ValueError):
        uniform_time_grid(0)


# ------------------------------------------------------------------------------------------ parameterisations


@pytest.mark.parametrize("logsnr", LOGSNRS)
def test_round_trips_through_eps_and_v(logsnr):
    x, eps = f64(2, 1, 3, 4, 4, seed=1).clamp(-1, 1), f64(2, 1, 3, 4, 4, seed=2)
    alpha, sigma = (c.view(1, 1, 1, 1, 1) for c in alpha_sigma(torch.tensor([logsnr])))
    z = alpha * x + sigma * eps
    # x -> eps -> x
    eps_back = eps_from_x(z, x, alpha, sigma)
    torch.testing.assert_close(eps_back, eps, atol=1e-9, rtol=0)
    torch.testing.assert_close(x_from_eps(z, eps_back, alpha, sigma), x, atol=1e-9, rtol=0)
    # x -> v -> x, and v = alpha eps - sigma x
    v = v_from_x_eps(x, eps, alpha, sigma)
    torch.testing.assert_close(v, alpha * eps - sigma * x, atol=0, rtol=0)
    torch.testing.assert_close(x_from_v(z, v, alpha, sigma), x, atol=1e-12, rtol=0)
    # and eps = sigma z + alpha v
    torch.testing.assert_close(sigma * z + alpha * v, eps, atol=1e-12, rtol=0)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x"])
def test_prediction_to_x_inverts_the_training_target(parameterization):
    x, eps = f64(3, 1, 2, 4, 4, seed=3).clamp(-1, 1), f64(3, 1, 2, 4, 4, seed=4)
    logsnr = torch.tensor([-7.0, 0.5, 11.0], dtype=torch.float64)  # one per sample
    z = q_sample(x, logsnr, eps)
    target = training_target(parameterization, x, eps, logsnr)
    torch.testing.assert_close(prediction_to_x(parameterization, z, target, logsnr), x, atol=1e-9, rtol=0)


def test_training_targets():
    x, eps = f64(3, 1, 2, 4, 4, seed=5), f64(3, 1, 2, 4, 4, seed=6)
    logsnr = torch.tensor([-4.0, 0.0, 6.0], dtype=torch.float64)
    alpha = column(torch.sigmoid(logsnr).sqrt())
    sigma = column(torch.sigmoid(-logsnr).sqrt())
    torch.testing.assert_close(training_target("v", x, eps, logsnr), alpha * eps - sigma * x, atol=1e-12, rtol=0)
    assert torch.equal(training_target("eps", x, eps, logsnr), eps)
    assert torch.equal(training_target("x", x, eps, logsnr), x)


def test_q_sample_statistics():
    # x = 0.5 everywhere: z_t has mean alpha_t * 0.5 and standard deviation sigma_t, per sample.
    logsnr = torch.tensor([-3.0, 0.0, 4.0], dtype=torch.float64)
    x = torch.full((3, 1, 4, 64, 64), 0.5)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    z = q_sample(x, logsnr, eps)
    assert z.dtype == torch.float32
    alpha, sigma = alpha_sigma(logsnr)
    for b in range(3):
        assert z[b].mean().item() == pytest.approx(0.5 * alpha[b].item(), abs=0.02)
        assert z[b].std().item() == pytest.approx(sigma[b].item(), rel=0.02)
    # The clean and the noisy end (sigma, resp. alpha, is 4.5e-5 there).
    ends = q_sample(x[:2], torch.tensor([20.0, -20.0], dtype=torch.float64), eps[:2])
    torch.testing.assert_close(ends[0], x[0], atol=5e-4, rtol=0)
    torch.testing.assert_close(ends[1], eps[1], atol=5e-4, rtol=0)


class OracleNet(torch.nn.Module):
    """A fake network that knows the clean x and outputs the exact training target for z_t."""

    def __init__(self, x: torch.Tensor, parameterization: str):
        super().__init__()
        self.x, self.parameterization = x, parameterization
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, z_t, logsnr, image_mask=None):
        self.calls.append((logsnr, image_mask))
        alpha, sigma = (column(c) for c in alpha_sigma(logsnr))
        eps = (z_t - alpha * self.x) / sigma
        return training_target(self.parameterization, self.x, eps, logsnr)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x"])
@pytest.mark.parametrize("logsnr", LOGSNRS)
def test_denoiser_recovers_x_from_the_exact_target(parameterization, logsnr):
    x, eps = f64(2, 1, 3, 4, 4, seed=8).clamp(-1, 1), f64(2, 1, 3, 4, 4, seed=9)
    mask = torch.tensor([False, False, True])
    net = OracleNet(x, parameterization)
    denoiser = Denoiser(net, DiffusionConfig(parameterization=parameterization), image_mask=mask)
    logsnr_b = torch.full((2,), logsnr, dtype=torch.float64)
    z = q_sample(x, logsnr_b, eps)
    torch.testing.assert_close(denoiser(z, logsnr_b), x, atol=1e-8, rtol=0)
    # A scalar log-SNR is broadcast to the batch; the image mask reaches the network.
    torch.testing.assert_close(denoiser(z, torch.tensor(logsnr, dtype=torch.float64)), x, atol=1e-8, rtol=0)
    seen_logsnr, seen_mask = net.calls[-1]
    assert seen_logsnr.shape == (2,) and seen_logsnr.dtype == torch.float64
    assert seen_mask is mask


@pytest.mark.parametrize("parameterization", ["eps", "v", "x"])
def test_training_loss_is_zero_for_the_oracle_and_positive_otherwise(parameterization):
    x = f64(4, 1, 2, 4, 4, seed=10).clamp(-1, 1)
    config = DiffusionConfig(parameterization=parameterization)
    net = OracleNet(x, parameterization)
    mask = torch.tensor([[False, True]] * 4)
    loss = training_loss(net, config, x, torch.Generator().manual_seed(0), image_mask=mask)
    assert loss.ndim == 0 and loss.item() < 1e-10
    logsnr, seen_mask = net.calls[-1]
    assert seen_mask is mask
    assert logsnr.shape == (4,) and logsnr.dtype == torch.float64
    assert (logsnr >= -20).all() and (logsnr <= 20).all() and len(set(logsnr.tolist())) == 4  # t drawn per sample

    class ZeroNet(torch.nn.Module):
        def forward(self, z_t, logsnr, image_mask=None):
            return torch.zeros_like(z_t)

    first = training_loss(ZeroNet(), config, x, torch.Generator().manual_seed(1))
    again = training_loss(ZeroNet(), config, x, torch.Generator().manual_seed(1))
    assert first.item() > 0.01 and first.item() == again.item()  # deterministic per generator


def test_denoising_loss_at_fixed_t_and_noise_is_the_v_mse_in_closed_form():
    class ZeroNet(torch.nn.Module):
        def forward(self, z_t, logsnr, image_mask=None):
            return torch.zeros_like(z_t)

    x, eps = f64(3, 1, 2, 4, 4, seed=11), f64(3, 1, 2, 4, 4, seed=12)
    logsnr = torch.tensor([-3.0, 0.0, 4.0], dtype=torch.float64)
    alpha = torch.sigmoid(logsnr).sqrt().reshape(-1, 1, 1, 1, 1)
    sigma = torch.sigmoid(-logsnr).sqrt().reshape(-1, 1, 1, 1, 1)
    expected = (alpha * eps - sigma * x).pow(2).mean()  # v = alpha eps - sigma x against a zero output
    loss = denoising_loss(ZeroNet(), DiffusionConfig(parameterization="v"), x, logsnr, eps)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_training_loss_draws_t_uniformly():
    class Recorder(torch.nn.Module):
        logsnr = None

        def forward(self, z_t, logsnr, image_mask=None):
            Recorder.logsnr = logsnr
            return torch.zeros_like(z_t)

    x = torch.zeros(4096, 1, 1, 1, 1)
    training_loss(Recorder(), DiffusionConfig(), x, torch.Generator().manual_seed(2))
    t = t_from_logsnr(Recorder.logsnr).numpy()
    # U[0, 1]: mean 1/2, and each quarter holds about a quarter of the draws.
    assert abs(t.mean() - 0.5) < 0.02
    counts = np.histogram(t, bins=4, range=(0, 1))[0] / len(t)
    assert np.all(np.abs(counts - 0.25) < 0.03)


# ------------------------------------------------------------------------------------------ seeds


def test_sample_videos_depends_on_the_seed_not_the_batch(make_net, tiny_config):
    net = make_net()
    args = (net, tiny_config.model, tiny_config.diffusion)
    seeds = [11, 12, 13]
    batched = sample_videos(*args, seeds, steps=3, batch_size=3)
    single = sample_videos(*args, seeds, steps=3, batch_size=1)
    assert batched.shape == (3, 4, 16, 16, 1) and batched.dtype == np.uint8
    assert np.abs(batched.astype(int) - single.astype(int)).max() <= 1  # float kernels may differ by batch size
    assert (batched == single).mean() > 0.999
    alone = sample_videos(*args, [12], steps=3)
    assert np.array_equal(alone[0], single[1])
    assert not np.array_equal(batched[0], batched[1])
    assert not net.training  # the network's mode is restored (it was in eval mode)


def test_sample_videos_restores_training_mode_and_checks_options(make_net, tiny_config):
    net = make_net().train()
    sample_videos(net, tiny_config.model, tiny_config.diffusion, [0], steps=1, frames=2)
    assert net.training
    with pytest.raises(ConfigError, match="unknown sampler"):
        sample_videos(net, tiny_config.model, tiny_config.diffusion, [0], steps=1, sampler="euler")
    with pytest.raises(ConfigError, match="--frames"):
        sample_videos(net, tiny_config.model, tiny_config.diffusion, [0], steps=1, frames=34)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampling_with_the_network_depends_on_the_seed_not_the_batch(name, make_net, tiny_config):
    denoiser = Denoiser(make_net(), tiny_config.diffusion)
    shape = (3, 1, 3, 16, 16)
    with torch.no_grad():
        batched = sample(name, denoiser, shape, 3, [5, 6, 7])
        for i, seed in enumerate([5, 6, 7]):
            alone = sample(name, denoiser, (1, *shape[1:]), 3, [seed])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)
    assert (batched[0] - batched[1]).abs().max() > 0.1
