"""Evaluation as in the literature: FVD over I3D logits, and per-frame PSNR / SSIM for prediction.

FVD (Unterthiner et al. 2018) follows the reference code (google-research/frechet_video_distance):
uint8 frames -> bilinear resize to 224x224 -> 2 x / 255 - 1 -> I3D logits [N, 400] (the network's
own mean over time, before softmax) -> Frechet distance between the Gaussians fitted to two sets
(unbiased covariance, N - 1, as TF-GAN). Real and generated sets must be preprocessed identically;
report the sample counts with the number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from vdgen.errors import VideoInputError

I3D_SIZE = 224
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

VideoArray = np.ndarray | torch.Tensor
ProgressCallback = Callable[[int, int | None], None]


class FrameScores(NamedTuple):
    """A per-frame score (shape of the leading axes, e.g. [N, F]) and its mean over all frames."""

    per_frame: np.ndarray
    mean: float


def resize_bilinear_legacy(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of frames [..., C, H, W] as TF1 `tf.image.resize_bilinear` (align_corners=False).

    TF1's default maps output pixel i to input coordinate i * in / out (no half-pixel offset, so the
    image shifts by up to half a pixel towards the origin), unlike torch's `interpolate`, which uses
    half-pixel centres. The reference FVD code resizes this way, so FVD numbers need it too.
    """
    in_h, in_w = frames.shape[-2:]
    if (in_h, in_w) == (height, width):
        return frames.float()
    x = frames.float()
    y0, y1, wy = _legacy_taps(in_h, height, x.device)
    x0, x1, wx = _legacy_taps(in_w, width, x.device)
    # The same order of operations as TF's kernel: lerp along width in two rows, then between the rows.
    top, bottom = x[..., y0, :], x[..., y1, :]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * wx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * wx
    return top + (bottom - top) * wy[:, None]


def _legacy_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # TF computes the scale and the source coordinate in float32.
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    source = torch.arange(out_size, dtype=torch.float32) * scale
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower.to(device), upper.to(device), (source - lower.float()).to(device)


def preprocess_for_i3d(videos: torch.Tensor) -> torch.Tensor:
    """uint8 videos [N, F, H, W, C] (C 1 or 3) -> float32 [N, 3, F, 224, 224] in [-1, 1]."""
    _check_uint8_videos(videos, "videos", batched=True)
    x = videos.permute(0, 1, 4, 2, 3)  # [N, F, C, H, W]
    x = resize_bilinear_legacy(x, I3D_SIZE, I3D_SIZE)
    if x.shape[2] == 1:
        x = x.expand(-1, -1, 3, -1, -1)
    x = 2.0 * x / 255.0 - 1.0
    return x.permute(0, 2, 1, 3, 4).contiguous()


def i3d_features(
    videos: VideoArray | Iterable[VideoArray],
    model: torch.nn.Module,
    batch_size: int = 16,
    progress_callback: ProgressCallback | None = None,
) -> np.ndarray:
    """I3D logits [N, 400] (float64) of uint8 videos: an array [N, F, H, W, C] or an iterable of [F, H, W, C].

    All videos must share a frame count (FVD compares clips of one length); frame sizes may differ
    between batches. `progress_callback(done, total)` runs after each batch (total None if unknown).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    total = len(videos) if hasattr(videos, "__len__") else None
    device = next(model.parameters(), torch.empty(0)).device
    features: list[np.ndarray] = []
    frame_count: int | None = None
    done = 0
    batch: list[torch.Tensor] = []

    def flush() -> None:
        nonlocal done
        with torch.no_grad():
            logits = model(preprocess_for_i3d(torch.stack(batch).to(device)))
        features.append(logits.double().cpu().numpy())
        done += len(batch)
        batch.clear()
        if progress_callback is not None:
            progress_callback(done, total)

    for video in videos:
        video = video if isinstance(video, torch.Tensor) else torch.tensor(np.asarray(video))
        _check_uint8_videos(video, f"video {done + len(batch)}", batched=False)
        if frame_count is None:
            frame_count = video.shape[0]
        elif video.shape[0] != frame_count:
            raise VideoInputError(
                f"video {done + len(batch)} has {video.shape[0]} frames, the first had {frame_count}; "
                "FVD compares clips of one length"
            )
        if batch and video.shape != batch[0].shape:
            flush()
        batch.append(video)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(features) if features else np.zeros((0, 400))


def _check_uint8_videos(videos: torch.Tensor, what: str, batched: bool) -> None:
    layout = "[N, F, H, W, C]" if batched else "[F, H, W, C]"
    if videos.ndim != (5 if batched else 4) or videos.shape[-1] not in (1, 3):
        raise VideoInputError(f"{what}: expected uint8 frames {layout} with C 1 or 3, got shape {tuple(videos.shape)}")
    if videos.dtype != torch.uint8:
        raise VideoInputError(f"{what}: expected uint8 frames, got {videos.dtype}")


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise VideoInputError(f"a Frechet distance needs at least 2 feature vectors [N, D], got shape {features.shape}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False, ddof=1))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians, in float64.

    With S1 = R R^T (R = V sqrt(Lambda) from the eigendecomposition of S1), the nonzero eigenvalues of
    S1 S2 are those of the small symmetric PSD matrix R^T S2 R, so Tr((S1 S2)^(1/2)) is the sum of
    their square roots: no non-symmetric square root, no complex parts. Directions where S1 is zero to
    rounding (rank-deficient covariances: fewer samples than dimensions, as in most FVD protocols) are
    dropped from R instead of contributing sqrt(rounding noise) each. Tiny negative eigenvalues are
    clipped to zero, and so is the result.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}"
        )
    lambda1, v1 = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    keep = lambda1 > max(lambda1.max(initial=0.0), 0.0) * dim * np.finfo(np.float64).eps
    root1 = v1[:, keep] * np.sqrt(lambda1[keep])  # [D, r], root1 root1^T = S1
    middle = root1.T @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0.0)
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(eigenvalues).sum()
    return max(float(distance), 0.0)


def fvd_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FVD between two sets of I3D logits [N_a, 400] and [N_b, 400]."""
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def psnr(pred: VideoArray, target: VideoArray, data_range: float | None = None) -> FrameScores:
    """Per-frame PSNR 10 log10(L^2 / MSE) over frames [..., H, W, C]; L = 255 for uint8.

    A frame identical to its target scores +inf (no cap), and then so does the mean.
    """
    x, y, data_range = _frame_pair(pred, target, data_range)
    mse = ((x - y) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        per_frame = np.asarray(10.0 * np.log10(data_range**2 / mse))
    return FrameScores(per_frame, float(per_frame.mean()))


def ssim(pred: VideoArray, target: VideoArray, data_range: float | None = None) -> FrameScores:
    """Per-frame SSIM (Wang et al. 2004) over frames [..., H, W, C]; L = 255 for uint8.

    Gaussian window 11 (sigma 1.5), K1 0.01, K2 0.03, valid windows only, population (biased) local
    moments as in the original code and `tf.image.ssim`; the SSIM map is averaged over positions and
    channels. Frames must be at least 11x11.
    """
    x, y, data_range = _frame_pair(pred, target, data_range)
    lead, (height, width, channels) = x.shape[:-3], x.shape[-3:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise VideoInputError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {height}x{width}")
    # Every channel of every frame becomes one [1, H, W] image for the separable Gaussian filter.
    planes_x = torch.from_numpy(np.moveaxis(x, -1, -3).reshape(-1, 1, height, width))
    planes_y = torch.from_numpy(np.moveaxis(y, -1, -3).reshape(-1, 1, height, width))
    mu_x, mu_y = _gaussian_filter(planes_x), _gaussian_filter(planes_y)
    var_x = _gaussian_filter(planes_x * planes_x) - mu_x**2
    var_y = _gaussian_filter(planes_y * planes_y) - mu_y**2
    cov_xy = _gaussian_filter(planes_x * planes_y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_frame = ssim_map.reshape(*lead, channels, -1).mean(dim=(-2, -1)).numpy()
    return FrameScores(per_frame, float(per_frame.mean()))


def _gaussian_filter(planes: torch.Tensor) -> torch.Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    window = window / window.sum()
    planes = F.conv2d(planes, window.view(1, 1, -1, 1))
    return F.conv2d(planes, window.view(1, 1, 1, -1))


def _frame_pair(pred: VideoArray, target: VideoArray, data_range: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Both inputs as float64 arrays [..., H, W, C], checked alike, and the data range L."""
    pred_np, target_np = _as_numpy(pred), _as_numpy(target)
    if pred_np.shape != target_np.shape:
        raise VideoInputError(f"prediction {pred_np.shape} and target {target_np.shape} differ in shape")
    if pred_np.ndim < 3 or pred_np.shape[-1] not in (1, 3):
        raise VideoInputError(f"expected frames [..., H, W, C] with C 1 or 3, got shape {pred_np.shape}")
    if data_range is None:
        if pred_np.dtype != np.uint8 or target_np.dtype != np.uint8:
            raise ValueError("data_range is required unless both inputs are uint8 (range 255)")
        data_range = 255.0
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be positive, got {data_range}")
    return pred_np.astype(np.float64), target_np.astype(np.float64), float(data_range)


def _as_numpy(frames: VideoArray) -> np.ndarray:
    return frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
