"""Samplers against the analytic denoiser of Gaussian data, and one step of each checked by hand."""

import math

import pytest
import torch

from vdgen.errors import ConfigError
from vdgen.sampling import SAMPLERS, randn_per_sample, sample, sample_ancestral, sample_ddim, sample_dpmpp_2m
from vdgen.schedule import alpha_sigma, logsnr_grid

MU, S = 0.1, 0.2  # x ~ N(MU, S^2 I), far enough inside [-1, 1] that clipping never matters
SHAPE = (1, 4, 8, 32, 32)  # 32768 independent elements: the std is estimated to about 0.4 %


def gaussian_denoiser(z_t, logsnr):
    """E[x | z_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (z_t - alpha mu) for x ~ N(mu, s^2 I)."""
    alpha, sigma = (c.float().view(-1, 1, 1, 1, 1) for c in alpha_sigma(logsnr))
    return MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (z_t - alpha * MU)


def linear_denoiser(z_t, logsnr):
    return 0.5 * z_t


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_data_reproduced(name):
    x = sample(name, gaussian_denoiser, SHAPE, 256, [0], clip=False)
    assert abs(x.mean().item() - MU) < 0.005
    assert abs(x.std().item() - S) < 0.008


@pytest.mark.parametrize("name", ["ancestral", "pc"])
def test_stochastic_error_shrinks_with_steps(name):
    # Measured std for ancestral: 0.153 / 0.182 / 0.195 at 16 / 64 / 256 steps (true 0.2).
    errors = [abs(sample(name, gaussian_denoiser, SHAPE, n, [1], clip=False).std().item() - S) for n in (16, 64, 256)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.3 * errors[0]


def test_ddim_and_dpmpp_agree_at_many_steps():
    # Both integrate the probability-flow ODE from the same z_1 (same seed). Measured RMS gaps:
    # 0.011 at 64 steps, 0.0028 at 256; DPM-Solver++ at 24 steps is 0.007 from itself at 256.
    def gap(a, b):
        return (a - b).square().mean().sqrt().item()

    ddim = {n: sample("ddim", gaussian_denoiser, SHAPE, n, [2], clip=False) for n in (64, 256)}
    dpm = {n: sample("dpm++", gaussian_denoiser, SHAPE, n, [2], clip=False) for n in (24, 64, 256)}
    assert gap(ddim[256], dpm[256]) < 0.02 * S
    assert gap(ddim[256], dpm[256]) < 0.35 * gap(ddim[64], dpm[64])
    assert gap(dpm[24], dpm[256]) < 0.05 * S
    # second order: at 64 steps DPM-Solver++ is much nearer the 256-step solution than DDIM is
    assert gap(dpm[64], dpm[256]) < 0.3 * gap(ddim[64], dpm[256])


def test_ddim_is_deterministic():
    a = sample("ddim", gaussian_denoiser, (2, 1, 2, 4, 4), 8, [5, 6])
    b = sample("ddim", gaussian_denoiser, (2, 1, 2, 4, 4), 8, [5, 6])
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sample_depends_only_on_its_seed(name):
    shape = (3, 2, 2, 4, 4)
    batch = sample(name, gaussian_denoiser, shape, 6, [10, 11, 12])
    for i, seed in enumerate([10, 11, 12]):
        alone = sample(name, gaussian_denoiser, (1, *shape[1:]), 6, [seed])
        assert torch.equal(batch[i : i + 1], alone)
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_called_once_per_step(name):
    calls = []
    sample(name, gaussian_denoiser, (1, 1, 1, 2, 2), 7, [0], callback=lambda step, total: calls.append((step, total)))
    assert calls == [(i, 7) for i in range(1, 8)]


def test_nfe_per_step():
    counter = []

    def counting(z_t, logsnr):
        counter.append(logsnr[0].item())
        return gaussian_denoiser(z_t, logsnr)

    sample("ancestral", counting, (1, 1, 1, 2, 2), 5, [0])
    assert len(counter) == 5
    counter.clear()
    sample("pc", counting, (1, 1, 1, 2, 2), 5, [0])
    assert len(counter) == 9  # predictor + corrector, no corrector after the last step
    assert counter[1] == counter[2] == logsnr_grid(5)[1].item()  # corrector at s, then predictor at s


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_clip(name):
    def wild(z_t, logsnr):
        return 5.0 * torch.ones_like(z_t)

    seen = []

    def spy(z_t, logsnr):
        seen.append(z_t.abs().max().item())
        return wild(z_t, logsnr)

    clipped = sample(name, spy, (1, 1, 1, 2, 2), 4, [0])
    assert clipped.max().item() == 1.0
    assert sample(name, wild, (1, 1, 1, 2, 2), 4, [0], clip=False).max().item() == 5.0
    assert max(seen) < 5.0  # z never sees the unclipped x_hat


def test_one_step_of_each_by_hand():
    steps, shape = 2, (1, 1, 1, 1, 3)
    lam = logsnr_grid(steps).tolist()
    a = [math.sqrt(1 / (1 + math.exp(-v))) for v in lam]
    s = [math.sqrt(1 / (1 + math.exp(v))) for v in lam]
    noise_gen = torch.Generator().manual_seed(3)
    z1 = randn_per_sample(shape, [noise_gen]).double()
    n1 = randn_per_sample(shape, [noise_gen]).double()
    seen = []

    def spy(z_t, logsnr):
        seen.append(z_t.double().clone())
        return linear_denoiser(z_t, logsnr)

    # DDIM: z_s = alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t, x_hat = z / 2.
    out = sample_ddim(spy, shape, logsnr_grid(steps), gens(3), clip=False)
    x1 = 0.5 * z1
    z_half = a[1] * x1 + s[1] * (z1 - a[0] * x1) / s[0]
    torch.testing.assert_close(seen[1], z_half, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.double(), 0.5 * z_half, rtol=1e-5, atol=1e-6)

    # Ancestral with gamma = 0.3: mean and log-interpolated variance of the paper.
    seen.clear()
    sample_ancestral(spy, shape, logsnr_grid(steps), gens(3), clip=False, gamma=0.3)
    r = math.exp(lam[0] - lam[1])
    mean = r * a[1] / a[0] * z1 + (1 - r) * a[1] * x1
    var = math.exp(0.7 * math.log((1 - r) * s[1] ** 2) + 0.3 * math.log((1 - r) * s[0] ** 2))
    torch.testing.assert_close(seen[1], mean + math.sqrt(var) * n1, rtol=1e-5, atol=1e-6)


def test_dpmpp_second_order_step_by_hand():
    steps, shape = 3, (1, 1, 1, 1, 3)
    lam = logsnr_grid(steps).tolist()
    a = [math.sqrt(1 / (1 + math.exp(-v))) for v in lam]
    s = [math.sqrt(1 / (1 + math.exp(v))) for v in lam]
    z = randn_per_sample(shape, gens(4)).double()
    seen = []

    def spy(z_t, logsnr):
        seen.append(z_t.double().clone())
        return torch.tanh(z_t)  # non-linear, so the second-order term matters

    sample_dpmpp_2m(spy, shape, logsnr_grid(steps), gens(4), clip=False)
    h0, h1 = 0.5 * (lam[1] - lam[0]), 0.5 * (lam[2] - lam[1])
    z_1 = s[1] / s[0] * z - a[1] * math.expm1(-h0) * torch.tanh(z)
    r = h0 / h1
    d = (1 + 1 / (2 * r)) * torch.tanh(z_1) - 1 / (2 * r) * torch.tanh(z)
    z_2 = s[2] / s[1] * z_1 - a[2] * math.expm1(-h1) * d
    torch.testing.assert_close(seen[1], z_1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[2], z_2, rtol=1e-5, atol=1e-6)


def test_samplers_run_without_autograd():
    def check(z_t, logsnr):
        assert not torch.is_grad_enabled()
        return linear_denoiser(z_t, logsnr)

    for name in SAMPLERS:
        sample(name, check, (1, 1, 1, 2, 2), 3, [0])


def test_user_errors():
    with pytest.raises(ConfigError, match="unknown sampler"):
        sample("euler", linear_denoiser, (1, 1, 1, 2, 2), 4, [0])
    with pytest.raises(ConfigError, match="no option 'gamma'"):
        sample("ddim", linear_denoiser, (1, 1, 1, 2, 2), 4, [0], gamma=0.1)
    with pytest.raises(ConfigError, match="one generator per sample"):
        sample("ddim", linear_denoiser, (2, 1, 1, 2, 2), 4, [0])
    with pytest.raises(ConfigError, match="steps"):
        sample("ddim", linear_denoiser, (1, 1, 1, 2, 2), 0, [0])
    with pytest.raises(ConfigError, match="increase"):
        sample_ddim(linear_denoiser, (1, 1, 1, 2, 2), logsnr_grid(4).flip(0), gens(0))


def test_noise_options_match_the_samplers_signatures():
    import inspect

    from vdgen.sampling import NOISE_OPTIONS, SAMPLERS

    for name, sampler in SAMPLERS.items():
        keywords = inspect.signature(sampler).parameters
        assert tuple(k for k in ("gamma", "delta") if k in keywords) == NOISE_OPTIONS.get(name, ()), name


def test_noise_options_fill_in_the_defaults_and_reject_what_a_sampler_does_not_take():
    from vdgen.sampling import DEFAULT_DELTA, DEFAULT_GAMMA, noise_options

    assert noise_options("pc") == {"gamma": DEFAULT_GAMMA, "delta": DEFAULT_DELTA}
    assert noise_options("pc", {"delta": 0.6}) == {"gamma": DEFAULT_GAMMA, "delta": 0.6}
    assert noise_options("ancestral", {"gamma": 1}) == {"gamma": 1.0}
    assert noise_options("ddim", None) == {}
    with pytest.raises(ConfigError, match="sampler 'dpm\\+\\+' has no option 'gamma'"):
        noise_options("dpm++", {"gamma": 0.2})
    with pytest.raises(ConfigError, match="delta must be in \\(0, 2\\], got 5"):
        noise_options("pc", {"delta": 5})
    with pytest.raises(ConfigError, match="delta must be in \\(0, 2\\], got 0"):
        noise_options("pc", {"delta": 0})
    with pytest.raises(ConfigError, match="gamma must be in \\[0, 1\\], got -0.1"):
        noise_options("ancestral", {"gamma": -0.1})
