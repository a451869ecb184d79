"""video.py: round trips through MP4 / GIF / PNG folders, limits, atomic writes, the bad corpus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers_train import corpus_outcomes
from vdgen import video
from vdgen.atomic import check_writable
from vdgen.errors import OutputError, VideoInputError
from vdgen.video import contact_sheet, probe_video, read_video, write_png, write_video

DATA = Path(__file__).parent / "data"
BAD = DATA / "bad"
CLIPS = DATA / "clips"


CORPUS = sorted(p.name for p in BAD.iterdir() if p.suffix != ".md")


def moving_frames(frames: int = 6, height: int = 32, width: int = 48, channels: int = 3):
    """Smooth, codec-friendly test frames uint8 [F, H, W, C]."""
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, channels), np.uint8)
    for f in range(frames):
        for c in range(channels):
            out[f, ..., c] = (96 + 80 * np.sin((x + 2 * f) / 7.0 + c) * np.cos(y / 9.0)).astype(
                np.uint8
            )
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ------------------------------------------------------------------------------- the bad corpus


def test_corpus_readme_lists_every_file():
    assert sorted(corpus_outcomes()) == CORPUS
    assert len(CORPUS) >= 30
    assert sum(p.stat().st_size for p in BAD.iterdir()) < 1_500_000


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_file_gives_frames_or_one_clean_error(name):
    expected = corpus_outcomes()[name]
    try:
        frames, fps = read_video(BAD / name)
    except VideoInputError as exc:
        message = str(exc)
        assert "\n" not in message and name in message
        assert expected == "error", f"{name} should decode but raised: {message}"
        return
    assert expected == "frames", f"{name} should fail but decoded {frames.shape}"
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
    assert frames.shape[0] >= 1 and fps > 0


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_probe_never_raises_anything_else(name):
    try:
        info = probe_video(BAD / name)
    except VideoInputError as exc:
        assert "\n" not in str(exc) and name in str(exc)
    else:
        assert info.width >= 0 and info.height >= 0 and info.fps > 0


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("odd_33x17.mp4", (8, 17, 33, 3)),
        ("one_by_one.mkv", (4, 1, 1, 3)),
        ("single_frame.mp4", (1, 48, 64, 3)),
        ("short_3.mp4", (3, 48, 64, 3)),
        ("size_change.h264", (8, 48, 64, 3)),  # later 32x32 frames scaled to the first size
    ],
)
def test_corpus_shapes(name, shape):
    assert read_video(BAD / name)[0].shape == shape


def test_gray_source_reads_as_equal_rgb_channels():
    frames, _ = read_video(BAD / "gray.mkv")
    assert np.array_equal(frames[..., 0], frames[..., 1])
    assert np.array_equal(frames[..., 0], frames[..., 2])


def test_corrupt_middle_keeps_the_other_frames():
    assert 20 <= len(read_video(BAD / "corrupt_mid.mp4")[0]) <= 24


def test_huge_declared_size_is_refused_before_decoding():
    with pytest.raises(VideoInputError, match=r"16000x16000 frames exceed the limit"):
        read_video(BAD / "huge_16000.y4m")
    assert probe_video(BAD / "huge_screen.gif").width == 16000
    with pytest.raises(VideoInputError, match="max-pixels"):
        read_video(BAD / "huge_screen.gif")


def test_messages_for_common_mistakes(tmp_path):
    with pytest.raises(VideoInputError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(VideoInputError, match="file is empty"):
        read_video(BAD / "empty.mp4")
    with pytest.raises(VideoInputError, match=r"no video stream; it has only audio"):
        read_video(BAD / "audio_only.wav")
    with pytest.raises(VideoInputError, match="decoded 0 frames"):
        read_video(BAD / "trunc_after_moov.mp4")
    with pytest.raises(VideoInputError, match="without PNG frames"):
        read_video(tmp_path)


# --------------------------------------------------------------------------------------- limits


def test_max_frames_stops_decoding():
    assert read_video(BAD / "h264.mp4", max_frames=5)[0].shape == (5, 48, 64, 3)


def test_max_pixels_per_frame():
    with pytest.raises(VideoInputError, match=r"h264.mp4: 64x48 frames exceed the limit of 3000"):
        read_video(BAD / "h264.mp4", max_pixels=3000)
    assert len(read_video(BAD / "h264.mp4", max_pixels=64 * 48)[0]) == 24


def test_max_total_pixels():
    with pytest.raises(VideoInputError, match="pixels in total"):
        read_video(BAD / "h264.mp4", max_total_pixels=64 * 48 * 10)
    assert len(read_video(BAD / "h264.mp4", max_total_pixels=64 * 48 * 24)[0]) == 24


# --------------------------------------------------------------------------------- round trips


def test_mp4_round_trip(tmp_path):
    frames = moving_frames(8)
    write_video(tmp_path / "clip.mp4", frames, fps=24)
    back, fps = read_video(tmp_path / "clip.mp4")
    assert back.shape == frames.shape and fps == 24
    assert np.abs(back.astype(int) - frames).mean() < 3  # lossy, but close (crf 18, BT.709)
    data = (tmp_path / "clip.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playable while downloading


def test_mp4_odd_size_is_padded_to_even_by_edge_repeat(tmp_path):
    frames = moving_frames(4, height=17, width=33)
    write_video(tmp_path / "odd.mp4", frames, fps=10)
    back, _ = read_video(tmp_path / "odd.mp4")
    assert back.shape == (4, 18, 34, 3)
    assert np.abs(back[:, :17, :33].astype(int) - frames).mean() < 4
    assert np.abs(back[:, 17].astype(int) - back[:, 16]).mean() < 4  # repeated last row


@pytest.mark.parametrize(("fps", "tolerance"), [(30000 / 1001, 1e-6), (12.5, 1e-9), (7.3, 1e-6)])
def test_fractional_fps_round_trip_mp4(tmp_path, fps, tolerance):
    write_video(tmp_path / "clip.mp4", moving_frames(3), fps=fps)
    assert read_video(tmp_path / "clip.mp4")[1] == pytest.approx(fps, abs=tolerance)


def test_gif_round_trip(tmp_path):
    frames = moving_frames(5)
    write_video(tmp_path / "clip.gif", frames, fps=12.5)  # 8/100 s per frame: exact in GIF
    back, fps = read_video(tmp_path / "clip.gif")
    assert back.shape == frames.shape and fps == pytest.approx(12.5)
    assert np.abs(back.astype(int) - frames).mean() < 6  # one 256-colour palette


def test_png_folder_round_trip_is_lossless(tmp_path):
    frames = moving_frames(3, height=9, width=11)
    write_video(tmp_path / "frames", frames, fps=8)
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    back, fps = read_video(tmp_path / "frames")
    assert np.array_equal(back, frames) and fps == video.DEFAULT_FPS
    assert probe_video(tmp_path / "frames").frames_estimate == 3


def test_png_folder_rewrite_drops_stale_frames(tmp_path):
    write_video(tmp_path / "frames", moving_frames(4), fps=8)
    write_video(tmp_path / "frames", moving_frames(2), fps=8)
    assert len(read_video(tmp_path / "frames")[0]) == 2


def test_interrupted_png_folder_rewrite_keeps_the_earlier_folder(tmp_path, monkeypatch):
    first = moving_frames(4)
    write_video(tmp_path / "frames", first, fps=8)
    calls = []
    real = video.write_png

    def interrupted(path, image):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(path, image)

    monkeypatch.setattr(video, "write_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "frames", moving_frames(3), fps=8)
    assert np.array_equal(read_video(tmp_path / "frames")[0], first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # no staging folder left


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ""])
def test_one_channel_input(tmp_path, suffix):
    gray = moving_frames(3, channels=1)
    write_video(tmp_path / f"gray{suffix}", gray, fps=10)
    back, _ = read_video(tmp_path / f"gray{suffix}")
    assert back.shape == (3, 32, 48, 3)
    assert np.abs(back.astype(int) - gray).mean() < 6


def test_write_png_and_contact_sheet(tmp_path):
    videos = np.stack([moving_frames(3, 8, 10), moving_frames(3, 8, 10)])
    sheet = contact_sheet(videos, pad=2)
    assert sheet.shape == (2 + 2 * 10, 2 + 3 * 12, 3)
    assert np.array_equal(sheet[12:20, 14:24], videos[1, 1])
    assert contact_sheet(moving_frames(5, 8, 10), max_cols=2, pad=0).shape == (24, 20, 3)
    write_png(tmp_path / "sheet.png", sheet)
    assert np.array_equal(read_video(tmp_path / "sheet.png")[0][0], sheet)



@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 1), (7, 4, 3), (40, 33, 3), (64, 64, 1)])
def test_png_encoder_round_trips_through_ffmpegs_decoder(tmp_path, shape):
    # vdgen writes PNGs itself (so training needs no PyAV); FFmpeg's decoder is the independent check.
    rng = np.random.default_rng(sum(shape))
    ramps = (np.add.outer(np.arange(shape[0]) * 3, np.arange(shape[1]) * 5) % 256)[..., None]
    image = (ramps.repeat(shape[2], -1) ^ rng.integers(0, 4, shape)).astype(np.uint8)  # smooth plus noise
    image[: shape[0] // 2, : shape[1] // 2] = rng.integers(0, 256, (shape[0] // 2, shape[1] // 2, shape[2]))
    write_png(tmp_path / "x.png", image)
    data = (tmp_path / "x.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = read_video(tmp_path / "x.png")[0][0]
    assert np.array_equal(back, np.repeat(image, 3, -1) if shape[2] == 1 else image)


def test_png_rows_take_every_filter_where_each_pays():
    # A row of noise (none), a horizontal ramp (sub), a copy of the row above (up), and so on:
    # the encoder picks per row, and a smooth image deflates far below its raw size.
    import zlib

    x = np.arange(64, dtype=np.int64)
    image = np.stack([(x * 7 + 3 * r) % 256 for r in range(64)]).astype(np.uint8)[..., None]
    raw = zlib.decompress(video._png_bytes(image)[41:-16])  # IDAT payload: after signature, IHDR, IDAT head; before its CRC and IEND
    filters = {raw[r * 65] for r in range(64)}
    assert filters - {0}, "only the 'none' filter was used"
    assert len(video._png_bytes(image)) < image.size // 8


# ------------------------------------------------------------------------- errors and atomicity


def test_unknown_suffix_and_bad_fps_are_output_errors(tmp_path):
    with pytest.raises(OutputError, match="unknown video suffix '.avi'"):
        write_video(tmp_path / "clip.avi", moving_frames(2), fps=10)
    with pytest.raises(OutputError, match="fps must be a positive number"):
        write_video(tmp_path / "clip.mp4", moving_frames(2), fps=0)
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_an_output_error(tmp_path):
    for name in ("clip.mp4", "clip.gif", "frames"):
        with pytest.raises(OutputError, match="does not exist|No such file"):
            write_video(tmp_path / "missing" / name, moving_frames(2), fps=10)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError("encoder broke"), KeyboardInterrupt()])
def test_failed_write_leaves_no_temporary_file_and_keeps_the_old_one(tmp_path, monkeypatch, error):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")

    def broken(tmp, frames, rate):
        tmp.write_bytes(b"half a video")
        raise error

    monkeypatch.setattr(video, "_encode_mp4", broken)
    with pytest.raises(type(error)):
        write_video(target, moving_frames(2), fps=10)
    assert leftovers(tmp_path) == [] and target.read_bytes() == b"old"


def test_existing_file_is_the_callers_decision(tmp_path):
    target = tmp_path / "clip.gif"
    write_video(target, moving_frames(2), fps=10)
    with pytest.raises(OutputError, match="already exists"):
        check_writable(target, overwrite=False)
    write_video(target, moving_frames(3), fps=10)  # write_video itself replaces atomically
    assert len(read_video(target)[0]) == 3 and leftovers(tmp_path) == []


def test_bad_frame_arrays_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        write_video("x.mp4", np.zeros((1, 4, 4, 3), np.float32), fps=10)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        write_video("x.mp4", np.zeros((1, 4, 4, 4), np.uint8), fps=10)


# ---------------------------------------------------------------------------------- real clips


@pytest.mark.parametrize(
    ("name", "shape", "fps"),
    [
        ("cockatoo_71x45.mp4", (12, 45, 71, 3), 20.0),
        ("newtonscradle_100x75.gif", (9, 75, 100, 3), 12.5),
        ("asl_again_80x60.mkv", (12, 60, 80, 3), 30.0),
    ],
)
def test_real_clips(name, shape, fps):
    frames, got_fps = read_video(CLIPS / name)
    assert frames.shape == shape and got_fps == pytest.approx(fps)
    assert frames.std() > 10  # real content, not a blank frame


def test_import_does_not_load_av():
    code = "import sys, vdgen.video; assert 'av' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
