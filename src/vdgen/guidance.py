"""Conditional sampling with an unconditional model (VDM section 3.1): replacement and reconstruction guidance.

`make_conditional_denoiser` wraps a denoiser so that it samples x^b given known values x^a of the same
window; the wrapper has the denoiser's own signature, so every sampler in `vdgen.sampling` runs with it
unchanged. `plan_extension` / `plan_interpolation` cut a long output into model-sized windows, and
`extend` / `interpolate` run them one window at a time into one preallocated output (memory is flat in
the output length); the given frames are copied into the output unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vdgen.errors import ConfigError
from vdgen.sampling import Denoiser, randn_per_sample, sample
from vdgen.schedule import alpha_sigma

# Reconstruction-guidance weight. w_r = 1 is the plain Gaussian approximation q(x^a | z_t) =
# N(x^a_hat, sigma_t^2 / alpha_t^2 I), far too weak while the noise is high; the paper found w_r > 1
# helps (50 for BAIR, 9 for Kinetics-600). On the analytic AR(1) video of tests/test_guidance.py (64 steps)
# the error of the samples' mean response to x^a against the exact E[x^b | x^a] is smallest near w_r = 5
# for ancestral and predictor-corrector (0.06 vs 0.20 for replacement, data std 0.5) and near 7 for
# DDIM and DPM-Solver++; from 10 up the samples over-correct and lose spread, so the default is 5.
DEFAULT_W_R = 5.0
DEFAULT_STEPS = 64

METHODS = ("guidance", "replacement")


def _reconstruction_error(residual: Tensor) -> Tensor:
    """|| x^a - x^a_hat ||_2^2 summed over the known elements (VDM eq. 7); a mean would divide w_r by their count."""
    return residual.square().sum()


def make_conditional_denoiser(
    denoiser: Denoiser,
    x_a: Tensor,
    mask_a: Tensor,
    *,
    method: str = "guidance",
    w_r: float = DEFAULT_W_R,
    generators: Sequence[torch.Generator],
    spatial_downsample: Callable[[Tensor], Tensor] | None = None,
) -> Denoiser:
    """Denoiser of x^b given x^a: replacement, or reconstruction guidance (VDM eq. 7), same signature as `denoiser`.

    x_a [B, C, F, H, W] holds the known values (anything where unknown), mask_a (bool, broadcastable to
    x_a) is True where known. Both methods overwrite z^a_t with a fresh forward sample alpha_t x^a + sigma_t
    eps before calling the network, and return x_hat with the known part set to x^a exactly. "guidance"
    also moves the unknown part to x~^b = x^b_hat - (w_r alpha_t / 2) grad_{z^b_t} ||x^a - x^a_hat(z_t)||^2,
    the gradient taken through the network (one forward and one backward pass per call).

    Spatial variant (super-resolution): with `spatial_downsample`, x_a is a low-resolution video and
    x^a_hat = spatial_downsample(x_hat) (it must be differentiable, e.g. F.avg_pool3d over H, W);
    mask_a is then broadcast to the low-resolution x_a. Nothing is replaced (no part of z_t corresponds
    to x^a), the gradient is taken w.r.t. all of z_t and the whole x~ is returned. At low noise the
    network is close to the identity, so each call moves the low-resolution residual by about
    w_r / f^2 (area downsampling by f per side): keep w_r below about 2 f^2, or it overshoots.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown conditioning method {method!r}; choose one of {', '.join(METHODS)}")
    if w_r < 0:
        raise ConfigError(f"the guidance weight w_r must be non-negative, got {w_r}")
    if spatial_downsample is not None and method != "guidance":
        raise ConfigError("spatial conditioning needs method 'guidance' (replacement needs full-resolution x^a)")
    x_a = x_a.detach().float()
    mask_a = mask_a.to(device=x_a.device, dtype=torch.bool).expand_as(x_a)

    def conditional(z_t: Tensor, logsnr: Tensor) -> Tensor:
        alpha_t, sigma_t = (c.to(z_t.dtype).view(-1, *[1] * (z_t.ndim - 1)) for c in alpha_sigma(logsnr))
        if spatial_downsample is None:
            # Replacement: z^a_t <- alpha_t x^a + sigma_t eps, a fresh forward sample each call.
            eps = randn_per_sample(z_t.shape, generators, z_t.device)
            z_t = torch.where(mask_a, alpha_t * x_a + sigma_t * eps, z_t)
        if method == "replacement":
            return torch.where(mask_a, x_a, denoiser(z_t, logsnr))
        # Reconstruction guidance: one forward pass with grad, one backward to z_t.
        with torch.enable_grad():
            z_t = z_t.detach().requires_grad_(True)
            x_hat = denoiser(z_t, logsnr)
            x_a_hat = x_hat if spatial_downsample is None else spatial_downsample(x_hat)
            error = _reconstruction_error((x_a - x_a_hat)[mask_a])
            (grad,) = torch.autograd.grad(error, z_t)
        x_tilde = x_hat.detach() - (w_r * alpha_t / 2) * grad
        return x_tilde if spatial_downsample is not None else torch.where(mask_a, x_a, x_tilde)

    return conditional


@dataclass(frozen=True)
class Window:
    """One model-sized window of a long output: absolute frame indices, which are known and which it generates."""

    frames: tuple[int, ...]
    known: tuple[int, ...]
    generated: tuple[int, ...]

    @property
    def known_mask(self) -> tuple[bool, ...]:
        """True at each position of `frames` that is known (given, or generated by an earlier window)."""
        known = set(self.known)
        return tuple(f in known for f in self.frames)


def _window(start: int, end: int, generated: Sequence[int]) -> Window:
    new = set(generated)
    frames = tuple(range(start, end))
    return Window(frames, tuple(f for f in frames if f not in new), tuple(sorted(new)))


def plan_extension(n_given: int, n_total: int, window: int, context: int) -> list[Window]:
    """Windows that extend n_given frames to n_total: each keeps `context` known frames and generates the rest.

    Every window is `window` frames long (or the whole output, if shorter); the last one is shifted back
    onto already-known frames so it stays full length. A clip shorter than `context` is used whole as the
    first window's context (that window then generates window - n_given frames).
    """
    if n_given < 1:
        raise ConfigError("the clip to extend has no frames")
    if n_total < n_given:
        raise ConfigError(f"--frames {n_total} must be at least the clip's {n_given} frames")
    if context < 1:
        raise ConfigError(f"the context must be at least 1 frame, got {context}")
    if context >= window:
        raise ConfigError(f"the context ({context} frames) must be smaller than the window ({window} frames)")
    windows = []
    done = n_given
    while done < n_total:
        end = min(max(done + window - context, window), n_total)
        start = max(0, end - window)
        windows.append(_window(start, end, range(done, end)))
        done = end
    return windows


def plan_interpolation(n_given: int, factor: int, window: int) -> list[Window]:
    """Windows that upsample n_given frames by `factor` in time: output length (n_given - 1) * factor + 1.

    Given frame i lands at i * factor. Each window generates the frames between k = (window - 1) // factor
    consecutive pairs of known frames, ending on a known frame; consecutive windows overlap on that frame,
    and a window is padded backwards with already-known or already-generated frames up to `window` frames
    (so the last, shorter stretch still gets a full-length window). Only the first window can be shorter.
    """
    if n_given < 2:
        raise ConfigError(f"interpolation needs at least 2 frames, got {n_given}")
    if factor < 2:
        raise ConfigError(f"the interpolation factor must be at least 2, got {factor}")
    if window < factor + 1:
        raise ConfigError(f"the window ({window} frames) needs at least factor + 1 = {factor + 1}")
    intervals = (window - 1) // factor
    windows = []
    for first in range(0, n_given - 1, intervals):
        last = min(first + intervals, n_given - 1)
        end = last * factor + 1
        new = [f for f in range(first * factor, end) if f % factor]
        windows.append(_window(max(0, end - window), end, new))
    return windows


def _window_generator(seed: int, window_index: int, stream: str) -> torch.Generator:
    """A generator seeded deterministically from (seed, window index, stream), independent across windows."""
    digest = hashlib.blake2b(f"{seed}:{window_index}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _check_frames(frames: Tensor) -> None:
    if frames.ndim != 4:
        raise ConfigError(f"frames must be [C, F, H, W], got shape {tuple(frames.shape)}")


def _run_windows(
    denoiser: Denoiser,
    out: Tensor,
    plan: list[Window],
    *,
    method: str,
    w_r: float,
    sampler: str,
    steps: int,
    seed: int,
    sampler_opts: dict | None,
    callback: Callable[[int, int, int, int], None] | None,
) -> Tensor:
    """Sample each window of `plan` in turn, conditioned on its known frames of `out`; write its new ones into `out`."""
    channels, _, height, width = out.shape
    for index, win in enumerate(plan):
        frames = torch.tensor(win.frames, device=out.device)
        x_a = out.index_select(1, frames).unsqueeze(0)
        mask_a = torch.tensor(win.known_mask, device=out.device).view(1, 1, -1, 1, 1)
        conditional = make_conditional_denoiser(
            denoiser, x_a, mask_a, method=method, w_r=w_r, generators=[_window_generator(seed, index, "guidance")]
        )
        progress = None if callback is None else (lambda step, total, i=index: callback(i, len(plan), step, total))
        x = sample(
            sampler,
            conditional,
            (1, channels, len(win.frames), height, width),
            steps,
            [_window_generator(seed, index, "sampler")],
            callback=progress,
            device=out.device,
            **(sampler_opts or {}),
        )
        positions = torch.tensor([win.frames.index(f) for f in win.generated], device=out.device)
        out[:, list(win.generated)] = x[0].index_select(1, positions)
    return out


def extend(
    denoiser: Denoiser,
    frames: Tensor,
    n_total: int,
    *,
    window: int,
    context: int,
    method: str = "guidance",
    w_r: float = DEFAULT_W_R,
    sampler: str = "ancestral",
    steps: int = DEFAULT_STEPS,
    seed: int,
    sampler_opts: dict | None = None,
    callback: Callable[[int, int, int, int], None] | None = None,
) -> Tensor:
    """Extend frames [C, F, H, W] in [-1, 1] to [C, n_total, H, W], window by window (VDM section 3.1)."""
    _check_frames(frames)
    plan = plan_extension(frames.shape[1], n_total, window, context)
    out = torch.zeros(frames.shape[0], n_total, *frames.shape[2:], dtype=torch.float32, device=frames.device)
    out[:, : frames.shape[1]] = frames
    return _run_windows(
        denoiser, out, plan, method=method, w_r=w_r, sampler=sampler, steps=steps, seed=seed,
        sampler_opts=sampler_opts, callback=callback,
    )


def interpolate(
    denoiser: Denoiser,
    frames: Tensor,
    factor: int,
    *,
    window: int,
    method: str = "guidance",
    w_r: float = DEFAULT_W_R,
    sampler: str = "ancestral",
    steps: int = DEFAULT_STEPS,
    seed: int,
    sampler_opts: dict | None = None,
    callback: Callable[[int, int, int, int], None] | None = None,
) -> Tensor:
    """Upsample frames [C, F, H, W] in [-1, 1] by `factor` in time to [C, (F - 1) factor + 1, H, W] (VDM sec. 3.1)."""
    _check_frames(frames)
    plan = plan_interpolation(frames.shape[1], factor, window)
    n_out = (frames.shape[1] - 1) * factor + 1
    out = torch.zeros(frames.shape[0], n_out, *frames.shape[2:], dtype=torch.float32, device=frames.device)
    out[:, ::factor] = frames
    return _run_windows(
        denoiser, out, plan, method=method, w_r=w_r, sampler=sampler, steps=steps, seed=seed,
        sampler_opts=sampler_opts, callback=callback,
    )
