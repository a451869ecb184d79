"""Video files in and out: read any clip PyAV decodes, write MP4 / GIF / PNG folders, probe.

The only module that imports av (PyAV), always inside functions so `import vdgen` stays fast.
Frames are uint8 arrays [F, H, W, C] (RGB, or C = 1 for gray on output).

Reading is defensive: sizes declared in the header are checked against `max_pixels` before any
frame is decoded (decompression bombs), the decoder itself refuses larger frames, and the running
total is checked against `max_total_pixels`. A packet that fails to decode (a corrupt frame in the
middle) is skipped and decoding goes on; a truncated file yields the frames before the cut. Only a
file that gives no frame at all is an error. Every failure is a one-line `VideoInputError` (input)
or `OutputError` (output) that names the file; no PyAV exception escapes.

Writing is atomic (`vdgen.atomic.atomic_path`); whether an existing file may be replaced is the
caller's decision (`vdgen.atomic.check_writable`).
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vdgen.atomic import atomic_path
from vdgen.errors import OutputError, VideoInputError

DEFAULT_FPS = 25.0
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_TOTAL_PIXELS = 2**31
VIDEO_SUFFIXES = (".mp4", ".gif")
# Consecutive undecodable packets after which a stream is treated as garbage, not as damage.
MAX_BAD_PACKETS = 64
# The errors reading a file can raise; av.FFmpegError covers every PyAV error.
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, UnicodeError)


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header declares, read without decoding frames."""

    width: int
    height: int
    fps: float
    frames_estimate: int
    codec: str


# --------------------------------------------------------------------------------------- reading


def read_video(
    path: str | Path,
    *,
    max_frames: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS,
) -> tuple[np.ndarray, float]:
    """Decode a clip (or a folder of PNG frames) to RGB uint8 [F, H, W, 3] and its frame rate.

    Gray, alpha (dropped), 10-bit and 4:2:2 sources are converted to rgb24. If the frame size
    changes mid-stream, later frames are scaled to the first frame's size. The frame rate comes
    from the stream's average rate, else its guessed rate, else 25 (also for PNG folders).
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    collector = _FrameCollector(path, max_frames, max_pixels, max_total_pixels)
    if path.is_dir():
        for png in _png_frames(path):
            with _open_input(png, max_pixels) as (container, stream):
                collector.add_all(png, container, stream)
            if collector.full:
                break
        return collector.result(), DEFAULT_FPS
    with _open_input(path, max_pixels) as (container, stream):
        fps = _stream_fps(stream)
        declared = (stream.codec_context.width, stream.codec_context.height)
        collector.add_all(path, container, stream)
    return collector.result(declared), fps


def probe_video(path: str | Path) -> VideoInfo:
    """Read a clip's declared size, frame rate, approximate frame count and codec; no decoding."""
    path = Path(path)
    if path.is_dir():
        pngs = _png_frames(path)
        first = probe_video(pngs[0])
        return VideoInfo(first.width, first.height, DEFAULT_FPS, len(pngs), "png")
    with _open_input(path, max_pixels=None) as (container, stream):
        fps = _stream_fps(stream)
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=fps,
            frames_estimate=_frames_estimate(container, stream, fps),
            codec=stream.codec_context.name,
        )


class _FrameCollector:
    """Gathers decoded frames as RGB arrays of one size, enforcing the frame and pixel limits."""

    def __init__(self, path: Path, max_frames: int | None, max_pixels: int, max_total: int):
        self.path, self.max_frames = path, max_frames
        self.max_pixels, self.max_total = max_pixels, max_total
        self.frames: list[np.ndarray] = []
        self.size: tuple[int, int] | None = None  # (width, height) of the first frame
        self.first_error: str | None = None

    @property
    def full(self) -> bool:
        return self.max_frames is not None and len(self.frames) >= self.max_frames

    def add_all(self, source: Path, container: Any, stream: Any) -> None:
        """Decode `stream` packet by packet; skip packets that fail, stop at a demuxing error."""
        import av

        bad_in_a_row = 0
        try:
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.FFmpegError as exc:
                    self.first_error = self.first_error or _reason(exc)
                    bad_in_a_row += 1
                    if bad_in_a_row >= MAX_BAD_PACKETS:
                        return
                    continue
                bad_in_a_row = 0
                for frame in decoded:
                    self._add(source, frame)
                    if self.full:
                        return
        except av.FFmpegError as exc:
            # A truncated or damaged tail: keep what decoded and drain the decoder.
            self.first_error = self.first_error or _reason(exc)
            try:
                for frame in stream.codec_context.decode(None):
                    self._add(source, frame)
                    if self.full:
                        return
            except av.FFmpegError:
                pass

    def _add(self, source: Path, frame: Any) -> None:
        width, height = frame.width, frame.height
        if width * height > self.max_pixels:
            raise _too_large(source, width, height, self.max_pixels)
        if self.size is None:
            self.size = (width, height)
        width, height = self.size
        if (len(self.frames) + 1) * width * height > self.max_total:
            raise VideoInputError(
                f"{self.path}: {width}x{height} frames exceed the limit of {self.max_total}"
                f" pixels in total after {len(self.frames)} frames (read fewer with --max-frames)"
            )
        # reformat uses the frame's own colour space and range tags for the YUV -> RGB matrix.
        rgb = frame.to_ndarray(
            format="rgb24", width=width, height=height, interpolation=_exact_colour_flags()
        )
        self.frames.append(rgb)

    def result(self, declared_size: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The frames as one array [F, H, W, 3]; `declared_size` (width, height) is for messages."""
        if not self.frames:
            detail = f" ({self.first_error})" if self.first_error else ""
            if self.first_error and 0 in declared_size:
                # The decoder's max_pixels check fails with EINVAL and no size was declared.
                detail = (f" ({self.first_error}; the frame size may exceed the limit of"
                          f" {self.max_pixels} pixels per frame: raise it with --max-pixels)")
            raise VideoInputError(f"{self.path}: decoded 0 frames{detail}")
        width, height = self.size
        video = np.empty((len(self.frames), height, width, 3), np.uint8)
        for index in range(len(self.frames)):
            video[index] = self.frames[index]
            self.frames[index] = None  # free as we go: peak memory stays near one copy
        return video


class _open_input:
    """Context manager: (container, first video stream) of a file, or a `VideoInputError`."""

    def __init__(self, path: Path, max_pixels: int | None):
        self.path, self.max_pixels = path, max_pixels
        self.container: Any = None

    def __enter__(self) -> tuple[Any, Any]:
        import av

        path = self.path
        if not path.exists():
            raise VideoInputError(f"{path}: no such file")
        if not path.is_file():
            raise VideoInputError(f"{path}: not a regular file")
        try:
            if path.stat().st_size == 0:
                raise VideoInputError(f"{path}: file is empty")
            # max_pixels also makes libav's probing refuse to decode an oversized first frame.
            options = {} if self.max_pixels is None else {"max_pixels": str(self.max_pixels)}
            self.container, libav_error = _open_logged(path, options)
        except (av.FFmpegError, *_READ_ERRORS) as exc:
            raise VideoInputError(f"{path}: not a readable video file ({_reason(exc)})") from None
        if self.container is None:
            raise VideoInputError(f"{path}: not a readable video file ({libav_error})")
        try:
            return self.container, self._video_stream()
        except BaseException:
            self.container.close()
            raise

    def _video_stream(self) -> Any:
        streams = self.container.streams
        if not streams.video:
            kinds = sorted({stream.type for stream in streams})
            only = f"; it has only {' and '.join(kinds)}" if kinds else ""
            raise VideoInputError(f"{self.path}: not a video file (no video stream{only})")
        stream = streams.video[0]
        context = stream.codec_context
        if context is None:  # libav knows no decoder for the stream's codec tag
            raise VideoInputError(f"{self.path}: unknown or unsupported video codec")
        if self.max_pixels is not None:
            if context.width * context.height > self.max_pixels:
                raise _too_large(self.path, context.width, context.height, self.max_pixels)
            # Sizes not declared in the header are checked by the decoder before it allocates.
            context.options = {**context.options, "max_pixels": str(self.max_pixels)}
        return stream

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        import av

        if self.container is not None:
            try:
                self.container.close()
            except (av.FFmpegError, *_READ_ERRORS):
                pass
        if isinstance(exc, (av.FFmpegError, *_READ_ERRORS)):
            raise VideoInputError(f"{self.path}: cannot decode ({_reason(exc)})") from None
        if isinstance(exc, MemoryError):
            raise VideoInputError(
                f"{self.path}: out of memory while decoding (read fewer with --max-frames)"
            ) from None
        return False


def _too_large(path: Path, width: int, height: int, max_pixels: int) -> VideoInputError:
    return VideoInputError(
        f"{path}: {width}x{height} frames exceed the limit of {max_pixels} pixels per frame"
        " (raise it with --max-pixels)"
    )


def _png_frames(folder: Path) -> list[Path]:
    """The PNG files of a frame folder, in name order."""
    try:
        pngs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    except OSError as exc:
        raise VideoInputError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    if not pngs:
        raise VideoInputError(f"{folder}: a folder without PNG frames, not a video file")
    return pngs


def _stream_fps(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and math.isfinite(float(rate)) and float(rate) > 0:
            return float(rate)
    return DEFAULT_FPS


def _frames_estimate(container: Any, stream: Any, fps: float) -> int:
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        return max(0, round(float(stream.duration * stream.time_base) * fps))
    if container.duration:
        return max(0, round(container.duration / 1_000_000 * fps))
    return 0


def _exact_colour_flags() -> int:
    """swscale flags for RGB <-> YUV without the default path's bias of 1-2 levels."""
    from av.video.reformatter import Interpolation

    return (
        Interpolation.BILINEAR
        | Interpolation.ACCURATE_RND
        | Interpolation.FULL_CHR_H_INT
        | Interpolation.FULL_CHR_H_INP
    )


def _open_logged(path: Path, options: dict[str, str]) -> tuple[Any, str]:
    """(av.open's container, "") or (None, reason): libav's own error line when it logged one during
    this open, which says more than its error code ("Picture size 30000x30000 is invalid" vs EBUSY)."""
    import av
    import av.logging

    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs:  # Capture also keeps libav's lines off stderr
            try:
                return av.open(str(path), "r", options=options, metadata_errors="replace"), ""
            except av.FFmpegError as exc:
                lines = [message for log_level, _, message in logs if log_level <= av.logging.ERROR and message.strip()]
                return None, " ".join(lines[-1].split()) if lines else _reason(exc)
    finally:
        av.logging.set_level(level)


def _reason(exc: BaseException) -> str:
    """A short one-line reason from an av or OS error (its strerror without the file name)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------- writing


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 frames [F, H, W, C] (C = 1 or 3) as .mp4, .gif, or a folder of PNG frames.

    `.mp4`: H.264 yuv420p (BT.709 tagged, faststart) for browsers; an odd width or height is
    padded to even by repeating the last column/row, so such a clip reads back 1 pixel larger.
    `.gif`: one 256-colour palette for the whole clip, frame delays from `fps` (rounded to 1/100 s).
    A path without a suffix, or an existing folder: `frame_0000.png`, ... (the folder replaced as a whole).
    """
    path = Path(path)
    frames = _check_frames(frames)
    if not (math.isfinite(fps) and fps > 0):
        raise OutputError(f"cannot write {path}: fps must be a positive number, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    suffix = path.suffix.lower()
    if path.is_dir() or not suffix:
        _write_png_folder(path, frames)
        return
    if suffix not in VIDEO_SUFFIXES:
        raise OutputError(
            f"cannot write {path}: unknown video suffix {suffix!r}"
            " (use .mp4, .gif, or a folder name without a suffix)"
        )
    encode = _encode_mp4 if suffix == ".mp4" else _encode_gif
    _write_atomically(path, lambda tmp: encode(tmp, frames, rate))


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write one uint8 image [H, W, C] (C = 1 or 3) or [H, W] as a PNG file, atomically."""
    image = np.asarray(image)
    frames = _check_frames((image[..., None] if image.ndim == 2 else image)[None])
    _write_atomically(Path(path), lambda tmp: tmp.write_bytes(_png_bytes(frames[0])), uses_ffmpeg=False)


def contact_sheet(frames: np.ndarray, max_cols: int = 16, pad: int = 2) -> np.ndarray:
    """Tile [F, H, W, C] or [N, F, H, W, C] frames into one image [H', W', C] on black.

    Each video starts a new row; a video longer than `max_cols` frames wraps onto more rows.
    """
    frames = np.asarray(frames)
    if frames.ndim == 4:
        frames = frames[None]
    if frames.ndim != 5:
        raise ValueError(f"expected frames [F, H, W, C] or [N, F, H, W, C], got {frames.shape}")
    videos, length, height, width, channels = frames.shape
    cols = max(1, min(max_cols, length))
    rows_per_video = math.ceil(length / cols)
    rows = videos * rows_per_video
    sheet = np.zeros(
        (pad + rows * (height + pad), pad + cols * (width + pad), channels), frames.dtype
    )
    for n in range(videos):
        for f in range(length):
            row, col = n * rows_per_video + f // cols, f % cols
            top, left = pad + row * (height + pad), pad + col * (width + pad)
            sheet[top : top + height, left : left + width] = frames[n, f]
    return sheet


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or 0 in frames.shape:
        raise ValueError(f"frames must be [F, H, W, C] with C = 1 or 3 and F, H, W > 0, "
                         f"got {frames.shape}")
    return np.ascontiguousarray(frames)


def _write_atomically(path: Path, encode: Any, uses_ffmpeg: bool = True) -> None:
    """Run `encode(tmp)` on a temporary file next to `path`; rename it into place on success.

    Only an encoder that `uses_ffmpeg` imports PyAV: PNGs (contact sheets, the loss plot) are
    written without it, so training runs where PyAV is not installed.
    """
    errors: tuple[type[Exception], ...] = (ValueError,)
    if uses_ffmpeg:
        import av

        errors += (av.FFmpegError,)
    with atomic_path(path) as tmp:
        try:
            encode(tmp)
        except errors as exc:
            raise OutputError(f"cannot write {path}: {_reason(exc)}") from None


def _encode_mp4(tmp: Path, frames: np.ndarray, rate: Fraction) -> None:
    import av

    frames = _even_size(frames)
    height, width = frames.shape[1:3]
    with av.open(
        str(tmp), "w", format="mp4", container_options={"movflags": "+faststart"}
    ) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        context = stream.codec_context
        # Tag BT.709 limited range, the matrix the frames are converted with below.
        context.colorspace = context.color_primaries = context.color_trc = 1
        context.color_range = 1
        for index, image in enumerate(frames):
            rgb = av.VideoFrame.from_ndarray(_as_rgb(image), format="rgb24")
            frame = rgb.reformat(
                format="yuv420p",
                dst_colorspace="itu709",
                dst_color_range=1,
                interpolation=_exact_colour_flags(),
            )
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _encode_gif(tmp: Path, frames: np.ndarray, rate: Fraction) -> None:
    import av

    rgb = np.stack([_as_rgb(image) for image in frames])
    palette, indices = _quantize(rgb)
    argb = np.zeros((256, 4), np.uint8)
    argb[:, 0] = 255
    argb[: len(palette), 1:] = palette
    with av.open(str(tmp), "w", format="gif") as container:
        stream = container.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[2], rgb.shape[1], "pal8"
        for index, image in enumerate(indices):
            frame = av.VideoFrame.from_ndarray((image, argb), format="pal8")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _write_png_folder(folder: Path, frames: np.ndarray) -> None:
    """Write frame_0000.png, ... as a whole folder: built beside `folder`, then renamed into place.

    An interrupted write leaves any earlier folder as it was; a replaced folder is swapped out in
    one rename and only then deleted, so the frames on disk are never a mix of two clips.
    """
    import shutil
    import tempfile

    parent = folder.parent if str(folder.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write {folder}: it exists and is not a folder")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot create folder {folder}: {exc.strerror or exc}") from None
    old: Path | None = None
    try:
        staging.chmod(0o777 & ~_umask())
        digits = max(4, len(str(len(frames) - 1)))
        for index, image in enumerate(frames):
            write_png(staging / f"frame_{index:0{digits}d}.png", image)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=parent))
            os.rename(folder, old / folder.name)
        os.rename(staging, folder)
    except OSError as exc:
        raise OutputError(f"cannot write {folder}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            if not folder.exists() and (old / folder.name).exists():
                os.rename(old / folder.name, folder)  # put the earlier folder back
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grayscale or RGB PNG of a uint8 image [H, W, C], written here (no PyAV needed).

    Each row takes the filter (none, sub, up, average, Paeth) whose bytes have the least sum of
    absolute values as signed numbers, the usual heuristic; the rows are deflated at level 9.
    """
    height, width, channels = image.shape
    x = image.reshape(height, width * channels).astype(np.int16)
    left, up, up_left = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    left[:, channels:] = x[:, :-channels]
    up[1:] = x[:-1]
    up_left[1:, channels:] = x[:-1, :-channels]
    estimate = left + up - up_left
    to_left, to_up, to_up_left = (np.abs(estimate - v) for v in (left, up, up_left))
    paeth = np.where((to_left <= to_up) & (to_left <= to_up_left), left, np.where(to_up <= to_up_left, up, up_left))
    filtered = np.stack([x, x - left, x - up, x - (left + up) // 2, x - paeth]) & 0xFF  # [5, H, W*C]
    cost = np.minimum(filtered, 256 - filtered).sum(-1)  # [5, H]
    choice = cost.argmin(0)
    rows = filtered[choice, np.arange(height)].astype(np.uint8)
    raw = np.concatenate([choice.astype(np.uint8)[:, None], rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image)


def _even_size(frames: np.ndarray) -> np.ndarray:
    """Pad [F, H, W, C] to even H and W by repeating the last row / column (yuv420p needs it)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _quantize(rgb: np.ndarray, colors: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Median-cut palette [K, 3] for all frames, and palette indices [F, H, W] (nearest colour)."""
    wide = rgb.astype(np.int32)
    packed = (wide[..., 0] << 16) | (wide[..., 1] << 8) | wide[..., 2]
    unique, inverse, counts = np.unique(packed.ravel(), return_inverse=True, return_counts=True)
    unique_rgb = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], -1)
    palette = _median_cut(unique_rgb, counts, colors)
    # Nearest palette entry per unique colour: |a - b|^2 = |a|^2 - 2 a.b + |b|^2, in chunks.
    lut = np.empty(len(unique_rgb), np.uint8)
    pal = palette.astype(np.float32)
    for start in range(0, len(unique_rgb), 65536):
        chunk = unique_rgb[start : start + 65536].astype(np.float32)
        distance = (pal**2).sum(1)[None] - 2 * chunk @ pal.T
        lut[start : start + 65536] = distance.argmin(1)
    return palette, lut[inverse].reshape(rgb.shape[:-1])


def _median_cut(colors_rgb: np.ndarray, counts: np.ndarray, colors: int) -> np.ndarray:
    """Split the colour box with the widest channel at its weighted median until `colors` boxes."""
    boxes = [(colors_rgb, counts)]
    spans = [int(np.ptp(colors_rgb, axis=0).max())]
    while len(boxes) < colors and max(spans) > 0:
        box_rgb, box_counts = boxes.pop(index := int(np.argmax(spans)))
        spans.pop(index)
        channel = int(np.ptp(box_rgb, axis=0).argmax())
        order = np.argsort(box_rgb[:, channel], kind="stable")
        box_rgb, box_counts = box_rgb[order], box_counts[order]
        cumulative = np.cumsum(box_counts)
        cut = int(np.searchsorted(cumulative, cumulative[-1] / 2))
        cut = min(max(cut, 1), len(box_rgb) - 1)
        for part_rgb, part_counts in ((box_rgb[:cut], box_counts[:cut]),
                                      (box_rgb[cut:], box_counts[cut:])):
            boxes.append((part_rgb, part_counts))
            spans.append(int(np.ptp(part_rgb, axis=0).max()) if len(part_rgb) > 1 else 0)
    weights = [box_counts / box_counts.sum() for _, box_counts in boxes]
    means = [(box_rgb * w[:, None]).sum(0) for (box_rgb, _), w in zip(boxes, weights)]
    return np.clip(np.round(means), 0, 255).astype(np.uint8)
