"""Make the small real clips in tests/data/clips/ from the shared videos (../shared/data/videos).

The outputs are committed, so tests never need ../shared; rerun this script to remake them.

    python tests/data/make_clips.py [SOURCE_FOLDER]
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vdgen.frames import fit_frames
from vdgen.video import read_video, write_video

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared" / "data" / "videos"
OUT = Path(__file__).resolve().parent / "clips"


def encode_h264(path: Path, frames: np.ndarray, fps: float, pix_fmt: str) -> None:
    """H.264 at the frames' exact size (yuv444p allows odd sizes, unlike vdgen's MP4 writer)."""
    options = {"fflags": "+bitexact"}
    with av.open(str(path), "w", container_options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = {"crf": "20", "preset": "veryfast", "threads": "1"}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def main(source: Path = SOURCE) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cockatoo, fps = read_video(source / "cockatoo.mp4", max_frames=12)
    encode_h264(OUT / "cockatoo_71x45.mp4", fit_frames(cockatoo, (45, 71), "crop"), fps, "yuv444p")

    cradle, fps = read_video(source / "newtonscradle.gif", max_frames=36)
    write_video(OUT / "newtonscradle_100x75.gif", fit_frames(cradle[::4], (75, 100)), fps / 4)

    asl, fps = read_video(source / "asl" / "again.mkv", max_frames=12)
    encode_h264(OUT / "asl_again_80x60.mkv", fit_frames(asl, (60, 80), "stretch"), fps, "yuv420p")

    for clip in sorted(OUT.iterdir()):
        print(f"{clip.name}: {clip.stat().st_size / 1024:.0f} KB", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
