"""Training data from the user's own folders: video clips, or still images for image-only training.

`folder_dataset(path, model_config, train_config)` looks at every file under `path`, recursively
(hidden files and folders skipped), and gives an object with MovingMNIST's interface (`video`,
`frames`, `seed`, `channels`, `images_only`, `image_source`), so `vdgen.data.make_batch` and the
training loop use it unchanged:

- a *video folder*, if at least one file decodes as a video (any format PyAV reads): sample
  `index` is F frames `frame_skip` apart from one clip; the clip and the start frame are a pure
  function of (seed, index). A clip shorter than the (F - 1) * skip + 1 frames a sample spans is
  looped by reflection (0 1 2 1 0 1 ...), so motion stays continuous and short clips still count.
  Image files in a video folder are ignored.
- an *image folder*, if no file is a video but some are images (png, jpg, ...): sample `index`
  is F independent images and `images_only` is True, so make_batch marks every frame as an image,
  temporal attention becomes the identity and the model trains image-only (VDM section 3).

Frames are centre-cropped and resized to the model size (`fit_frames(..., "crop")`) and turned to
luma for 1-channel models. Files that fail to decode are skipped (reported once through `report`);
a folder with nothing readable is a one-line error. Only the first
min(MAX_CLIP_FRAMES, DECODE_PIXELS / (H * W)) frames of a clip are used (decoding cannot seek
here), so cut long videos into shorter files. Resized uint8 frames are cached in memory per file
(LRU, at most `cache_bytes`), so epochs after the first do not decode again; no disk cache.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vdgen.config import ModelConfig, TrainConfig
from vdgen.data import ClipDataset
from vdgen.errors import ConfigError, VideoInputError
from vdgen.frames import fit_frames, to_luma, to_model
from vdgen.video import read_video

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MAX_CLIP_FRAMES = 1024
DECODE_PIXELS = 2**28  # full-size RGB pixels decoded at once per clip (about 768 MB)
CACHE_BYTES = 2 * 2**30

Report = Callable[[str], None]


class FrameCache:
    """Least-recently-used cache of uint8 arrays by key, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, key: int) -> np.ndarray | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: int, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes or key in self._entries:
            return
        while self._entries and self.nbytes + value.nbytes > self.max_bytes:
            self.nbytes -= self._entries.popitem(last=False)[1].nbytes
        self._entries[key] = value
        self.nbytes += value.nbytes

    def __len__(self) -> int:
        return len(self._entries)


class _FolderFiles:
    """Decodes files of one folder to model-size uint8 frames [N, h, w, C], cached, skipping bad ones."""

    def __init__(
        self, root: Path, files: list[Path], size: tuple[int, int], channels: int,
        max_frames: list[int], report: Report | None, cache_bytes: int,
    ) -> None:
        self.root, self.files, self.size, self.channels = root, files, size, channels
        self.max_frames = max_frames
        self.report = report
        self.cache = FrameCache(cache_bytes)
        self.unreadable: set[int] = set()

    def load(self, choice: int) -> np.ndarray:
        """Frames of file `choice`, or of the next readable file after it (deterministic)."""
        for offset in range(len(self.files)):
            index = (choice + offset) % len(self.files)
            if index in self.unreadable:
                continue
            frames = self.cache.get(index)
            if frames is None:
                frames = self._decode(index)
                if frames is None:
                    continue
                self.cache.put(index, frames)
            return frames
        raise VideoInputError(f"{self.root}: none of its {len(self.files)} files could be decoded")

    def _decode(self, index: int) -> np.ndarray | None:
        try:
            frames, _ = read_video(self.files[index], max_frames=self.max_frames[index])
        except VideoInputError as exc:
            self.unreadable.add(index)
            if self.report:
                self.report(f"skipping unreadable training file: {exc}")
            return None
        if self.channels == 1:
            frames = to_luma(frames)
        return fit_frames(frames, self.size, mode="crop")


class VideoFolder:
    """Clips of a folder of videos; `video(index)` is F frames `frame_skip` apart from one clip."""

    images_only = False

    def __init__(
        self, files: _FolderFiles, frames: int, frame_skip: int, seed: int,
        image_source: ClipDataset | None = None,
    ) -> None:
        self._files = files
        self.frames, self.frame_skip, self.seed = frames, frame_skip, seed
        self.channels = files.channels
        self.image_source = image_source

    @property
    def clips(self) -> list[Path]:
        return self._files.files

    def video(self, index: int) -> torch.Tensor:
        """Sample `index` as float [C, F, H, W] in [-1, 1]: clip and start drawn from (seed, index)."""
        rng = np.random.default_rng([self.seed, 3, index])
        choice, u = int(rng.integers(len(self.clips))), float(rng.random())
        clip = self._files.load(choice)
        span = (self.frames - 1) * self.frame_skip + 1
        start = int(u * max(1, len(clip) - span + 1))
        positions = reflect(start + self.frame_skip * np.arange(self.frames), len(clip))
        return to_model(clip[positions])


class ImageFolder:
    """Images of a folder; `video(index)` is F independent images, all marked as images for training."""

    images_only = True

    def __init__(self, files: _FolderFiles, frames: int, seed: int, image_source: ClipDataset | None = None) -> None:
        self._files = files
        self.frames, self.seed = frames, seed
        self.channels = files.channels
        self.image_source = image_source

    @property
    def images(self) -> list[Path]:
        return self._files.files

    def video(self, index: int) -> torch.Tensor:
        """Sample `index` as float [C, F, H, W] in [-1, 1]: F images drawn from (seed, index)."""
        rng = np.random.default_rng([self.seed, 4, index])
        picks = rng.integers(len(self.images), size=self.frames)
        return to_model(np.concatenate([self._files.load(int(p))[:1] for p in picks]))


def reflect(positions: np.ndarray, length: int) -> np.ndarray:
    """Frame positions looped back and forth over [0, length): 0 1 2 1 0 1 2 ... for length 3."""
    if length == 1:
        return np.zeros_like(positions)
    period = 2 * (length - 1)
    phase = positions % period
    return np.where(phase < length, phase, period - phase)


def folder_dataset(
    path: Path, model_config: ModelConfig, train_config: TrainConfig, report: Report | None = None,
    cache_bytes: int = CACHE_BYTES,
) -> VideoFolder | ImageFolder:
    """The dataset of a folder of videos or of images, sized for `model_config` (see module doc).

    `train_config.image_dataset`, when set, names a second folder whose frames (images, or frames
    of videos) are joint training's K appended images instead of frames of other clips.
    """
    root = Path(path)
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such folder"
        raise ConfigError(f"dataset {root}: {what} (use moving-mnist, or a folder of videos or images)")
    files = _list_files(root)
    if not files:
        raise ConfigError(f"dataset {root}: the folder holds no files")
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    clips, max_frames, failures = _readable_clips([f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES])
    size, m, t = (model_config.height, model_config.width), model_config, train_config
    image_source = None
    if t.image_dataset:
        image_source = folder_dataset(
            Path(t.image_dataset), dataclasses.replace(m, frames=1), dataclasses.replace(t, image_dataset=""),
            report, cache_bytes,
        )
    skipped = f", {len(failures)} unreadable files skipped (first: {failures[0]})" if failures else ""
    if clips:
        dataset: VideoFolder | ImageFolder = VideoFolder(
            _FolderFiles(root, clips, size, m.channels, max_frames, report, cache_bytes),
            m.frames, t.frame_skip, t.seed, image_source,
        )
        ignored = f", {len(images)} images ignored" if images else ""
        summary = f"dataset {root}: {len(clips)} video clips{skipped}{ignored}"
    elif images:
        dataset = ImageFolder(
            _FolderFiles(root, images, size, m.channels, [1] * len(images), report, cache_bytes),
            m.frames, t.seed, image_source,
        )
        dataset._files.load(0)  # fail now, not at step 1, if no image decodes
        summary = f"dataset {root}: {len(images)} images, image-only training{skipped}"
    else:
        raise VideoInputError(f"dataset {root}: none of its {len(files)} files is a readable video or image (first: {failures[0]})")
    if report:
        report(summary)
    return dataset


def _list_files(root: Path) -> list[Path]:
    """Regular files under `root` in a fixed (sorted) order, hidden files and folders left out."""
    try:
        found = [
            p for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
    except OSError as exc:
        raise VideoInputError(f"dataset {root}: cannot list folder ({exc.strerror or exc})") from None
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _readable_clips(candidates: list[Path]) -> tuple[list[Path], list[int], list[str]]:
    """Files whose first frame decodes, the frame count to decode from each, and the failures."""
    clips, max_frames, failures = [], [], []
    for path in candidates:
        try:
            first, _ = read_video(path, max_frames=1)
        except VideoInputError as exc:
            failures.append(str(exc))
            continue
        clips.append(path)
        max_frames.append(max(1, min(MAX_CLIP_FRAMES, DECODE_PIXELS // (first.shape[1] * first.shape[2]))))
    return clips, max_frames, failures
