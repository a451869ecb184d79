"""Training data: built-in Moving MNIST, plus batches for joint image-video training.

Datasets from the user's own folders of videos or images live in vdgen.data_folders.

Every sample is a pure function of (seed, split, index), so a training run that resumes at step
s sees exactly the batches an uninterrupted run would, with no data-loader state to save.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Protocol

import numpy as np
import torch

from vdgen.errors import ConfigError

CANVAS = 64
DIGIT = 28


@lru_cache(maxsize=2)
def mnist_digits(split: str = "train") -> np.ndarray:
    """MNIST digits as uint8 [N, 28, 28]: 'train' is the shipped t10k set, 'val' the 5k CSV digits."""
    if split == "train":
        raw = _shipped("t10k-images-idx3-ubyte.gz")
        magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
        assert magic == 2051 and rows == cols == DIGIT, "corrupt shipped MNIST file"
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    if split == "val":
        digits = _val_table()[:, : DIGIT * DIGIT].reshape(-1, DIGIT, DIGIT).clip(0, 255).astype(np.uint8)
        digits.setflags(write=False)  # cached: shared by every caller
        return digits
    raise ConfigError(f"unknown MNIST split {split!r} (train or val)")


@lru_cache(maxsize=2)
def mnist_labels(split: str = "train") -> np.ndarray:
    """The class (0 to 9) of each digit of mnist_digits(split), int64 [N]."""
    if split == "train":
        raw = _shipped("t10k-labels-idx1-ubyte.gz")
        magic, count = struct.unpack(">II", raw[:8])
        assert magic == 2049, "corrupt shipped MNIST label file"
        labels = np.frombuffer(raw, dtype=np.uint8, offset=8, count=count).astype(np.int64)
    elif split == "val":
        labels = _val_table()[:, DIGIT * DIGIT].copy()
    else:
        raise ConfigError(f"unknown MNIST split {split!r} (train or val)")
    labels.setflags(write=False)  # cached: shared by every caller
    return labels


def _shipped(name: str) -> bytes:
    return gzip.decompress((resources.files("vdgen") / "data" / name).read_bytes())


@lru_cache(maxsize=1)
def _val_table() -> np.ndarray:
    """mnist_5k.csv.gz as int64 [5000, 785]: 784 pixels, then the label."""
    text = _shipped("mnist_5k.csv.gz").decode("ascii")
    rows = [line for line in text.splitlines() if line and line[0].isdigit()]
    return np.array([[int(v) for v in line.split(",")] for line in rows], dtype=np.int64)


def _trajectory(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Integer top-left corners [F, 2] of a digit bouncing inside the canvas (reflecting borders)."""
    limit = CANVAS - DIGIT
    pos = rng.uniform(0, limit, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(2.0, 5.0)
    vel = speed * np.array([np.sin(angle), np.cos(angle)])
    out = np.empty((frames, 2), dtype=np.int64)
    for f in range(frames):
        out[f] = np.round(pos).astype(np.int64)
        pos = pos + vel
        for axis in range(2):
            if pos[axis] < 0:
                pos[axis], vel[axis] = -pos[axis], -vel[axis]
            elif pos[axis] > limit:
                pos[axis], vel[axis] = 2 * limit - pos[axis], -vel[axis]
    return out


def moving_mnist_clip(digits: np.ndarray, rng: np.random.Generator, frames: int, num_digits: int = 2) -> np.ndarray:
    """One Moving MNIST clip, uint8 [F, 64, 64]: digits bouncing on black, combined by pixel-wise max."""
    return moving_mnist_clip_and_digits(digits, rng, frames, num_digits)[0]


def moving_mnist_clip_and_digits(
    digits: np.ndarray, rng: np.random.Generator, frames: int, num_digits: int = 2
) -> tuple[np.ndarray, list[int]]:
    """moving_mnist_clip, and the indices into `digits` of the digits it drew, in drawing order."""
    canvas = np.zeros((frames, CANVAS, CANVAS), dtype=np.uint8)
    drawn = []
    for _ in range(num_digits):
        drawn.append(int(rng.integers(len(digits))))
        digit = digits[drawn[-1]]
        for f, (y, x) in enumerate(_trajectory(rng, frames)):
            window = canvas[f, y : y + DIGIT, x : x + DIGIT]
            np.maximum(window, digit, out=window)
    return canvas, drawn


def area_downsample(frames: np.ndarray, factor: int) -> np.ndarray:
    """Area (box) downsampling of uint8 [..., H, W] by an integer factor, rounded to uint8."""
    *lead, h, w = frames.shape
    blocks = frames.reshape(*lead, h // factor, factor, w // factor, factor).astype(np.float32)
    return np.round(blocks.mean(axis=(-1, -3))).astype(np.uint8)


@dataclass(frozen=True)
class MovingMNIST:
    """The standard Moving MNIST protocol, generated on the fly and deterministic per (seed, index)."""

    frames: int = 16
    size: int = 32  # 64 (native), or 32 or 16 (area-downsampled)
    split: str = "train"
    seed: int = 0
    num_digits: int = 2

    def __post_init__(self) -> None:
        if self.size not in (16, 32, 64):
            raise ConfigError("moving-mnist frames are 64x64, or 32x32 or 16x16 area-downsampled")

    channels = 1
    images_only = False
    image_source = None

    def clip(self, index: int) -> np.ndarray:
        """Clip `index` as uint8 [F, size, size]."""
        return self.clip_and_labels(index)[0]

    def clip_and_labels(self, index: int) -> tuple[np.ndarray, list[int]]:
        """Clip `index` as uint8 [F, size, size], and the classes (0 to 9) of its digits."""
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, index])
        clip, drawn = moving_mnist_clip_and_digits(mnist_digits(self.split), rng, self.frames, self.num_digits)
        labels = [int(mnist_labels(self.split)[i]) for i in drawn]
        return (clip if self.size == CANVAS else area_downsample(clip, CANVAS // self.size)), labels

    def video(self, index: int) -> torch.Tensor:
        """Clip `index` as float [1, F, H, W] in [-1, 1]."""
        return torch.from_numpy(self.clip(index)).float().div(127.5).sub(1.0)[None]


class ClipDataset(Protocol):
    """What make_batch and the training loop need: MovingMNIST, or a vdgen.data_folders dataset."""

    frames: int
    seed: int
    channels: int
    images_only: bool  # every frame is an independent image (image-only training)
    image_source: ClipDataset | None  # where the K joint-training images come from; None: this dataset

    def video(self, index: int) -> torch.Tensor:
        """Sample `index` as float [C, F, H, W] in [-1, 1], a pure function of (seed, index)."""
        ...


def make_batch(
    dataset: ClipDataset, indices: list[int], image_frames: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch [B, C, F + K, H, W] and its image mask [B, F + K] (True on the K appended images).

    Joint image-video training (VDM section 3): each video gets K independent frames taken from
    other clips of the same dataset (or of `dataset.image_source`), chosen deterministically from
    the video's own index. An `images_only` dataset has every frame marked, so temporal attention
    is the identity: the same masking gives an image-only mode.
    """
    videos = torch.stack([dataset.video(i) for i in indices])
    mask = torch.zeros(len(indices), dataset.frames + image_frames, dtype=torch.bool)
    mask[:, 0 if dataset.images_only else dataset.frames :] = True
    if image_frames == 0:
        return videos, mask if dataset.images_only else None
    source = dataset if dataset.image_source is None else dataset.image_source
    images = []
    for i in indices:
        rng = np.random.default_rng([dataset.seed, 2, i])
        picks = [(int(rng.integers(2**62)), int(rng.integers(source.frames))) for _ in range(image_frames)]
        images.append(torch.stack([source.video(j)[:, f] for j, f in picks], dim=1))
    return torch.cat([videos, torch.stack(images)], dim=2), mask
