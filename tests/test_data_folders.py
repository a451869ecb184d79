"""Datasets from folders of videos and images (vdgen.data_folders) and their batches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import vdgen.data_folders as data_folders
from helpers_train import corpus_outcomes
from vdgen.checkpoint import build_network
from vdgen.config import TrainConfig, from_dict, preset
from vdgen.data import make_batch
from vdgen.data_folders import FrameCache, ImageFolder, VideoFolder, folder_dataset, reflect
from vdgen.errors import ConfigError, TrainingError, VideoInputError
from vdgen.train import make_dataset
from vdgen.video import write_png, write_video

BAD_CORPUS = Path(__file__).parent / "data" / "bad"
TINY = preset("tiny")  # 1 x 4 frames x 16 x 16


def gray_clip(values: list[int], height: int = 20, width: int = 24) -> np.ndarray:
    """uint8 [F, H, W, 3] whose frame k is uniformly grey at values[k]."""
    return np.broadcast_to(np.asarray(values, np.uint8)[:, None, None, None], (len(values), height, width, 3)).copy()


def make_video_folder(folder: Path) -> Path:
    """Three small clips (MP4, GIF, one in a subfolder) with distinct grey levels per frame."""
    (folder / "sub").mkdir(parents=True)
    write_video(folder / "a.mp4", gray_clip([20 + 20 * k for k in range(10)]), 10)
    write_video(folder / "b.gif", gray_clip([200 - 15 * k for k in range(8)], 18, 30), 10)
    write_video(folder / "sub" / "c.mp4", gray_clip([60, 90, 120, 150, 180, 210]), 10)
    return folder


def make_image_folder(folder: Path, values: tuple[int, ...] = (10, 70, 130, 190, 250)) -> Path:
    folder.mkdir(parents=True)
    for value in values:
        write_png(folder / f"img_{value:03d}.png", gray_clip([value], 24, 32)[0])
    return folder


def dataset(folder: Path, **train_changes) -> VideoFolder | ImageFolder:
    return folder_dataset(folder, TINY.model, dataclasses.replace(TINY.train, **train_changes))


def levels(x: torch.Tensor) -> np.ndarray:
    """Mean grey level in [0, 255] of each frame of [C, F, H, W]."""
    return ((x.mean(dim=(0, 2, 3)) + 1) * 127.5).numpy()


def test_video_folder_samples_are_model_sized_and_deterministic(tmp_path):
    folder = make_video_folder(tmp_path / "videos")
    first = dataset(folder)
    assert isinstance(first, VideoFolder) and not first.images_only
    assert [p.name for p in first.clips] == ["a.mp4", "b.gif", "c.mp4"]
    samples = [first.video(i) for i in range(12)]
    assert all(s.shape == (1, 4, 16, 16) and s.dtype == torch.float32 for s in samples)
    assert all(-1 <= float(s.min()) and float(s.max()) <= 1 for s in samples)
    # A fresh dataset read in another order gives the same samples: (seed, index) decides.
    second = dataset(folder)
    for i in reversed(range(12)):
        assert torch.equal(second.video(i), samples[i])
    assert not torch.equal(dataset(folder, seed=1).video(0), samples[0]) or not torch.equal(
        dataset(folder, seed=1).video(1), samples[1]
    )


def test_frames_are_frame_skip_apart(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    write_video(folder / "ramp.mp4", gray_clip([20 + 20 * k for k in range(10)]), 10)
    for skip in (1, 2, 3):
        ds = dataset(folder, frame_skip=skip)
        for index in range(4):
            steps = np.diff(levels(ds.video(index)))
            np.testing.assert_allclose(steps, 20 * skip, atol=4)


def test_short_clips_loop_by_reflection(tmp_path):
    np.testing.assert_array_equal(reflect(np.arange(7), 3), [0, 1, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(reflect(np.arange(4), 1), [0, 0, 0, 0])
    folder = tmp_path / "short"
    folder.mkdir()
    write_video(folder / "three.gif", gray_clip([40, 100, 160]), 10)
    # 4 frames 2 apart span 7 frames: positions 0 2 4 6 reflect to 0 2 0 2.
    np.testing.assert_allclose(levels(dataset(folder, frame_skip=2).video(0)), [40, 160, 40, 160], atol=3)


def test_unreadable_files_are_skipped_and_reported_once(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_video(folder / "good.mp4", gray_clip([50] * 6), 10)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 4)
    (folder / "notes.txt").write_text("not a video\n")
    (folder / ".hidden.mp4").write_bytes(b"garbage")  # hidden: not even looked at
    messages: list[str] = []
    ds = folder_dataset(folder, TINY.model, TINY.train, report=messages.append)
    assert [p.name for p in ds.clips] == ["good.mp4"]
    assert len(messages) == 1 and "1 video clips, 2 unreadable files skipped" in messages[0]
    for i in range(5):
        ds.video(i)
    assert len(messages) == 1


def test_bad_corpus_keeps_exactly_the_decodable_clips():
    outcomes = corpus_outcomes()
    messages: list[str] = []
    ds = folder_dataset(BAD_CORPUS, TINY.model, TINY.train, report=messages.append)
    expected = sorted(name for name, outcome in outcomes.items() if outcome == "frames" and not name.endswith(".png"))
    assert sorted(p.name for p in ds.clips) == expected
    errors = sum(outcome == "error" for outcome in outcomes.values()) + len(list(BAD_CORPUS.glob("*.md")))  # the .md notes
    assert f"{errors} unreadable files skipped" in messages[0] and "1 images ignored" in messages[0]


def test_folder_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file.mp4").write_bytes(b"x")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a.mp4").write_bytes(b"nothing here")
    cases = [(tmp_path / "missing", ConfigError), (tmp_path / "file.mp4", ConfigError), (empty, ConfigError),
             (garbage, VideoInputError)]
    for path, error in cases:
        with pytest.raises(error) as info:
            dataset(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_decoded_frames_are_cached(tmp_path, monkeypatch):
    folder = make_video_folder(tmp_path / "videos")
    ds = dataset(folder)
    calls: list[Path] = []
    real = data_folders.read_video

    def counting(path, **kwargs):
        calls.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(data_folders, "read_video", counting)
    for _ in range(2):
        for i in range(20):
            ds.video(i)
    assert len(calls) == len(set(calls)) <= 3
    uncached = folder_dataset(folder, TINY.model, TINY.train, cache_bytes=1)
    calls.clear()
    for i in range(5):
        uncached.video(i)
    assert len(calls) == 5


def test_frame_cache_evicts_least_recently_used():
    cache = FrameCache(max_bytes=300)
    for key in range(3):
        cache.put(key, np.zeros(100, np.uint8))
    cache.get(0)
    cache.put(3, np.zeros(100, np.uint8))
    assert cache.get(1) is None and cache.get(0) is not None and cache.nbytes == 300
    cache.put(9, np.zeros(301, np.uint8))  # larger than the whole cache: not kept
    assert cache.get(9) is None and len(cache) == 3


def test_rgb_models_keep_colour(tmp_path):
    folder = tmp_path / "red"
    folder.mkdir()
    clip = np.zeros((6, 20, 24, 3), np.uint8)
    clip[..., 0] = 220
    write_video(folder / "red.gif", clip, 10)
    model = dataclasses.replace(TINY.model, channels=3)
    x = folder_dataset(folder, model, TINY.train).video(0)
    assert x.shape == (3, 4, 16, 16)
    assert float(x[0].mean()) > 0.6 and float(x[1:].mean()) < -0.9


def test_image_folder_trains_image_only(tmp_path):
    values = (10, 70, 130, 190, 250)
    ds = dataset(make_image_folder(tmp_path / "images", values))
    assert isinstance(ds, ImageFolder) and ds.images_only and len(ds.images) == 5
    frames = np.concatenate([levels(ds.video(i)) for i in range(6)])
    assert all(min(abs(f - v) for v in values) < 1 for f in frames)
    assert len({round(f) for f in frames}) > 1  # frames of one sample are independent images
    x, mask = make_batch(ds, [0, 1, 2], 0)
    assert x.shape == (3, 1, 4, 16, 16) and mask.shape == (3, 4) and bool(mask.all())
    x, mask = make_batch(ds, [0, 1], 2)
    assert x.shape == (2, 1, 6, 16, 16) and bool(mask.all())


def test_all_image_mask_makes_temporal_attention_the_identity():
    torch.manual_seed(0)
    net = build_network(TINY.model).eval()
    with torch.no_grad():
        for param in net.parameters():  # zero-initialised output layers would hide any mixing
            param.add_(0.05 * torch.randn_like(param))
    z = torch.randn(1, 1, 4, 16, 16)
    changed = z.clone()
    changed[:, :, 2] = torch.randn(1, 16, 16)
    logsnr = torch.tensor([0.5])
    images = torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        out, out_changed = net(z, logsnr, images), net(changed, logsnr, images)
        video, video_changed = net(z, logsnr, None), net(changed, logsnr, None)
    keep = [0, 1, 3]
    torch.testing.assert_close(out[:, :, keep], out_changed[:, :, keep], atol=1e-5, rtol=0)
    assert not torch.allclose(video[:, :, keep], video_changed[:, :, keep], atol=1e-4)


def test_joint_batches_from_a_video_folder(tmp_path):
    ds = dataset(make_video_folder(tmp_path / "videos"))
    x, mask = make_batch(ds, [0, 1], 2)
    assert x.shape == (2, 1, 6, 16, 16)
    assert mask.tolist() == [[False] * 4 + [True] * 2] * 2
    again, _ = make_batch(dataset(tmp_path / "videos"), [0, 1], 2)
    assert torch.equal(x, again)


def test_joint_images_from_a_separate_image_folder(tmp_path):
    videos = make_video_folder(tmp_path / "videos")
    images = make_image_folder(tmp_path / "images", (5, 250))
    ds = dataset(videos, image_frames=3, image_dataset=str(images))
    assert isinstance(ds.image_source, ImageFolder) and ds.image_source.frames == 1
    x, mask = make_batch(ds, [0, 1, 2], 3)
    assert x.shape == (3, 1, 7, 16, 16) and mask[:, 4:].all() and not mask[:, :4].any()
    appended = np.concatenate([levels(sample[:, 4:]) for sample in x])
    assert all(min(abs(a - 5), abs(a - 250)) < 1 for a in appended)


def test_image_dataset_config_is_optional_and_checked(tmp_path):
    assert from_dict(TrainConfig, {"dataset": "moving-mnist"}).image_dataset == ""  # old configs still load
    with pytest.raises(ConfigError, match="image_frames"):
        TrainConfig(image_dataset="images")
    config = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, image_frames=2, image_dataset=str(tmp_path)))
    with pytest.raises(TrainingError, match="moving-mnist"):
        make_dataset(config)
