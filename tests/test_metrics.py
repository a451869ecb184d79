"""FVD pieces (legacy resize, batched features, Frechet distance) and per-frame PSNR / SSIM."""

import math

import numpy as np
import pytest
import torch

from vdgen.errors import VideoInputError
from vdgen.metrics import (
    frechet_distance,
    fvd_from_features,
    gaussian_statistics,
    i3d_features,
    preprocess_for_i3d,
    psnr,
    resize_bilinear_legacy,
    ssim,
)


def test_resize_uses_tf1_legacy_coordinates():
    # Output i samples input i * in / out with no half-pixel offset: 2 -> 4 gives a, (a+b)/2, b, b
    # (torch's align_corners=False would give a, .75a+.25b, .25a+.75b, b).
    x = torch.tensor([[0.0, 8.0]]).view(1, 1, 2)
    y = resize_bilinear_legacy(x.expand(1, 2, 2).clone(), 2, 4)
    assert y[0, 0].tolist() == [0.0, 4.0, 8.0, 8.0]
    down = resize_bilinear_legacy(torch.arange(16.0).view(1, 4, 4), 2, 2)
    assert down[0].tolist() == [[0.0, 2.0], [8.0, 10.0]]  # every other pixel, starting at 0


def test_preprocess_scales_to_unit_range_and_replicates_gray():
    videos = torch.tensor([0, 255], dtype=torch.uint8).repeat(112).view(1, 1, 1, 224, 1).expand(1, 2, 224, 224, 1)
    x = preprocess_for_i3d(videos.contiguous())
    assert x.shape == (1, 3, 2, 224, 224)
    assert x[0, :, :, :, 0].eq(-1.0).all() and x[0, :, :, :, 1].eq(1.0).all()
    small = preprocess_for_i3d(torch.full((1, 2, 32, 48, 3), 51, dtype=torch.uint8))
    assert small.shape == (1, 3, 2, 224, 224)
    torch.testing.assert_close(small, torch.full_like(small, 2 * 51 / 255 - 1))


class _MeanColourModel(torch.nn.Module):
    """A stand-in for I3D: [B, 3, F, 224, 224] -> [B, 400], a fixed projection of the mean colour."""

    def __init__(self):
        super().__init__()
        self.projection = torch.nn.Parameter(torch.randn(3, 400, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x.mean(dim=(2, 3, 4)) @ self.projection


def _videos(n, frames=4, size=16, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, frames, size, size, channels), dtype=np.uint8)


def test_i3d_features_do_not_depend_on_batching_or_container():
    videos, model = _videos(5), _MeanColourModel()
    calls = []
    whole = i3d_features(videos, model, batch_size=2, progress_callback=lambda done, total: calls.append((done, total)))
    assert whole.shape == (5, 400) and whole.dtype == np.float64
    assert calls == [(2, 5), (4, 5), (5, 5)]
    one_by_one = i3d_features((v for v in videos), model, batch_size=1)
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-5)
    as_tensors = i3d_features([torch.from_numpy(v) for v in videos], model, batch_size=5)
    np.testing.assert_allclose(as_tensors, whole, rtol=1e-5, atol=1e-5)


def test_i3d_features_refuse_mixed_lengths_and_non_uint8():
    model = _MeanColourModel()
    with pytest.raises(VideoInputError, match="one length"):
        i3d_features([_videos(1, frames=4)[0], _videos(1, frames=5)[0]], model, batch_size=4)
    with pytest.raises(VideoInputError, match="uint8"):
        i3d_features(_videos(2).astype(np.float32), model)
    with pytest.raises(VideoInputError, match="C 1 or 3"):
        i3d_features(_videos(2, channels=4), model)


def test_i3d_features_of_the_oracle_clip_are_the_networks_logits(monkeypatch):
    from pathlib import Path

    from vdgen.i3d import kinetics400_labels, load_i3d

    monkeypatch.delenv("VDGEN_WEIGHTS", raising=False)
    frames = np.load(Path(__file__).parent / "data" / "i3d" / "cricket16.npz")["frames"]
    features = i3d_features(frames[None], load_i3d(), batch_size=1)
    assert kinetics400_labels()[int(features[0].argmax())] == "playing cricket"
    assert features[0].max() == pytest.approx(14.947, abs=0.01)


def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 1.0 + 0.0 + 4.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # = 5 + 1 + 1 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == 7.0


def test_frechet_distance_commuting_covariances_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def _sqrtm_denman_beavers(matrix, iterations=60):
    """An independent principal square root of a matrix with positive eigenvalues (no eigendecomposition)."""
    y, z = matrix.copy(), np.eye(len(matrix))
    for _ in range(iterations):
        y, z = (y + np.linalg.inv(z)) / 2, (z + np.linalg.inv(y)) / 2
    return y


def test_frechet_distance_random_spd_matches_independent_square_root():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    s1, s2 = a @ a.T + 0.1 * np.eye(8), b @ b.T + 0.1 * np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    root = _sqrtm_denman_beavers(s1 @ s2)
    np.testing.assert_allclose(root @ root, s1 @ s2, rtol=1e-9, atol=1e-9)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)


def test_fvd_of_a_set_with_itself_is_zero_and_a_shift_is_its_squared_norm():
    # Fewer samples than dimensions: the covariance is rank-deficient, as in real FVD protocols (256 x 400).
    features = np.random.default_rng(3).normal(size=(64, 400)) * 5.0
    assert fvd_from_features(features, features) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(features.T)))
    shift = np.linspace(-1.0, 1.0, 400)
    assert fvd_from_features(features, features + shift) == pytest.approx(shift @ shift, rel=1e-9)


def test_gaussian_statistics_use_the_unbiased_covariance_and_need_two_samples():
    mu, sigma = gaussian_statistics(np.array([[0.0], [2.0]]))
    assert mu.tolist() == [1.0] and sigma.tolist() == [[2.0]]
    with pytest.raises(VideoInputError, match="at least 2"):
        gaussian_statistics(np.zeros((1, 400)))


def test_psnr_hand_values_and_identical_frames():
    target = np.zeros((2, 3, 8, 8, 3), dtype=np.uint8)  # [N, F, H, W, C]
    pred = np.full_like(target, 10)
    pred[1, 2] = 0
    scores = psnr(pred, target)
    assert scores.per_frame.shape == (2, 3)
    assert scores.per_frame[0, 0] == pytest.approx(10 * math.log10(255**2 / 100))  # 28.1308 dB
    assert scores.per_frame[1, 2] == math.inf and scores.mean == math.inf
    assert psnr(target, target).mean == math.inf
    half = psnr(np.full((1, 4, 4, 1), 0.5), np.zeros((1, 4, 4, 1)), data_range=2.0)
    assert half.mean == pytest.approx(10 * math.log10(4 / 0.25))
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
    with pytest.raises(VideoInputError, match="differ in shape"):
        psnr(target, target[:, :2])


def test_ssim_of_identical_frames_is_one_and_constant_frames_have_the_closed_form():
    frames = np.random.default_rng(4).integers(0, 256, (3, 16, 17, 3), dtype=np.uint8)
    scores = ssim(frames, frames)
    np.testing.assert_allclose(scores.per_frame, 1.0, rtol=1e-12)
    assert scores.per_frame.shape == (3,)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)  # variances 0: only the luminance term remains
    constant = ssim(np.full((12, 12, 1), 100, np.uint8), np.full((12, 12, 1), 150, np.uint8))
    assert constant.mean == pytest.approx(expected, rel=1e-12)


def _ssim_brute_force(x, y, data_range=255.0):
    """SSIM from its definition: explicit 11x11 Gaussian windows at every valid position, per channel."""
    offsets = np.arange(11) - 5
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for c in range(x.shape[-1]):
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                px, py = x[i : i + 11, j : j + 11, c], y[i : i + 11, j : j + 11, c]
                mx, my = (window * px).sum(), (window * py).sum()
                vx, vy = (window * (px - mx) ** 2).sum(), (window * (py - my) ** 2).sum()
                cxy = (window * (px - mx) * (py - my)).sum()
                values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_its_definition_and_treats_gray_as_one_channel():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (13, 14, 3), dtype=np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-40, 41, x.shape), 0, 255).astype(np.uint8)
    assert ssim(x, y).mean == pytest.approx(_ssim_brute_force(x.astype(float), y.astype(float)), rel=1e-10)
    gray, noisy = x[..., :1], y[..., :1]
    assert ssim(np.repeat(gray, 3, -1), np.repeat(noisy, 3, -1)).mean == pytest.approx(ssim(gray, noisy).mean)
    with pytest.raises(VideoInputError, match="at least 11x11"):
        ssim(x[:10], y[:10])
