"""frames.py: colour conversion, fitting to a model size, and the model's [-1, 1] layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vdgen.errors import ConfigError
from vdgen.frames import fit_frames, from_model, to_luma, to_model, to_rgb


def random_frames(frames=2, height=12, width=16, channels=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, channels), np.uint8)


def test_to_luma_uses_bt601_weights():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [10, 20, 30]]],
                   np.uint8)
    luma = to_luma(rgb)
    assert isinstance(luma, np.ndarray) and luma.dtype == np.uint8 and luma.shape == (1, 5, 1)
    assert luma[0, :, 0].tolist() == [76, 150, 29, 255, round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)]


def test_to_luma_keeps_float_tensors_float():
    x = torch.tensor([[0.5, 1.0, 0.0]])
    assert torch.allclose(to_luma(x), torch.tensor([[0.299 * 0.5 + 0.587]]))


def test_to_rgb_replicates_gray_and_passes_rgb_through():
    gray = random_frames(channels=1)
    rgb = to_rgb(gray)
    assert rgb.shape == gray.shape[:-1] + (3,)
    assert all(np.array_equal(rgb[..., c], gray[..., 0]) for c in range(3))
    assert to_rgb(rgb) is rgb
    assert np.array_equal(to_luma(rgb), gray)  # the weights sum to 1
    with pytest.raises(ValueError, match="channels"):
        to_rgb(random_frames(channels=4))


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
@pytest.mark.parametrize("size", [(8, 8), (6, 20), (24, 32), (1, 1), (40, 10)])
def test_fit_frames_shapes(mode, size):
    frames = random_frames(3, 12, 16)
    out = fit_frames(frames, size, mode)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (3, *size, 3)
    tensor_out = fit_frames(torch.from_numpy(frames), size, mode)
    assert isinstance(tensor_out, torch.Tensor) and torch.equal(tensor_out, torch.from_numpy(out))


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
def test_fit_frames_at_the_same_size_is_the_identity(mode):
    frames = random_frames(2, 9, 13)
    out = fit_frames(frames, (9, 13), mode)
    assert np.array_equal(out, frames) and out is not frames


def test_crop_keeps_the_centre():
    frames = np.zeros((1, 4, 12, 1), np.uint8)
    frames[:, :, 4:8] = 200  # a bright middle third
    assert np.array_equal(fit_frames(frames, (4, 4), "crop"), np.full((1, 4, 4, 1), 200, np.uint8))


def test_downscale_averages_areas():
    frames = np.zeros((1, 4, 4, 1), np.uint8)
    frames[0, ::2, ::2] = 255  # one bright pixel in every 2x2 block
    expected = np.full((1, 2, 2, 1), 64, np.uint8)
    assert np.array_equal(fit_frames(frames, (2, 2), "stretch"), expected)


def test_pad_letterboxes_with_black():
    frames = np.full((2, 10, 20, 3), 180, np.uint8)
    out = fit_frames(frames, (20, 20), "pad")
    assert (out[:, :5] == 0).all() and (out[:, 15:] == 0).all()
    assert (out[:, 5:15] == 180).all()


def test_upscale_of_a_constant_stays_constant():
    frames = np.full((1, 3, 5, 3), 77, np.uint8)
    assert (fit_frames(frames, (30, 50), "stretch") == 77).all()


def test_fit_frames_rejects_unknown_mode_and_bad_size():
    with pytest.raises(ConfigError, match="unknown fit mode 'zoom'"):
        fit_frames(random_frames(), (8, 8), "zoom")
    with pytest.raises(ConfigError, match="positive"):
        fit_frames(random_frames(), (0, 8))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 24), st.integers(1, 24), st.integers(1, 24), st.integers(1, 24),
    st.sampled_from(["crop", "pad", "stretch"]),
)
def test_fit_frames_any_size(height, width, out_h, out_w, mode):
    out = fit_frames(random_frames(1, height, width), (out_h, out_w), mode)
    assert out.shape == (1, out_h, out_w, 3)


def test_model_layout_round_trip_is_exact():
    frames = random_frames(3, 5, 7)
    x = to_model(frames)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 5, 7)
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(from_model(x), frames)
    batch = torch.stack([x, -x])
    out = from_model(batch)
    assert out.shape == (2, 3, 5, 7, 3) and np.array_equal(out[0], frames)


def test_from_model_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 5.0, float("nan")]).reshape(1, 1, 1, 6)
    assert from_model(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 128]
