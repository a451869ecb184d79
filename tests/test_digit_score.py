"""bench/digit_score.py: the steadiness score against hand-counted clips, and its controls."""

from __future__ import annotations

import importlib.util
import json
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


def test_score_against_given_digits(digit_score):
    # With the clips' true digits given, a clip that shows other digits throughout scores nothing,
    # though by its own majority it would be steady.
    wrong = clip_of([{4, 9}] * 16)
    right = clip_of([{3, 7}] * 15 + [{3}])
    truth = np.zeros((2, 10))
    truth[:, [3, 7]] = 1
    r = digit_score.score(np.stack([wrong, right]), truth)
    assert r["frames_showing_clip_digits"] == pytest.approx((0 + 15 / 16) / 2)
    assert r["steady_clips"] == 0.5 and r["classes_per_clip"] == 2
    assert digit_score.score(np.stack([wrong, right]))["steady_clips"] == 1.0
    with pytest.raises(ValueError, match="digits must be"):
        digit_score.score(np.stack([wrong, right]), truth[:1])


@pytest.fixture(scope="module")
def eight_frame_checkpoint(tmp_path_factory, tiny_config, make_net) -> Path:
    """The tiny network at 8 frames, 16x16, 1 channel: a Moving MNIST shape with frames to predict."""
    from vdgen.checkpoint import save_model

    net = make_net(0, frames=8)
    path = tmp_path_factory.mktemp("digits") / "eight.safetensors"
    save_model(path, net.state_dict(), net.config, tiny_config.diffusion, {"steps": 3})
    return path


def test_predicted_keeps_context_out_and_is_seeded(digit_score, eight_frame_checkpoint, monkeypatch):
    from vdgen.checkpoint import load_model

    model = load_model(eight_frame_checkpoint)
    real, _ = digit_score.labelled_clips("val", 3, 8, 16, 0)
    args = digit_score.parse_args([str(eight_frame_checkpoint), "--context", "3", "--sampler", "ddim", "--steps", "2"])
    a = digit_score.predicted(model, real, 3, "guidance", args)
    assert a.shape == (3, 5, 16, 16) and a.dtype == np.uint8
    assert np.array_equal(a, digit_score.predicted(model, real, 3, "guidance", args))
    assert not np.array_equal(a, digit_score.predicted(model, real, 3, "replacement", args))

    calls = []

    def fake_extend(denoiser, frames, n_total, *, context, seed, method, sampler_opts, **_):
        # frame k of the output is flat at level 10 k + seed: which frames come back, and whose seed
        calls.append((frames.shape, n_total, context, seed, method, sampler_opts))
        levels = torch.tensor([10.0 * k + seed for k in range(n_total)]) / 127.5 - 1.0
        return levels.view(1, n_total, 1, 1).expand(1, n_total, 16, 16).clone()

    import torch

    monkeypatch.setattr(digit_score, "extend", fake_extend)
    out = digit_score.predicted(model, real, 3, "replacement", args)
    assert [c[3] for c in calls] == [0, 1, 2]  # clip i from seed i
    assert all(c[:3] == ((1, 3, 16, 16), 8, 3) and c[4] == "replacement" for c in calls)
    assert np.array_equal(out[:, :, 0, 0], [[10 * k + i for k in range(3, 8)] for i in range(3)])  # frames 3..7


def test_context_run_end_to_end(digit_score, eight_frame_checkpoint, tmp_path, capsys):
    out = tmp_path / "r.json"
    common = ["--num", "2", "--steps", "2", "--sampler", "ddim", "--classifier-steps", "2", "--classifier-clips", "8",
              "--val-clips", "2", "--threads", "1", "--json", str(out)]
    assert digit_score.main([str(eight_frame_checkpoint), "--context", "3", *common]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["source"] for r in rows] == [
        "real validation clips 0..1, frames 3..7", "the same, blurred 3x3",
        f"{eight_frame_checkpoint} (guidance, ddim 2)", f"{eight_frame_checkpoint} (replacement, ddim 2)"]
    assert all(len(r["per_clip"]["steady_clips"]) == 2 for r in rows)
    printed = capsys.readouterr().out
    assert "predicted from frames 0..2" in printed
    # the second table pairs the replacement row with the guidance row, clip by clip
    paired = printed.split("Paired by clip")[1].splitlines()
    assert f"each row minus {eight_frame_checkpoint} (guidance, ddim 2)" in paired[0]
    assert paired[-1].startswith(f"| {eight_frame_checkpoint} (replacement, ddim 2) | ")

    assert digit_score.main([str(eight_frame_checkpoint), "--context", "4", *common]) == 1
    assert "--context 4 leaves 4 of 8 frames" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--context", "-1"], ["--methods", "guidance,blend"], ["--methods", ","]])
def test_context_options_rejected(digit_score, option, capsys):
    with pytest.raises(SystemExit) as exc:
        digit_score.parse_args(option)
    assert exc.value.code == 2 and option[0] in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--sampler", "dpm++", "--delta", "0.2"], "--delta does not apply to the dpm++ sampler"),
    (["--sampler", "ancestral", "--gamma", "0.3", "--delta", "0.2"], "--delta does not apply to the ancestral sampler"),
    (["--sampler", "pc", "--delta", "0"], "--delta must be in (0, 2]"),
    (["--sampler", "pc", "--delta", "nan"], "--delta must be in (0, 2]"),
    (["--sampler", "ancestral", "--gamma", "2"], "--gamma must be in [0, 1]"),
    (["--methods", "guidance"], "--methods needs --context"),
])
def test_sampler_options_rejected(digit_score, options, message, capsys):
    with pytest.raises(SystemExit):
        digit_score.parse_args(options)
    assert message in capsys.readouterr().err


def test_sampler_options_reach_the_sampler(digit_score):
    args = digit_score.parse_args(["--sampler", "pc", "--gamma", "0.3", "--delta", "0.2"])
    assert args.sampler_opts == {"gamma": 0.3, "delta": 0.2}
    assert digit_score.parse_args(["--sampler", "ddim"]).sampler_opts == {}
    assert digit_score.parse_args(["--sampler", "pc"]).sampler_opts == {"gamma": 0.1, "delta": 0.1}  # the paper's


def test_shifted_shuffle_never_keeps_a_clips_own_frame(digit_score):
    real = np.arange(8 * 5, dtype=np.uint8).reshape(8, 5, 1, 1).repeat(2, 2).repeat(2, 3)
    rows = digit_score.controls(real, shift=1)
    shuffled = rows["the same, frame f from clip i + f + 1"]
    for i in range(8):
        assert all(shuffled[i, f, 0, 0] == real[(i + f + 1) % 8, f, 0, 0] for f in range(5))
    assert "the same, frame f from clip i + f + 1" not in digit_score.controls(real[:5], shift=1)  # needs N >= F + 1


def test_paired_difference_by_hand(digit_score):
    a = digit_score.score(np.stack([clip_of([{3, 7}] * 16), clip_of([{1}] * 8 + [{2}] * 8), clip_of([{4}] * 16)]))
    b = digit_score.score(np.stack([clip_of([{3, 7}] * 16), clip_of([{1}] * 16), clip_of([{4}] * 12 + [{5}] * 4)]))
    assert a["per_clip"]["frames_showing_clip_digits"] == [1.0, 0.0, 1.0]
    mean, se = digit_score.paired_difference(a, b, "frames_showing_clip_digits")
    d = np.array([0.0, 1.0, -0.25])
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    assert digit_score.paired_difference(a, b, "steady_clips") == pytest.approx((0.0, np.std([0, 1, -1], ddof=1) / math.sqrt(3)))
    with pytest.raises(ValueError, match="rows of 3 and 1 clips do not pair"):
        digit_score.paired_difference(a, digit_score.score(clip_of([{4}] * 16)[None]), "steady_clips")


def _payload(digit_score, clips, num, context="0", classifier="c.safetensors", rows=1):
    sampled = [{"source": f"m{i}.safetensors (pc 2)", "steps": 1, "sample_seconds": 1.0, **digit_score.score(np.stack(clips))}
               for i in range(rows)]
    return {"args": {"num": str(num), "context": context, "classifier": classifier},
            "rows": [{"source": "real", "steps": None}, *sampled]}


def test_pair_reads_earlier_runs(digit_score, tmp_path, capsys):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_payload(digit_score, [clip_of([{3, 7}] * 16), clip_of([{1}] * 8 + [{2}] * 8)], 2)))
    b.write_text(json.dumps(_payload(digit_score, [clip_of([{3, 7}] * 16), clip_of([{1}] * 16)], 2)))
    assert digit_score.main(["--pair", str(a), str(b)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    # clip 2 went from 0 to 16 frames showing its digits and became steady: +50 points each, se 50
    assert last == "| m0.safetensors (pc 2) [b.json] | +50.0 ± 50.0 | +50.0 ± 50.0 |"
    assert digit_score.main(["--pair", str(a), str(b), "--base", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "| m0.safetensors (pc 2) [a.json] | -50.0 ± 50.0 | -50.0 ± 50.0 |"
    # three rows, the middle one as the base: the others keep their order
    c.write_text(json.dumps(_payload(digit_score, [clip_of([{3, 7}] * 16), clip_of([{1}] * 16)], 2, rows=2)))
    assert digit_score.main(["--pair", str(a), str(c), "--base", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "each row minus m0.safetensors (pc 2) [c.json]" in out[1]
    assert [line.split(" | ")[0] for line in out[-2:]] == ["| m0.safetensors (pc 2) [a.json]", "| m1.safetensors (pc 2) [c.json]"]
    assert digit_score.main(["--pair", str(a), str(b), "--base", "3"]) == 1
    assert "--base 3: the files hold 2 sampled rows" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (dict(num=3), "--num 3 (first file: 2)"),
    (dict(num=2, context="5"), "--context 5 (first file: 0)"),
    (dict(num=2, classifier="other.safetensors"), "--classifier other.safetensors (first file: c.safetensors)"),
])
def test_pair_refuses_rows_that_do_not_pair(digit_score, tmp_path, capsys, change, message):
    a, c = tmp_path / "a.json", tmp_path / "c.json"
    a.write_text(json.dumps(_payload(digit_score, [clip_of([{3}] * 16)] * 2, 2)))
    clips = [clip_of([{3}] * 16)] * change.pop("num")
    c.write_text(json.dumps(_payload(digit_score, clips, len(clips), **change)))
    assert digit_score.main(["--pair", str(a), str(c)]) == 1
    assert message in capsys.readouterr().err


def test_pair_refuses_bad_files_and_options(digit_score, tmp_path, capsys):
    a, c = tmp_path / "a.json", tmp_path / "c.json"
    a.write_text(json.dumps(_payload(digit_score, [clip_of([{3}] * 16)] * 2, 2)))
    c.write_text(json.dumps({"args": {"num": "2", "context": "0", "classifier": "c.safetensors"},
                             "rows": [{"source": "x", "sample_seconds": 1}]}))
    assert digit_score.main(["--pair", str(a), str(c)]) == 1
    assert "not a digit_score.py --json file with per-clip values" in capsys.readouterr().err
    c.write_text(json.dumps({"args": {"num": "2", "context": "0", "classifier": "c"}, "rows": [{"sample_seconds": 1}]}))
    assert digit_score.main(["--pair", str(a), str(c)]) == 1  # a row without a source: no traceback
    assert "not a digit_score.py --json file" in capsys.readouterr().err
    assert digit_score.main(["--pair", str(a)]) == 1
    assert "at least two sampled rows" in capsys.readouterr().err
    assert digit_score.main(["--pair", str(a), str(a)]) == 1
    assert "one file twice" in capsys.readouterr().err
    for argv, message in ((["m.safetensors", "--pair", str(a)], "give it no checkpoints"),
                          (["--pair", str(a), "--json", "x.json"], "--json does not apply"),
                          (["--pair", str(a), "--num", "8"], "--num does not apply"),
                          (["m.safetensors", "--base", "2"], "--base needs --pair")):
        with pytest.raises(SystemExit):
            digit_score.parse_args(argv)
        assert message in capsys.readouterr().err
