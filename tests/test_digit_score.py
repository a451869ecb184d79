"""bench/digit_score.py: the steadiness score against hand-counted clips, and its controls."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def digit_score():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("digit_score", BENCH / "digit_score.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def clip_of(sets: list[set[int]], sure: float = 0.99) -> np.ndarray:
    """Class probabilities [F, 10]: `sure` for the classes of each frame's set, 1 - sure elsewhere."""
    p = np.full((len(sets), 10), 1 - sure)
    for f, classes in enumerate(sets):
        p[f, list(classes)] = sure
    return p


def test_score_counts_by_hand(digit_score):
    steady = clip_of([{3, 7}] * 16)
    overlap = clip_of([{3, 7}] * 14 + [{3}] * 2)  # two frames where 7 hides behind 3: still steady
    three_missing = clip_of([{3, 7}] * 13 + [{3}] * 3)
    morphing = clip_of([{1}] * 8 + [{2}] * 8)  # neither class in most frames: no digits
    r = digit_score.score(np.stack([steady, overlap, three_missing, morphing]))
    shows = [1.0, 14 / 16, 13 / 16, 0.0]
    assert r["frames_showing_clip_digits"] == pytest.approx(np.mean(shows))
    assert r["frames_showing_clip_digits_se"] == pytest.approx(np.std(shows, ddof=1) / 2)
    assert r["steady_clips"] == 0.5 and r["steady_clips_se"] == pytest.approx(np.std([1, 1, 0, 0], ddof=1) / 2)
    assert r["changes_per_clip"] == pytest.approx((0 + 1 + 1 + 1) / 4)
    assert r["classes_per_clip"] == pytest.approx((2 + 2 + 2 + 0) / 4)
    assert r["confident_frames"] == 1.0 and r["clips"] == 4


def test_unsure_and_crowded_frames(digit_score):
    unsure = clip_of([{5}] * 16, sure=0.8)  # present, but not confidently
    crowded = clip_of([{1, 2, 3}] * 16)  # three classes: not two digits
    r = digit_score.score(np.stack([unsure, crowded]))
    assert r["confident_frames"] == 0.5
    assert r["steady_clips"] == 0.5  # the unsure clip is steady; three classes never are
    assert r["frames_showing_clip_digits"] == 0.5
    assert math.isnan(digit_score.score(unsure[None])["steady_clips_se"])  # one clip: no spread


def test_controls(digit_score):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (20, 16, 8, 8), dtype=np.uint8)
    rows = digit_score.controls(real)
    blurred, shuffled = rows.values()
    # interior pixels: the 3x3 mean; borders count black outside the frame
    assert blurred[3, 5, 4, 4] == round(real[3, 5, 3:6, 3:6].astype(float).mean())
    assert blurred[0, 0, 0, 0] == round(real[0, 0, :2, :2].astype(float).sum() / 9)
    # every frame of a shuffled clip comes from another real clip, frame index kept
    for f in range(16):
        assert np.array_equal(shuffled[2, f], real[(2 + f) % 20, f])
    assert len(digit_score.controls(real[:10])) == 1  # fewer clips than frames: no shuffle


def test_blur_control_matches_training_blur(digit_score):
    # The control (uint8, black padding) and the training augmentation ([-1, 1], padding -1) agree.
    real = np.random.default_rng(1).integers(0, 256, (1, 1, 8, 8), dtype=np.uint8)
    control = digit_score.controls(real)["the same, blurred 3x3"]
    trained = digit_score.box_blur(digit_score.as_input(real[0]))
    assert np.abs((trained[0, 0].numpy() + 1) * 127.5 - control[0, 0]).max() <= 0.5 + 1e-4
