"""The training loss curve as a PNG, drawn with numpy alone (no plotting library).

Raw per-step losses are light dots, their bias-corrected exponential moving average a dark line;
the y axis is logarithmic when the losses span more than a factor of 10. Tick labels use a tiny
built-in 3x5 bitmap font (digits, a few capital letters; text is drawn upper-case).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 28, 44  # margins around the plot area, in pixels
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
GRID = (228, 228, 228)
RAW = (170, 196, 236)
SMOOTH = (24, 72, 168)
SCALE = 2  # font pixels per glyph pixel

# 3x5 glyphs, rows top to bottom, '#' set; lower-case text is drawn with the capitals.
_GLYPHS = {
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", "..#", "..#", "..#"),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
    ".": ("...", "...", "...", "...", ".#."), "-": ("...", "...", "###", "...", "..."),
    "+": ("...", ".#.", "###", ".#.", "..."), " ": ("...", "...", "...", "...", "..."),
    "(": (".#.", "#..", "#..", "#..", ".#."), ")": (".#.", "..#", "..#", "..#", ".#."),
    "A": (".#.", "#.#", "###", "#.#", "#.#"), "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"), "G": (".##", "#..", "#.#", "#.#", ".##"),
    "L": ("#..", "#..", "#..", "#..", "###"), "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": (".#.", "#.#", "#.#", "#.#", ".#."), "P": ("##.", "#.#", "##.", "#..", "#.."),
    "S": (".##", "#..", ".#.", "..#", "##."), "T": ("###", ".#.", ".#.", ".#.", ".#."),
}
_GLYPH_MASKS = {c: np.array([[p == "#" for p in row] for row in rows]) for c, rows in _GLYPHS.items()}


def loss_curve_png(path: Path | str, losses: list[float]) -> None:
    """Draw `losses` (one per step, step 1 first) as a loss curve and write it to `path` (atomic PNG)."""
    from vdgen.video import write_png

    write_png(path, loss_curve_image(losses))


def loss_curve_image(losses: list[float]) -> np.ndarray:
    """The loss curve as uint8 [HEIGHT, WIDTH, 3]; non-finite losses are left out."""
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[:] = BACKGROUND
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT - 1, TOP, HEIGHT - BOTTOM - 1  # plot area, y0 at the top
    values = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, len(values) + 1, dtype=np.float64)
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
    if len(values) == 0:
        _axes(image, x0, x1, y0, y1)
        _text(image, (x0 + x1) // 2, (y0 + y1) // 2, "no data", INK, anchor="centre")
        return image
    log_scale = use_log_scale(values)
    data = np.log10(values) if log_scale else values
    lo, hi = float(data.min()), float(data.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo) * 0.1, 0.5 if log_scale else 1e-3)
    lo, hi = lo - pad, hi + pad
    first, last = float(steps[0]), float(max(steps[-1], steps[0] + 1))

    def to_x(step: np.ndarray) -> np.ndarray:
        return x0 + (step - first) / (last - first) * (x1 - x0)

    def to_y(value: np.ndarray) -> np.ndarray:
        return y1 - (value - lo) / (hi - lo) * (y1 - y0)

    # Grid and tick labels first, so the curve is drawn over them.
    y_ticks = _log_ticks(lo, hi) if log_scale else _nice_ticks(lo, hi)
    for tick in y_ticks:
        y = int(round(float(to_y(np.log10(tick) if log_scale else tick))))
        image[y, x0 : x1 + 1] = GRID
        _text(image, x0 - 8, y, _format(tick), INK, anchor="right")
    for tick in _nice_ticks(first, last, integer=True):
        x = int(round(float(to_x(tick))))
        image[y0 : y1 + 1, x] = GRID
        _text(image, x, y1 + 10, str(int(tick)), INK, anchor="top")
    _axes(image, x0, x1, y0, y1)
    _text(image, (x0 + x1) // 2, HEIGHT - 12, "step", INK, anchor="centre")
    _text(image, x0, TOP // 2, "loss (log)" if log_scale else "loss", INK, anchor="left")

    xs, ys = to_x(steps), to_y(data)
    _dots(image, xs, ys, RAW, radius=2 if len(data) <= (x1 - x0) // 4 else 1)
    smooth = _ema(data, span=max(1.0, min(200.0, len(data) / 10)))
    if len(smooth) == 1:
        _dots(image, xs, to_y(smooth), SMOOTH, radius=2)
    else:
        _polyline(image, xs, to_y(smooth), SMOOTH)
    return image


def use_log_scale(values: np.ndarray) -> bool:
    """A log y axis when all values are positive and span more than a factor of 10."""
    return bool(len(values) and values.min() > 0 and values.max() > 10 * values.min())


def _ema(values: np.ndarray, span: float) -> np.ndarray:
    """Bias-corrected exponential moving average (decay 1 - 1/span), so early points are not pulled to 0."""
    decay = 1.0 - 1.0 / span
    out = np.empty_like(values)
    average, weight = 0.0, 0.0
    for i, value in enumerate(values):
        average = decay * average + (1 - decay) * value
        weight = decay * weight + (1 - decay)
        out[i] = average / weight
    return out


def _nice_ticks(lo: float, hi: float, integer: bool = False, target: int = 5) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten) spaced over [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / target
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, round(step))
    start = math.ceil(lo / step - 1e-9) * step
    count = int(math.floor((hi - start) / step + 1e-9)) + 1
    return [start + i * step for i in range(max(0, count))]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten inside [10**lo, 10**hi], with 2x and 5x between them when decades are few."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    multiples = (1,) if sum(lo <= k <= hi for k in decades) >= 3 else (1, 2, 5)
    return [m * 10.0**k for k in decades for m in multiples if lo <= math.log10(m * 10.0**k) <= hi]


def _format(value: float) -> str:
    """A short tick label: 3 significant digits, exponents without '+' or leading zeros (1e-5)."""
    text = f"{value:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _axes(image: np.ndarray, x0: int, x1: int, y0: int, y1: int) -> None:
    image[y1, x0 : x1 + 1] = INK
    image[y0 : y1 + 1, x0] = INK


def _text(image: np.ndarray, x: int, y: int, text: str, color: tuple[int, int, int], anchor: str = "left") -> None:
    """Draw `text` with the bitmap font; `anchor` says where (x, y) is: left, right, top or centre."""
    glyph_w, glyph_h, gap = 3 * SCALE, 5 * SCALE, SCALE
    width = len(text) * (glyph_w + gap) - gap
    left = {"left": x, "right": x - width, "top": x - width // 2, "centre": x - width // 2}[anchor]
    left = min(max(left, 0), image.shape[1] - width)  # keep labels at the edges whole
    top = y if anchor == "top" else y - glyph_h // 2
    for i, char in enumerate(text.upper()):
        mask = _GLYPH_MASKS.get(char, _GLYPH_MASKS[" "]).repeat(SCALE, 0).repeat(SCALE, 1)
        gx = left + i * (glyph_w + gap)
        rows, cols = np.nonzero(mask)
        rows, cols = rows + top, cols + gx
        inside = (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
        image[rows[inside], cols[inside]] = color


def _dots(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, color: tuple[int, int, int], radius: int) -> None:
    """Square dots of side 2 * radius - 1 centred on the points."""
    px, py = np.round(xs).astype(np.int64), np.round(ys).astype(np.int64)
    for dy in range(1 - radius, radius):
        for dx in range(1 - radius, radius):
            rows, cols = py + dy, px + dx
            inside = (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
            image[rows[inside], cols[inside]] = color


def _polyline(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, color: tuple[int, int, int]) -> None:
    """A 2-pixel line through the points: each segment sampled once per pixel of its longer side."""
    dx, dy = np.diff(xs), np.diff(ys)
    counts = np.ceil(np.maximum(np.abs(dx), np.abs(dy))).astype(np.int64) + 1
    segment = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    t = offset / np.maximum(counts[segment] - 1, 1)
    _dots(image, xs[segment] + t * dx[segment], ys[segment] + t * dy[segment], color, radius=2)
