"""Reconstruction guidance vs replacement on analytic AR(1) video, window plans, extend and interpolate."""

import pytest
import torch
import torch.nn.functional as F

from vdgen import guidance
from vdgen.errors import ConfigError
from vdgen.guidance import (
    DEFAULT_W_R,
    extend,
    interpolate,
    make_conditional_denoiser,
    plan_extension,
    plan_interpolation,
)
from vdgen.sampling import SAMPLERS, randn_per_sample, sample
from vdgen.schedule import alpha_sigma

RHO, S = 0.9, 0.5  # per-pixel AR(1) over frames, marginal std S; pixels independent across space


def ar1_covariance(frames):
    index = torch.arange(frames, dtype=torch.float64)
    return S**2 * RHO ** (index[:, None] - index[None, :]).abs()


def ar1_denoiser(z_t, logsnr):
    """E[x | z_t] = alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 z_t over the frame axis, for any frame count."""
    sigma_x = ar1_covariance(z_t.shape[2])
    alpha, sigma = (c[:, None, None] for c in alpha_sigma(logsnr))
    eye = torch.eye(len(sigma_x), dtype=torch.float64)
    m = alpha * sigma_x @ torch.linalg.inv(alpha**2 * sigma_x + sigma**2 * eye)
    return torch.einsum("bfg,bcghw->bcfhw", m.to(z_t.dtype), z_t)


def ar1_video(frames, height, width, seed):
    """x ~ N(0, Sigma) [1, 1, frames, height, width]."""
    chol = torch.linalg.cholesky(ar1_covariance(frames))
    white = torch.randn(frames, height * width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (chol @ white).float().view(1, 1, frames, height, width)


def gens(seed):
    return [torch.Generator().manual_seed(seed)]


FRAMES, KNOWN = 8, [0, 1]  # extension-like: 2 context frames, 6 to generate
UNKNOWN = [f for f in range(FRAMES) if f not in KNOWN]


def conditional_errors(method, sampler, w_r=DEFAULT_W_R):
    """(RMSE of samples to E[x^b | x^a], RMSE of their fitted mean response to x^a against it)."""
    x = ar1_video(FRAMES, 32, 32, seed=0)
    mask = torch.zeros(1, 1, FRAMES, 1, 1, dtype=torch.bool)
    mask[:, :, KNOWN] = True
    cond = make_conditional_denoiser(ar1_denoiser, x, mask, method=method, w_r=w_r, generators=gens(1))
    out = sample(sampler, cond, x.shape, 64, [2], clip=False)
    assert torch.equal(out[:, :, KNOWN], x[:, :, KNOWN])
    sigma_x = ar1_covariance(FRAMES)
    gain = sigma_x[UNKNOWN][:, KNOWN] @ torch.linalg.inv(sigma_x[KNOWN][:, KNOWN])  # Sigma_ba Sigma_aa^-1
    x_a = x[0, 0, KNOWN].reshape(len(KNOWN), -1).double().T  # one row per pixel
    x_b = out[0, 0, UNKNOWN].reshape(len(UNKNOWN), -1).double().T
    exact = x_a @ gain.T
    # Least squares of x^b on x^a over pixels: the sampler's mean response to x^a (sample noise averaged out).
    fitted = x_a @ torch.linalg.lstsq(x_a, x_b).solution
    return (x_b - exact).square().mean().sqrt().item(), (fitted - exact).square().mean().sqrt().item()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_guidance_beats_replacement_and_a_mean_does_not(sampler, monkeypatch):
    # Measured (RMSE to E[x^b|x^a], error of the mean response), w_r = 5, 64 steps; an exact conditional
    # sampler would score (0.350, 0.000):
    #   ancestral  guidance 0.322 0.057 | replacement 0.449 0.203 | averaged 0.449 0.202
    #   pc         guidance 0.318 0.067 | replacement 0.428 0.182 | averaged 0.428 0.182
    #   ddim       guidance 0.349 0.092 | replacement 0.494 0.250 | averaged 0.494 0.250
    #   dpm++      guidance 0.358 0.091 | replacement 0.503 0.250 | averaged 0.503 0.249
    guided = conditional_errors("guidance", sampler)
    replaced = conditional_errors("replacement", sampler)
    monkeypatch.setattr(guidance, "_reconstruction_error", lambda residual: residual.square().mean())
    averaged = conditional_errors("guidance", sampler)
    print(f"{sampler}: guidance {guided}, replacement {replaced}, averaged {averaged}")
    assert guided[0] < 0.85 * replaced[0] and guided[1] < 0.5 * replaced[1]
    assert not averaged[0] < 0.85 * replaced[0] and not averaged[1] < 0.5 * replaced[1]


def test_guidance_matches_eq7_by_hand():
    # For the linear AR(1) denoiser x_hat = M z: grad_{z^b} ||x^a - x^a_hat||^2 = -2 M_ab^T (x^a - x^a_hat).
    shape, known = (1, 1, 3, 1, 2), [0]
    x_a = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    z_t = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([True, False, False]).view(1, 1, 3, 1, 1)
    logsnr = torch.tensor([0.5], dtype=torch.float64)
    cond = make_conditional_denoiser(ar1_denoiser, x_a, mask, w_r=3.0, generators=gens(2))
    with torch.no_grad():
        out = cond(z_t, logsnr)
    alpha, sigma = (c.item() for c in alpha_sigma(logsnr))
    z = torch.where(mask, alpha * x_a + sigma * randn_per_sample(shape, gens(2)), z_t)
    sigma_x = ar1_covariance(3)
    m = (alpha * sigma_x @ torch.linalg.inv(alpha**2 * sigma_x + sigma**2 * torch.eye(3, dtype=torch.float64))).float()
    x_hat = torch.einsum("fg,bcghw->bcfhw", m, z)
    residual = (x_a - x_hat)[:, :, known]
    expected_b = x_hat[:, :, 1:] + 3.0 * alpha * torch.einsum("gf,bcghw->bcfhw", m[known][:, 1:], residual)
    torch.testing.assert_close(out[:, :, 1:], expected_b)
    assert torch.equal(out[:, :, known], x_a[:, :, known])


def test_spatial_guidance_pulls_the_downsampled_sample_to_x_a():
    downsample = lambda v: F.avg_pool3d(v, (1, 2, 2))  # noqa: E731
    x = ar1_video(4, 32, 32, seed=3)
    x_a = downsample(x)
    known = torch.ones(1, 1, 1, 1, 1, dtype=torch.bool)
    cond = make_conditional_denoiser(ar1_denoiser, x_a, known, generators=gens(4), spatial_downsample=downsample)
    free = sample("ancestral", ar1_denoiser, x.shape, 64, [5], clip=False)
    guided = sample("ancestral", cond, x.shape, 64, [5], clip=False)
    free_error = (downsample(free) - x_a).square().mean().sqrt().item()
    guided_error = (downsample(guided) - x_a).square().mean().sqrt().item()
    assert guided_error < 0.05 * free_error
    assert 0.8 * S < guided.std().item() < 1.1 * S  # the detail it adds is still a sample, not a blur


def test_guidance_needs_no_outer_grad_and_leaves_none():
    x = ar1_video(4, 4, 4, seed=0)
    mask = torch.tensor([True, False, False, False]).view(1, 1, 4, 1, 1)
    cond = make_conditional_denoiser(ar1_denoiser, x, mask, generators=gens(0))
    out = sample("ddim", cond, x.shape, 4, [0])
    assert not out.requires_grad


def test_conditional_denoiser_errors():
    x, mask = torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 1, 1, dtype=torch.bool)
    with pytest.raises(ConfigError, match="unknown conditioning method"):
        make_conditional_denoiser(ar1_denoiser, x, mask, method="inpaint", generators=gens(0))
    with pytest.raises(ConfigError, match="spatial"):
        make_conditional_denoiser(
            ar1_denoiser, x, mask, method="replacement", generators=gens(0), spatial_downsample=lambda v: v
        )


def check_plan(plan, n_out, first_new):
    generated = [f for w in plan for f in w.generated]
    if first_new is not None:
        assert sorted(generated) == list(range(first_new, n_out))
    assert len(generated) == len(set(generated))
    done = set(range(n_out)) - set(generated)
    for w in plan:
        assert list(w.frames) == list(range(w.frames[0], w.frames[-1] + 1))
        assert set(w.known) | set(w.generated) == set(w.frames) and not set(w.known) & set(w.generated)
        assert set(w.known) <= done  # known = given, or generated by an earlier window
        done |= set(w.generated)
    return generated


@pytest.mark.parametrize("n_given,n_total", [(3, 20), (5, 13), (2, 8), (4, 4), (6, 31)])
def test_plan_extension(n_given, n_total):
    window, context = 8, 2
    plan = plan_extension(n_given, n_total, window, context)
    check_plan(plan, n_total, n_given)
    for w in plan:
        assert len(w.frames) == window
        assert len(w.known) >= context and max(w.known) < min(w.generated)


def test_plan_extension_layout():
    plan = plan_extension(3, 20, 8, 2)
    assert [(w.frames[0], w.known, w.generated[0], w.generated[-1]) for w in plan] == [
        (1, (1, 2), 3, 8),
        (7, (7, 8), 9, 14),
        (12, (12, 13, 14), 15, 19),  # the last window is shifted back to stay 8 frames long
    ]


def test_plan_extension_short_clip_and_short_output():
    plan = plan_extension(1, 10, 8, 2)  # a clip shorter than the context is used whole
    assert plan[0].known == (0,) and plan[0].generated == tuple(range(1, 8))
    check_plan(plan, 10, 1)
    assert [len(w.frames) for w in plan_extension(2, 5, 8, 2)] == [5]  # the whole output fits in one window


@pytest.mark.parametrize(
    "args,message",
    [
        ((5, 3, 8, 2), "--frames 3 must be at least the clip's 5 frames"),
        ((0, 3, 8, 2), "no frames"),
        ((4, 9, 8, 8), "smaller than the window"),
        ((4, 9, 8, 0), "at least 1 frame"),
    ],
)
def test_plan_extension_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        plan_extension(*args)


@pytest.mark.parametrize("n_given,factor,window", [(5, 4, 16), (9, 3, 16), (2, 2, 16), (7, 2, 5), (6, 5, 11)])
def test_plan_interpolation(n_given, factor, window):
    n_out = (n_given - 1) * factor + 1
    plan = plan_interpolation(n_given, factor, window)
    generated = check_plan(plan, n_out, None)
    assert sorted(generated) == [f for f in range(n_out) if f % factor]
    for previous, current in zip(plan, plan[1:]):
        assert previous.frames[-1] in current.known and previous.frames[-1] % factor == 0  # overlap on a known frame
    for w in plan:
        assert w.frames[-1] % factor == 0 and w.frames[-1] in w.known  # each window ends on a given frame
        assert len(w.frames) <= window
        # every generated frame has a given frame on both sides inside the window
        assert all(f - f % factor in w.frames and f - f % factor + factor in w.frames for f in w.generated)
    for w in plan[1:]:
        assert len(w.frames) == min(window, n_out)


def test_plan_interpolation_layout():
    plan = plan_interpolation(5, 4, 16)
    assert [(w.frames[0], w.frames[-1], w.generated) for w in plan] == [
        (0, 12, (1, 2, 3, 5, 6, 7, 9, 10, 11)),
        (1, 16, (13, 14, 15)),  # the short last stretch gets a full window, padded with known frames
    ]


def test_plan_interpolation_errors():
    with pytest.raises(ConfigError, match="at least 2 frames"):
        plan_interpolation(1, 2, 16)
    with pytest.raises(ConfigError, match="factor must be at least 2"):
        plan_interpolation(4, 1, 16)
    with pytest.raises(ConfigError, match="needs at least factor"):
        plan_interpolation(4, 8, 8)


def clip_frames(frames, seed=0):
    return ar1_video(frames, 4, 4, seed)[0].clamp(-1, 1).repeat(2, 1, 1, 1)  # [C=2, F, 4, 4]


@pytest.mark.parametrize("method", ["guidance", "replacement"])
def test_extend_keeps_given_frames_and_stays_in_windows(method):
    frames = clip_frames(3)
    seen, calls = [], []

    def spy(z_t, logsnr):
        seen.append(z_t.shape[2])
        return ar1_denoiser(z_t, logsnr)

    out = extend(
        spy, frames, 11, window=6, context=2, method=method, steps=4, seed=7, callback=lambda *a: calls.append(a)
    )
    assert out.shape == (2, 11, 4, 4)
    assert torch.equal(out[:, :3], frames)
    assert set(seen) == {6}
    n_windows = len(plan_extension(3, 11, 6, 2))
    assert calls == [(w, n_windows, s, 4) for w in range(n_windows) for s in range(1, 5)]
    assert torch.equal(out, extend(ar1_denoiser, frames, 11, window=6, context=2, method=method, steps=4, seed=7))
    assert not torch.equal(out, extend(ar1_denoiser, frames, 11, window=6, context=2, method=method, steps=4, seed=8))


def test_extend_to_the_clip_length_returns_the_clip():
    frames = clip_frames(3)
    assert torch.equal(extend(ar1_denoiser, frames, 3, window=6, context=2, seed=0), frames)


def test_extend_errors():
    with pytest.raises(ConfigError, match="--frames 2 must be at least the clip's 3 frames"):
        extend(ar1_denoiser, clip_frames(3), 2, window=6, context=2, seed=0)
    with pytest.raises(ConfigError, match=r"\[C, F, H, W\]"):
        extend(ar1_denoiser, clip_frames(3)[None], 8, window=6, context=2, seed=0)
    with pytest.raises(ConfigError, match="unknown sampler"):
        extend(ar1_denoiser, clip_frames(3), 8, window=6, context=2, seed=0, sampler="euler")


@pytest.mark.parametrize("sampler", ["ancestral", "pc", "ddim", "dpm++"])
def test_interpolate_keeps_given_frames(sampler):
    frames = clip_frames(4)
    out = interpolate(ar1_denoiser, frames, 3, window=7, sampler=sampler, steps=4, seed=1)
    assert out.shape == (2, 10, 4, 4)
    assert torch.equal(out[:, ::3], frames)
    assert torch.isfinite(out).all()
