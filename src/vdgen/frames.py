"""Frame transforms between files and the model: colour, size, and the model's value range.

Pure numpy/torch, no I/O. Frames on the file side are uint8 [F, H, W, C] (channels last, as
`vdgen.video` reads and writes them); on the model side a float tensor [C, F, H, W] in [-1, 1].
Functions taking frames accept a numpy array or a torch tensor and return the same kind.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from vdgen.errors import ConfigError

Frames = TypeVar("Frames", np.ndarray, torch.Tensor)
FitMode = Literal["crop", "pad", "stretch"]
FIT_MODES = ("crop", "pad", "stretch")
LUMA_BT601 = (0.299, 0.587, 0.114)
# Frames resized per interpolate call, bounded so the float copy stays near 128 MB.
_RESIZE_ELEMENTS = 2**25


def to_luma(frames: Frames) -> Frames:
    """RGB [..., 3] -> luma [..., 1] with BT.601 weights Y = 0.299 R + 0.587 G + 0.114 B."""
    x = _as_tensor(frames)
    if x.shape[-1] == 1:
        return frames
    _check_channels(x, (3,))
    weights = torch.tensor(LUMA_BT601, dtype=torch.float32)
    y = (x.to(torch.float32) * weights).sum(-1, keepdim=True)
    if x.dtype == torch.uint8:
        y = y.round().clamp(0, 255).to(torch.uint8)
    else:
        y = y.to(x.dtype)
    return _like(y, frames)


def to_rgb(frames: Frames) -> Frames:
    """Gray [..., 1] -> RGB [..., 3] by replicating the channel; RGB passes through unchanged."""
    x = _as_tensor(frames)
    _check_channels(x, (1, 3))
    if x.shape[-1] == 3:
        return frames
    return _like(x.expand(*x.shape[:-1], 3).contiguous(), frames)


def fit_frames(frames: Frames, size: tuple[int, int], mode: FitMode = "crop") -> Frames:
    """Resize uint8 [F, H, W, C] to [F, h, w, C] with `size` = (h, w).

    crop: centre-crop to the target aspect ratio, then resize (keeps the middle, fills the frame).
    pad: resize to fit inside, letterbox with black (keeps everything).
    stretch: resize to the target ignoring the aspect ratio.
    Downscaling averages areas; upscaling is bilinear with antialiasing.
    """
    if mode not in FIT_MODES:
        raise ConfigError(f"unknown fit mode {mode!r} (use {', '.join(FIT_MODES)})")
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ConfigError(f"frame size must be positive, got {height}x{width}")
    x = _as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 frames [F, H, W, C], got {x.dtype} {tuple(x.shape)}")
    if mode == "crop":
        out = _resize(_centre_crop(x, width / height), height, width)
    elif mode == "stretch":
        out = _resize(x, height, width)
    else:
        scale = min(height / x.shape[1], width / x.shape[2])
        inner_h = min(height, max(1, round(x.shape[1] * scale)))
        inner_w = min(width, max(1, round(x.shape[2] * scale)))
        out = torch.zeros((x.shape[0], height, width, x.shape[3]), dtype=torch.uint8)
        top, left = (height - inner_h) // 2, (width - inner_w) // 2
        out[:, top : top + inner_h, left : left + inner_w] = _resize(x, inner_h, inner_w)
    return _like(out, frames)


def to_model(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames [F, H, W, C] -> float32 tensor [C, F, H, W] in [-1, 1]."""
    x = _as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 frames [F, H, W, C], got {x.dtype} {tuple(x.shape)}")
    return rearrange(x.to(torch.float32) / 127.5 - 1.0, "f h w c -> c f h w").contiguous()


def from_model(x: torch.Tensor) -> np.ndarray:
    """Model output [C, F, H, W] or [B, C, F, H, W] in [-1, 1] -> uint8 [(B,) F, H, W, C].

    Values are clamped to [-1, 1] (NaN becomes mid-grey) and rounded to the nearest level.
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"expected [C, F, H, W] or [B, C, F, H, W], got {tuple(x.shape)}")
    x = torch.nan_to_num(x.detach().to("cpu", torch.float32), nan=0.0).clamp(-1.0, 1.0)
    levels = ((x + 1.0) * 127.5).round().to(torch.uint8)
    return rearrange(levels, "... c f h w -> ... f h w c").contiguous().numpy()


def _centre_crop(x: torch.Tensor, aspect: float) -> torch.Tensor:
    """Crop [F, H, W, C] around its centre to width / height = `aspect`."""
    height, width = x.shape[1], x.shape[2]
    if width / height > aspect:
        new_w = min(width, max(1, round(height * aspect)))
        left = (width - new_w) // 2
        return x[:, :, left : left + new_w]
    new_h = min(height, max(1, round(width / aspect)))
    top = (height - new_h) // 2
    return x[:, top : top + new_h]


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize uint8 [F, H, W, C] to [F, height, width, C]: area when shrinking, else bilinear."""
    if (x.shape[1], x.shape[2]) == (height, width):
        return x.clone()
    shrinking = height <= x.shape[1] and width <= x.shape[2]
    per_chunk = max(1, _RESIZE_ELEMENTS // max(1, x[0].numel(), height * width * x.shape[3]))
    chunks = []
    for start in range(0, x.shape[0], per_chunk):
        y = rearrange(x[start : start + per_chunk], "f h w c -> f c h w").to(torch.float32)
        if shrinking:
            y = F.interpolate(y, size=(height, width), mode="area")
        else:
            y = F.interpolate(
                y, size=(height, width), mode="bilinear", align_corners=False, antialias=True
            )
        chunks.append(rearrange(y.round().clamp(0, 255).to(torch.uint8), "f c h w -> f h w c"))
    return torch.cat(chunks).contiguous()


def _as_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    return frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))


def _like(x: torch.Tensor, reference: np.ndarray | torch.Tensor):
    """`x` as the same kind (numpy or torch) as `reference`."""
    return x if isinstance(reference, torch.Tensor) else x.numpy()


def _check_channels(x: torch.Tensor, allowed: tuple[int, ...]) -> None:
    if x.ndim < 1 or x.shape[-1] not in allowed:
        raise ValueError(f"expected {' or '.join(map(str, allowed))} channels last, "
                         f"got shape {tuple(x.shape)}")
