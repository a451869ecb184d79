"""Moving MNIST generated on the fly: determinism, the protocol's geometry, downsampling, joint batches."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from vdgen.data import (
    CANVAS,
    DIGIT,
    MovingMNIST,
    _trajectory,
    area_downsample,
    make_batch,
    mnist_digits,
    mnist_labels,
    moving_mnist_clip,
    moving_mnist_clip_and_digits,
)
from vdgen.errors import ConfigError

LIMIT = CANVAS - DIGIT  # the largest top-left corner that keeps a digit on the canvas


def trajectories(count: int, frames: int):
    for seed in range(count):
        yield _trajectory(np.random.default_rng(seed), frames)


def axis_speed(positions: np.ndarray) -> float:
    """|velocity| of one axis from integer positions [F] of a bouncing point.

    Between bounces the motion is linear, so the longest run without a change of direction (less
    its two end frames, which may hold a bounce) gives the speed to within about 1 / its length.
    """
    steps = np.diff(positions)
    best, start = (0, 0), 0
    for i in range(1, len(steps) + 1):
        if i == len(steps) or (steps[i] * steps[start:i]).min() < 0:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = i
    a, b = best[0] + 1, best[1]  # trim the end frames of the run
    return abs(positions[b] - positions[a]) / (b - a)


# ------------------------------------------------------------------------------------------ MNIST


def test_shipped_digits():
    train = mnist_digits("train")
    assert train.shape == (10_000, 28, 28) and train.dtype == np.uint8
    val = mnist_digits("val")
    assert val.shape == (5_000, 28, 28) and val.dtype == np.uint8
    for digits in (train, val):
        # Real MNIST digits: a black border, a bright centre, nothing but pixel values.
        assert (digits[:, 0, :] == 0).mean() > 0.99 and (digits[:, :, -1] == 0).mean() > 0.99
        assert digits[:, 10:18, 10:18].mean() > 60 and digits.max() == 255
    assert not np.array_equal(train[:5000], val)
    with pytest.raises(ConfigError):
        mnist_digits("test")


def test_shipped_labels():
    # The published class counts of the MNIST test set (t10k), and 500 per class in the 5k CSV.
    train, val = mnist_labels("train"), mnist_labels("val")
    assert train.shape == (10_000,) and val.shape == (5_000,) and train.dtype == val.dtype == np.int64
    t10k_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(train, minlength=10).tolist() == t10k_counts
    assert np.bincount(val, minlength=10).tolist() == [500] * 10
    with pytest.raises(ConfigError):
        mnist_labels("test")


def test_labels_name_the_digits_drawn():
    # A label must belong to its digit: the mean image of each class, built from the labels,
    # is closest to that class's own mean on the other split (a mislabelled file fails this).
    for split, other in (("train", "val"), ("val", "train")):
        means = [mnist_digits(split)[mnist_labels(split) == c].mean(axis=0) for c in range(10)]
        for c in range(10):
            target = mnist_digits(other)[mnist_labels(other) == c].mean(axis=0)
            assert int(np.argmin([np.abs(m - target).sum() for m in means])) == c


# ------------------------------------------------------------------------------------------ trajectories


def test_digits_stay_on_the_canvas():
    for path in trajectories(200, 64):
        assert path.shape == (64, 2) and path.dtype == np.int64
        assert path.min() >= 0 and path.max() <= LIMIT


def test_speed_is_2_to_5_pixels_per_frame():
    speeds = []
    for path in trajectories(200, 64):
        speeds.append(np.hypot(axis_speed(path[:, 0]), axis_speed(path[:, 1])))
    speeds = np.array(speeds)
    assert speeds.min() > 2.0 - 0.3 and speeds.max() < 5.0 + 0.3
    # drawn over the whole range, not a constant
    assert speeds.min() < 2.5 and speeds.max() > 4.5


def test_reflection_bounces_off_every_border():
    hits = {"top": 0, "bottom": 0, "left": 0, "right": 0}
    for path in trajectories(200, 64):
        assert np.abs(np.diff(path, axis=0)).max() <= 6  # never jumps (a wrap-around would)
        hits["top"] += (path[:, 0] <= 2).any()
        hits["bottom"] += (path[:, 0] >= LIMIT - 2).any()
        hits["left"] += (path[:, 1] <= 2).any()
        hits["right"] += (path[:, 1] >= LIMIT - 2).any()
        for axis in range(2):
            speed = axis_speed(path[:, axis])
            if speed >= 1.0:
                # A reflected digit leaves the border at once: never two frames without moving.
                still = np.diff(path[:, axis]) == 0
                assert not (still[1:] & still[:-1]).any()
            if speed * 63 > 2.5 * LIMIT:
                # Enough travel to cross the canvas more than twice: it must have come back.
                assert path[:, axis].min() <= 5 and path[:, axis].max() >= LIMIT - 5
    assert min(hits.values()) > 20


# ------------------------------------------------------------------------------------------ clips


def test_two_digits_each_fully_on_the_canvas():
    # Digits that are a single bright pixel at their bottom-right corner: each frame then shows
    # exactly one pixel per digit, and only if the whole 28x28 digit fits on the canvas.
    dots = np.zeros((5, DIGIT, DIGIT), np.uint8)
    dots[:, -1, -1] = 255
    for seed in range(20):
        clip = moving_mnist_clip(dots, np.random.default_rng(seed), 16)
        counts = (clip > 0).reshape(16, -1).sum(axis=1)
        assert counts.max() == 2 and counts.min() >= 1  # 1 only where the two coincide
        ys, xs = np.nonzero(clip)[1:]
        assert ys.min() >= DIGIT - 1 and xs.min() >= DIGIT - 1
    three = moving_mnist_clip(dots, np.random.default_rng(0), 16, num_digits=3)
    assert (three > 0).reshape(16, -1).sum(axis=1).max() == 3
    assert MovingMNIST().num_digits == 2


def test_clip_and_digits_reports_what_it_drew():
    # Ten digits, each a single pixel whose value names the digit: the values in frame 0 are then
    # the digits drawn (one value fewer where the two pixels coincide).
    marked = np.zeros((10, DIGIT, DIGIT), np.uint8)
    marked[:, -1, -1] = 10 + 20 * np.arange(10)
    seen = set()
    for seed in range(40):
        clip, drawn = moving_mnist_clip_and_digits(marked, np.random.default_rng(seed), 4)
        assert np.array_equal(clip, moving_mnist_clip(marked, np.random.default_rng(seed), 4))
        assert len(drawn) == 2 and all(0 <= i < 10 for i in drawn)
        values = {int(v) for v in clip[0][clip[0] > 0]}
        expected = {10 + 20 * i for i in drawn}
        assert values == expected or (len(values) == 1 and values < expected)
        seen.update(drawn)
    assert seen == set(range(10))


@pytest.mark.parametrize("split", ["train", "val"])
def test_clip_and_labels(split):
    data = MovingMNIST(frames=8, size=32, split=split, seed=2)
    for index in range(10):
        clip, labels = data.clip_and_labels(index)
        assert np.array_equal(clip, data.clip(index))
        rng = np.random.default_rng([2, 0 if split == "train" else 1, index])
        _, drawn = moving_mnist_clip_and_digits(mnist_digits(split), rng, 8)
        assert labels == [int(mnist_labels(split)[i]) for i in drawn]
        assert len(labels) == 2 and all(0 <= c <= 9 for c in labels)


def test_clips_unchanged_by_release():
    # Resumed training runs replay these exact clips: pin two of them (sha256 of the uint8 bytes).
    pins = {("train", 32): "26ac67a0265e4a67", ("val", 64): "9dcecd2f9117e66a"}
    for (split, size), digest in pins.items():
        clip = MovingMNIST(frames=16, size=size, split=split, seed=3).clip(7)
        assert hashlib.sha256(clip.tobytes()).hexdigest()[:16] == digest


@pytest.mark.parametrize("size", [32, 64])
def test_deterministic_per_seed_and_index(size):
    data = MovingMNIST(frames=8, size=size)
    first = data.clip(3)
    assert first.shape == (8, size, size) and first.dtype == np.uint8
    assert np.array_equal(first, MovingMNIST(frames=8, size=size).clip(3))  # a fresh object, same clip
    assert np.array_equal(first, data.clip(3))
    assert not np.array_equal(first, data.clip(4))
    assert not np.array_equal(first, MovingMNIST(frames=8, size=size, seed=1).clip(3))
    assert not np.array_equal(first, MovingMNIST(frames=8, size=size, split="val").clip(3))
    # the clip moves
    assert not np.array_equal(first[0], first[-1])


def test_video_values():
    video = MovingMNIST(frames=6).video(0)
    assert video.shape == (1, 6, 32, 32) and video.dtype == torch.float32
    assert video.min().item() == -1.0 and video.max().item() <= 1.0 and video.max().item() > 0.5
    # mostly black background
    assert (video == -1).float().mean() > 0.5
    np.testing.assert_allclose(video[0].numpy(), MovingMNIST(frames=6).clip(0) / 127.5 - 1, atol=1e-6)


def test_32_is_the_2x2_area_mean_of_64():
    native = MovingMNIST(frames=4, size=64).clip(5).astype(np.float64)
    small = MovingMNIST(frames=4, size=32).clip(5).astype(np.float64)
    mean = (native[:, 0::2, 0::2] + native[:, 0::2, 1::2] + native[:, 1::2, 0::2] + native[:, 1::2, 1::2]) / 4
    assert np.abs(small - mean).max() <= 0.5


def test_area_downsample_on_non_square_input():
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 12, 18), dtype=np.uint8)
    out = area_downsample(frames, 3)
    assert out.shape == (2, 3, 4, 6) and out.dtype == np.uint8
    mean = frames.astype(np.float64).reshape(2, 3, 4, 3, 6, 3).mean(axis=(3, 5))
    assert np.abs(out - mean).max() <= 0.5
    assert out[1, 2, 3, 5] == round(frames[1, 2, 9:12, 15:18].astype(np.float64).mean())


def test_bad_size_is_refused():
    with pytest.raises(ConfigError):
        MovingMNIST(size=48)


# ------------------------------------------------------------------------------------------ joint image-video batches


@pytest.mark.parametrize("image_frames", [0, 1, 3])
def test_make_batch(image_frames):
    data = MovingMNIST(frames=5)
    batch, mask = make_batch(data, [0, 7], image_frames)
    assert batch.shape == (2, 1, 5 + image_frames, 32, 32)
    for row, index in enumerate([0, 7]):
        assert torch.equal(batch[row, :, :5], data.video(index))  # the video comes first, unchanged
    if image_frames == 0:
        assert mask is None
        return
    assert mask.shape == (2, 5 + image_frames) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [image_frames] * 2
    assert mask[:, 5:].all() and not mask[:, :5].any()
    # the appended images are real Moving MNIST frames, different from the video's own
    for row in range(2):
        for k in range(image_frames):
            image = batch[row, :, 5 + k]
            assert (image > -1).any()
            assert not any(torch.equal(image, batch[row, :, f]) for f in range(5))
    # deterministic
    again, _ = make_batch(data, [0, 7], image_frames)
    assert torch.equal(batch, again)
