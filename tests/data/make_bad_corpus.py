"""Make the bad-input corpus in tests/data/bad/: odd, broken and hostile files for `read_video`.

Every file is small (tens of KB at most) and made deterministically with PyAV and numpy only, so
rerunning the script reproduces the same corpus with the same libav versions. Each entry states
what it exercises and its expected outcome: `frames` (decodes to at least one frame) or `error`
(a one-line `VideoInputError` naming the file). README.md is generated from the same table and
tests/test_video.py checks every file against it.

Run from anywhere:  python tests/data/make_bad_corpus.py
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

OUT = Path(__file__).resolve().parent / "bad"
WIDTH, HEIGHT = 64, 48


def pattern(frames: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """A moving colour gradient with a bright square, uint8 [F, H, W, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    video = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        video[f, ..., 0] = (x * 255 // max(width - 1, 1) + 8 * f) % 256
        video[f, ..., 1] = (y * 255 // max(height - 1, 1) + 5 * f) % 256
        video[f, ..., 2] = 128 + 60 * np.sin((x + y + 3 * f) / 6.0)
        side = max(1, min(height, width) // 4)
        top, left = (2 * f) % max(height - side, 1), (3 * f) % max(width - side, 1)
        video[f, top : top + side, left : left + side] = 250
    noise = rng.integers(0, 8, video.shape, dtype=np.uint8)
    return np.clip(video.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def encode(
    path: Path,
    video: np.ndarray,
    codec: str,
    pix_fmt: str,
    *,
    fps: Fraction = Fraction(24),
    container_format: str | None = None,
    codec_options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    input_format: str = "rgb24",
) -> None:
    """Encode `video` ([F, H, W, C] in `input_format`) with one video stream."""
    # bitexact: no random segment UIDs or dates, so reruns give identical bytes.
    options = {"fflags": "+bitexact", **(container_options or {})}
    with av.open(str(path), "w", format=container_format, container_options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = pix_fmt
        stream.codec_context.thread_count = 1
        if time_base is not None:
            stream.codec_context.time_base = time_base
        threads = {"threads": "1"} if codec.startswith("lib") else {}
        stream.options = {**threads, **(codec_options or {})}
        container.start_encoding()  # writes the header even when there are no frames
        for index, image in enumerate(video):
            frame = av.VideoFrame.from_ndarray(image, format=input_format)
            frame.pts = index if pts is None else pts[index]
            if time_base is not None:
                frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def h264(path: Path, video: np.ndarray, pix_fmt: str = "yuv420p", **kwargs) -> None:
    encode(path, video, "libx264", pix_fmt, codec_options={"preset": "veryfast"}, **kwargs)


def audio_only(path: Path, codec: str, container_format: str | None = None) -> None:
    """One second of a 440 Hz tone and no video stream."""
    rate = 16000
    options = {"fflags": "+bitexact"}
    with av.open(str(path), "w", format=container_format, container_options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        sample_fmt = stream.codec_context.codec.audio_formats[0].name
        frame_size = stream.codec_context.frame_size or 1024
        t = np.arange(rate) / rate
        tone = 0.3 * np.sin(2 * np.pi * 440 * t)
        for start in range(0, rate, frame_size):
            chunk = tone[start : start + frame_size]
            if sample_fmt.startswith("s16"):
                data = (chunk * 32767).astype(np.int16)[None]
            else:
                data = chunk.astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(data, format=sample_fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def find_box(data: bytes, name: bytes) -> tuple[int, int]:
    """(offset, size) of the top-level MP4 box `name`."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == name:
            return offset, size
        if size < 8:
            break
        offset += size
    raise ValueError(f"no {name!r} box")


def gif_with_local_palettes(path: Path) -> None:
    """A GIF whose frames each carry their own (different) palette."""
    video = pattern(6, 32, 40, seed=3)
    with av.open(str(path), "w", format="gif") as container:
        stream = container.add_stream("gif", rate=10)
        stream.width, stream.height, stream.pix_fmt = 40, 32, "pal8"
        for index, image in enumerate(video):
            # A per-frame palette: 256 random colours that differ between frames.
            rng = np.random.default_rng(100 + index)
            rgb = rng.integers(0, 256, (256, 3), dtype=np.uint8)
            distance = ((image[:, :, None, :].astype(np.int32) - rgb[None, None]) ** 2).sum(-1)
            indices = distance.argmin(-1).astype(np.uint8)
            argb = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)
            frame = av.VideoFrame.from_ndarray((indices, argb), format="pal8")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def gif_huge_screen(path: Path) -> None:
    """A 35-byte GIF whose logical screen claims 16000x16000 (a 1 GB decompression bomb)."""
    header = b"GIF89a" + struct.pack("<HHBBB", 16000, 16000, 0x80, 0, 0)
    palette = bytes([0, 0, 0, 255, 255, 255])
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    # LZW, minimum code size 2: codes clear(4), 0, end(5) at 3 bits each, packed LSB first.
    pixels = bytes([2, 2, 0x44, 0x01, 0])
    path.write_bytes(header + palette + image + pixels + b"\x3b")


def y4m(path: Path, width: int, height: int, frames: int, cut: int = 0) -> None:
    """A YUV4MPEG2 stream of grey frames; `cut` bytes are removed from the end."""
    plane = width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)
    header = f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode()
    body = b"".join(b"FRAME\n" + bytes([(16 * f) % 256]) * plane for f in range(frames))
    data = header + body
    path.write_bytes(data[: len(data) - cut] if cut else data)


def make_all(out: Path) -> list[tuple[str, str, str]]:
    """Write every corpus file into `out`; return (name, what it exercises, outcome) rows."""
    rows: list[tuple[str, str, str]] = []

    def add(name: str, what: str, outcome: str, make: Callable[[Path], None]) -> None:
        make(out / name)
        rows.append((name, what, outcome))

    video = pattern(24)
    ref = out / "h264.mp4"
    add("h264.mp4", "reference: H.264 yuv420p 64x48, 24 frames, moov at the end", "frames",
        lambda p: h264(p, video))
    add("h264_faststart.mp4", "H.264 with moov before mdat (faststart)", "frames",
        lambda p: h264(p, video, container_options={"movflags": "+faststart"}))
    faststart = (out / "h264_faststart.mp4").read_bytes()
    for percent in (10, 50, 90):
        cut = faststart[: len(faststart) * percent // 100]
        damage = "inside the moov (the index)" if percent == 10 else "in the media data"
        add(f"trunc_faststart_{percent}.mp4", f"faststart MP4 cut at {percent}%, {damage}",
            "error" if percent == 10 else "frames",
            lambda p, cut=cut: p.write_bytes(cut))
    moov_end = sum(find_box(faststart, b"moov"))
    add("trunc_after_moov.mp4", "faststart MP4 cut 16 bytes after the moov: index, no frames",
        "error", lambda p: p.write_bytes(faststart[: moov_end + 16]))
    plain = ref.read_bytes()
    for percent in (50, 90):
        cut = plain[: len(plain) * percent // 100]
        add(f"trunc_{percent}.mp4", f"MP4 cut at {percent}%: moov (the index) lost", "error",
            lambda p, cut=cut: p.write_bytes(cut))
    add("header_only.mp4", "only the first 40 bytes (ftyp) of an MP4", "error",
        lambda p: p.write_bytes(plain[:40]))

    def corrupt_middle(p: Path) -> None:
        data = bytearray(plain)
        offset, size = find_box(plain, b"mdat")
        middle = offset + size // 2
        data[middle : middle + 200] = np.random.default_rng(1).bytes(200)
        p.write_bytes(bytes(data))

    add("corrupt_mid.mp4", "200 random bytes overwritten in the middle of mdat", "frames",
        corrupt_middle)
    add("garbage_tail.mp4", "valid MP4 followed by 4 KB of random bytes", "frames",
        lambda p: p.write_bytes(plain + np.random.default_rng(2).bytes(4096)))
    add("mp4_named.gif", "MP4 data with a .gif extension", "frames",
        lambda p: p.write_bytes(plain))
    add("fps_ntsc.mp4", "fractional frame rate 30000/1001", "frames",
        lambda p: h264(p, video[:12], fps=Fraction(30000, 1001)))
    add("single_frame.mp4", "a one-frame video", "frames", lambda p: h264(p, video[:1]))
    add("short_3.mp4", "3 frames (shorter than a typical 4-frame context)", "frames",
        lambda p: h264(p, video[:3]))
    add("odd_33x17.mp4", "odd width and height (H.264 4:4:4)", "frames",
        lambda p: h264(p, pattern(8, 17, 33), "yuv444p"))
    add("yuv422p.mp4", "H.264 High 4:2:2", "frames", lambda p: h264(p, video[:8], "yuv422p"))
    add("yuv420p10.mp4", "H.264 High 10 (yuv420p10le)", "frames",
        lambda p: h264(p, video[:8], "yuv420p10le"))
    add("one_by_one.mkv", "a 1x1 video (FFV1 4:4:4 in Matroska)", "frames",
        lambda p: encode(p, pattern(4, 1, 1), "ffv1", "yuv444p"))
    add("gray.mkv", "grayscale (FFV1 gray)", "frames",
        lambda p: encode(p, video[:6, :, :, :1], "ffv1", "gray", input_format="gray"))
    add("gray10.mkv", "10-bit grayscale (FFV1 gray10le)", "frames",
        lambda p: encode(p, video[:6, :, :, :1], "ffv1", "gray10le", input_format="gray"))
    alpha = np.concatenate([video[:6], np.full((6, HEIGHT, WIDTH, 1), 128, np.uint8)], axis=-1)
    add("alpha.mov", "RGBA with alpha (QuickTime RLE argb)", "frames",
        lambda p: encode(p, alpha, "qtrle", "argb", input_format="rgba"))
    add("alpha_ffv1.mkv", "RGBA with alpha (FFV1 bgra in Matroska)", "frames",
        lambda p: encode(p, alpha, "ffv1", "bgra", input_format="rgba"))
    add("vfr.mkv", "variable frame rate: irregular timestamps", "frames",
        lambda p: h264(p, video[:10], pts=[0, 40, 50, 130, 140, 150, 300, 310, 420, 500],
                       time_base=Fraction(1, 1000)))
    add("local_palette.gif", "GIF with a different local palette per frame", "frames",
        gif_with_local_palettes)
    add("mpeg1.mpg", "MPEG-1 video in an MPEG program stream", "frames",
        lambda p: encode(p, video[:12], "mpeg1video", "yuv420p", fps=Fraction(25)))
    add("mpeg2.mpg", "MPEG-2 video in an MPEG program stream", "frames",
        lambda p: encode(p, video[:12], "mpeg2video", "yuv420p", fps=Fraction(25)))
    mpeg2 = (out / "mpeg2.mpg").read_bytes()
    add("mpeg2_garbage_mid.mpg", "MPEG-2 with 512 random bytes spliced into the middle",
        "frames", lambda p: p.write_bytes(
            mpeg2[: len(mpeg2) // 2] + np.random.default_rng(4).bytes(512)
            + mpeg2[len(mpeg2) // 2 :]))
    add("vp8.webm", "VP8 in WebM", "frames",
        lambda p: encode(p, video[:8], "libvpx", "yuv420p", codec_options={"cpu-used": "8"}))
    add("vp9.webm", "VP9 in WebM", "frames",
        lambda p: encode(p, video[:8], "libvpx-vp9", "yuv420p",
                         codec_options={"cpu-used": "8", "deadline": "realtime"}))
    add("h264.mkv", "H.264 in Matroska", "frames", lambda p: h264(p, video[:12]))
    add("mjpeg.avi", "Motion JPEG in AVI", "frames",
        lambda p: encode(p, video[:6], "mjpeg", "yuvj420p"))
    add("mpeg4.avi", "MPEG-4 part 2 in AVI", "frames",
        lambda p: encode(p, video[:8], "mpeg4", "yuv420p"))
    add("raw.h264", "raw H.264 Annex B stream: no container, no frame rate", "frames",
        lambda p: h264(p, video[:8], container_format="h264"))

    def size_change(p: Path) -> None:
        first, second = out / ".a.h264", out / ".b.h264"
        h264(first, video[:4], container_format="h264")
        h264(second, pattern(4, 32, 32), container_format="h264")
        p.write_bytes(first.read_bytes() + second.read_bytes())
        first.unlink()
        second.unlink()

    add("size_change.h264", "frame size changes mid-stream (64x48 then 32x32)", "frames",
        size_change)
    add("still.png", "a single PNG image", "frames",
        lambda p: encode(p, video[:1], "png", "rgb24", container_format="image2"))
    add("trunc_body.y4m", "YUV4MPEG2 16x16, 5 frames, last frame cut short", "frames",
        lambda p: y4m(p, 16, 16, 5, cut=100))
    for side, note in ((16000, "a 384 MB frame, over vdgen's limit"),
                       (30000, "over libav's own limit")):
        header = f"YUV4MPEG2 W{side} H{side} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode()
        add(f"huge_{side}.y4m", f"YUV4MPEG2 header declaring {side}x{side} ({note}), no body",
            "error", lambda p, header=header: p.write_bytes(header + bytes(64)))
    add("huge_screen.gif", "35-byte GIF declaring a 16000x16000 screen (1 GB decoded)",
        "error", gif_huge_screen)
    add("zero_frames.mkv", "Matroska with a video stream and no frames", "error",
        lambda p: h264(p, video[:0]))
    add("zero_frames.mp4", "MP4 with an empty video track", "error",
        lambda p: h264(p, video[:0]))
    add("audio_only.m4a", "AAC audio in MP4, no video stream", "error",
        lambda p: audio_only(p, "aac", "mp4"))
    add("audio_only.mp4", "AAC audio named .mp4, no video stream", "error",
        lambda p: audio_only(p, "aac", "mp4"))
    add("audio_only.wav", "PCM WAV, no video stream", "error",
        lambda p: audio_only(p, "pcm_s16le", "wav"))
    add("empty.mp4", "zero-byte file", "error", lambda p: p.write_bytes(b""))
    add("empty.gif", "zero-byte GIF", "error", lambda p: p.write_bytes(b""))
    add("random.mp4", "8 KB of random bytes named .mp4", "error",
        lambda p: p.write_bytes(np.random.default_rng(5).bytes(8192)))
    add("random_after_ftyp.mp4", "a valid ftyp box followed by random bytes", "error",
        lambda p: p.write_bytes(plain[: find_box(plain, b"ftyp")[1]]
                                + np.random.default_rng(6).bytes(4096)))
    add("text.mp4", "a text file named .mp4", "error",
        lambda p: p.write_text("This is not a video.\n" * 20))
    add("notes.txt", "a plain text file", "error",
        lambda p: p.write_text("frame 1: a cat\nframe 2: another cat\n"))
    return rows


def write_readme(out: Path, rows: list[tuple[str, str, str]]) -> None:
    lines = [
        "# Bad-input corpus for `read_video`",
        "",
        "Made by `tests/data/make_bad_corpus.py` (do not edit by hand; rerun the script).",
        "Outcome `frames`: decodes to at least one RGB frame. Outcome `error`: a one-line",
        "`VideoInputError` naming the file. No other exception is allowed for any file.",
        "Policy (src/vdgen/video.py): a packet that fails to decode is skipped; a truncated file",
        "gives the frames before the cut; declared sizes over `max_pixels` fail before decoding.",
        "",
        "| file | exercises | outcome |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {what} | {outcome} |" for name, what, outcome in rows]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.is_file() and old.suffix != ".md":  # keep notes such as OUTCOMES.md
            old.unlink()
    av.logging.set_level(av.logging.ERROR)
    rows = make_all(OUT)
    write_readme(OUT, rows)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(rows)} files ({total / 1024:.0f} KB) to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
