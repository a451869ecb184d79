"""The loss-curve PNG drawn with numpy (vdgen.plot)."""

from __future__ import annotations

import numpy as np

from vdgen.plot import (
    HEIGHT, RAW, SMOOTH, WIDTH, _GLYPHS, _ema, _format, _log_ticks, _nice_ticks, _text, loss_curve_image,
    loss_curve_png, use_log_scale,
)
from vdgen.video import read_video


def count(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((image == np.array(colour, np.uint8)).all(-1).sum())


def test_png_is_written_atomically_and_reads_back(tmp_path):
    losses = list(np.linspace(1.0, 0.2, 300) + 0.05 * np.sin(np.arange(300)))
    path = tmp_path / "loss.png"
    loss_curve_png(path, losses)
    frames, _ = read_video(path)
    np.testing.assert_array_equal(frames[0], loss_curve_image(losses))
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # no temporary file left behind


def test_curve_has_raw_points_and_a_smoothed_line():
    rng = np.random.default_rng(0)
    image = loss_curve_image(list(0.5 + 0.2 * rng.random(2000)))
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    assert count(image, RAW) > 500 and count(image, SMOOTH) > 500
    # The smoothed line of noise around 0.6 stays in a narrow band; the raw points do not.
    smooth_rows = np.nonzero((image == np.array(SMOOTH, np.uint8)).all(-1))[0]
    raw_rows = np.nonzero((image == np.array(RAW, np.uint8)).all(-1))[0]
    assert np.ptp(smooth_rows) < 0.6 * np.ptp(raw_rows)


def test_log_scale_only_for_wide_ranges():
    assert use_log_scale(np.array([1.0, 0.05]))
    assert not use_log_scale(np.array([1.0, 0.2]))
    assert not use_log_scale(np.array([1.0, -0.5, 0.0]))
    assert not use_log_scale(np.array([]))
    assert _log_ticks(-2.2, 0.1) == [0.01, 0.1, 1.0]
    assert _log_ticks(-1.5, 0.2) == [0.05, 0.1, 0.2, 0.5, 1.0]


def test_tick_values_and_labels():
    assert _nice_ticks(1, 20000, integer=True) == [5000, 10000, 15000, 20000]
    assert _nice_ticks(1, 3, integer=True) == [1, 2, 3]
    np.testing.assert_allclose(_nice_ticks(0.09, 0.121), [0.09, 0.10, 0.11, 0.12])
    assert [_format(v) for v in (0.1, 0.05, 1e-05, 2.5e-4, 1234.0)] == ["0.1", "0.05", "1e-5", "0.00025", "1.23e3"]
    assert all(char in _GLYPHS for label in ("0.123456789", "1e-5", "+") for char in label.upper())


def test_ema_is_bias_corrected():
    np.testing.assert_allclose(_ema(np.full(10, 3.0), span=5), 3.0)
    smooth = _ema(np.array([1.0, 0.0]), span=2)  # decay 0.5: (0.5 * 1 * 0.5 + 0) / 0.75
    np.testing.assert_allclose(smooth, [1.0, 1 / 3])


def test_bitmap_font_draws_the_glyph():
    image = np.zeros((20, 20, 3), np.uint8)
    _text(image, 0, 0, "1", (255, 255, 255), anchor="top")
    drawn = image[:10, :6, 0] > 0
    expected = np.array([[c == "#" for c in row] for row in _GLYPHS["1"]]).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(drawn, expected)


def test_degenerate_inputs_still_draw():
    for losses in ([], [0.5], [0.5, 0.5], [float("nan"), float("inf"), 0.3, 0.2], [1e-12, 1e3]):
        image = loss_curve_image(losses)
        assert image.shape == (HEIGHT, WIDTH, 3)
    assert count(loss_curve_image([0.5]), SMOOTH) > 0
