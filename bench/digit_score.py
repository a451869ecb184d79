"""How readable and how steady the digits in Moving MNIST samples are, judged by a digit classifier.

    python bench/digit_score.py weights/vdgen-mmnist32.safetensors runs/cool/model.safetensors --num 64
    python bench/digit_score.py A.safetensors --classifier digit_classifier.safetensors   # reuse one
    python bench/digit_score.py A.safetensors --context 5   # frames 5.. predicted from 0..4, against the true digits
    python bench/digit_score.py --pair a.json b.json [--base 2]   # paired differences of earlier runs' sampled rows

Issue 5 asks for samples that "show two recognisable digits moving smoothly", and contact sheets
judge that by eye. This judges it with a small CNN, trained here on frames of Moving MNIST clips of
the training digits (multi-label: which of the classes 0 to 9 a frame shows) and checked on
validation clips, whose digits it never saw. A clip's digits are the classes present (probability
above 0.5) in most of its frames. For a set of clips it reports:
- frames showing the clip's digits: exactly those classes present (two digits of one class show
  as one class); a digit that morphs into another, or dissolves, fails in the frames where it does;
- steady clips: at most two frames fail that, and the clip has one or two classes;
- confident frames: every class probability below 0.1 or above 0.9;
- changes per clip: how often the set of present classes changes from one frame to the next.
Real validation clips are scored first, by the same classifier: their rates are the ceiling
(overlapping digits hide each other), and each checkpoint is read against them. Two controls follow:
the same clips blurred 3x3 (steady digits, soft frames: what softness alone costs; the classifier
trains with some blur, but a full 3x3 box blur still costs it) and shuffled across clips (no two
frames from one clip: the floor of the steadiness columns). A CNN's reading is a proxy for a
person's, as the Inception score is: compare rows within one table, or tables made with one saved
classifier (`--classifier`). `±` is one standard error across clips. With several checkpoints (or
both --methods) a second table gives each sampled row minus the first, paired clip by clip (the
same seeds: a smaller error than the rows' own when their clips are alike, not otherwise). The JSON
keeps every row's per-clip values.

With `--context N` each row scores frames N.. of real validation clips instead, as the model predicts
them from the first N (reconstruction guidance or replacement), against the clips' true digits: can
the model keep digits it is shown, apart from inventing them?
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from vdgen.checkpoint import LoadedModel
from vdgen.data import MovingMNIST
from vdgen.errors import VdgenError
from vdgen.frames import from_model, to_model
from vdgen.generate import PrecisionDenoiser, sample_videos
from vdgen.guidance import extend
from vdgen.sampling import NOISE_OPTIONS, SAMPLERS, noise_options

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import moving_mnist_models, print_header, set_up  # noqa: E402

PRESENT = 0.5  # a class is in the frame
DECIDED = 0.1  # a confident frame has every probability within this of 0 or 1
STEADY_SLACK = 2  # a steady clip shows its digits in all frames but this many (overlaps hide digits)
CLASSIFIER_SEED = 100  # the classifier's training clips: Moving MNIST seed 100 of the training digits
TRAIN_FRAMES = 4


class DigitNet(nn.Module):
    """Which digit classes a frame shows: frames [N, 1, H, W] in [-1, 1] -> logits [N, 10].

    Conv, batch norm and ReLU at full, half and quarter size (about 26 px of view at the end, more
    than a digit's 14 px at 32x32), then a global max pool, so a digit counts wherever it is.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 96, 96)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip((1, *widths[:-1]), widths)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


def labelled_clips(split: str, clips: int, frames: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Moving MNIST clips 0 .. clips - 1, uint8 [N, frames, size, size], and their classes, multi-hot [N, 10]."""
    data = MovingMNIST(frames=frames, size=size, split=split, seed=seed)
    videos, classes = [], np.zeros((clips, 10), np.float32)
    for index in range(clips):
        clip, labels = data.clip_and_labels(index)
        videos.append(clip)
        classes[index, labels] = 1.0
    return np.stack(videos), classes


def as_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [N, H, W] as the classifier's input [N, 1, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).float().div(127.5).sub(1.0)[:, None]


def box_blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 box blur of classifier input [N, 1, H, W], black (-1) beyond the border."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), value=-1.0), 3, stride=1)


def train_classifier(size: int, steps: int, clips: int, batch: int) -> DigitNet:
    """DigitNet trained with binary cross-entropy on every frame of `clips` training-digit clips.

    Short clips (TRAIN_FRAMES frames), many of them: the digits, not the frames, are what it must not
    overfit (16-frame clips would show it few distinct digits for the same number of frames).
    """
    torch.manual_seed(0)
    videos, classes = labelled_clips("train", clips, TRAIN_FRAMES, size, CLASSIFIER_SEED)
    x = as_input(videos.reshape(-1, size, size))
    y = torch.from_numpy(np.repeat(classes, videos.shape[1], axis=0))
    net = DigitNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    order = torch.Generator().manual_seed(0)
    for step in range(steps):
        pick = torch.randint(len(x), (batch,), generator=order)
        # Half the frames softened by a random amount of 3x3 box blur: soft is not unreadable.
        amount = torch.rand(batch, 1, 1, 1, generator=order) * (torch.rand(batch, 1, 1, 1, generator=order) < 0.5)
        loss = F.binary_cross_entropy_with_logits(net(torch.lerp(x[pick], box_blur(x[pick]), amount)), y[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % max(1, steps // 5) == 0:
            print(f"  classifier step {step + 1}/{steps}: loss {loss.item():.4f}", file=sys.stderr, flush=True)
    return net.eval()


@torch.no_grad()
def probabilities(net: DigitNet, clips: np.ndarray) -> np.ndarray:
    """Class probabilities [N, F, 10] of uint8 clips [N, F, H, W]."""
    n, f, h, w = clips.shape
    x = as_input(clips.reshape(n * f, h, w))
    p = torch.cat([torch.sigmoid(net(part)) for part in x.split(512)])
    return p.reshape(n, f, 10).numpy()


def score(p: np.ndarray, digits: np.ndarray | None = None) -> dict:
    """The rates of the module docstring, from class probabilities [N, F, 10].

    `digits` (multi-hot [N, 10]) gives each clip's digits, the true ones where they are known
    (--context); by default they are the classes present in most of the clip's frames.
    `±` is one standard error across clips: a clip's frames are not independent of each other.
    """
    n, f, _ = p.shape
    present = p > PRESENT
    if digits is None:
        digits = present.sum(axis=1) > f / 2  # present in most of the clip's frames [N, 10]
    digits = np.asarray(digits) > 0.5
    if digits.shape != (n, 10):
        raise ValueError(f"digits must be [{n}, 10], got {digits.shape}")
    has_digits = (digits.sum(axis=-1) >= 1) & (digits.sum(axis=-1) <= 2)
    shows = (present == digits[:, None]).all(axis=-1) & has_digits[:, None]  # [N, F]
    confident = ((p < DECIDED) | (p > 1 - DECIDED)).all(axis=-1)
    changes = (present[:, 1:] != present[:, :-1]).any(axis=-1).sum(axis=1)
    steady = (shows.sum(axis=1) >= f - STEADY_SLACK) & has_digits
    per_clip = {"frames_showing_clip_digits": shows.mean(axis=1), "steady_clips": steady.astype(float),
                "confident_frames": confident.mean(axis=1)}
    # Classes per clip are always the clip's own majority classes: with true digits given they would say
    # nothing about the frames scored.
    majority = present.sum(axis=1) > f / 2
    out: dict = {"clips": n, "changes_per_clip": float(changes.mean()), "classes_per_clip": float(majority.sum(-1).mean())}
    for name, share in per_clip.items():
        out[name] = float(share.mean())
        out[f"{name}_se"] = float(share.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    out["per_clip"] = {name: share.tolist() for name, share in per_clip.items()}
    return out


def paired_difference(a: dict, b: dict, name: str) -> tuple[float, float]:
    """Mean and standard error of b - a over clips, clip i against clip i (rows of one run: the same seeds).

    Where the two rows' clips are correlated (the same seeds, similar samplers or weights), the paired
    error is smaller than the two rows' errors combined; where they are not, it is about the same.
    """
    x, y = np.asarray(a["per_clip"][name]), np.asarray(b["per_clip"][name])
    if x.shape != y.shape:
        raise ValueError(f"rows of {len(x)} and {len(y)} clips do not pair")
    d = y - x
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")


def print_paired(sampled: list[dict], context: bool) -> None:
    """The paired table: every sampled row minus the first, clip by clip, in percentage points."""
    print(f"\nPaired by clip (the same seeds{' and clips' if context else ''}), each row minus "
          f"{sampled[0]['source']}, in percentage points:")
    print("| clips | frames showing the clip's digits | steady clips |")
    print("|---|---|---|")
    for r in sampled[1:]:
        diffs = [paired_difference(sampled[0], r, k) for k in ("frames_showing_clip_digits", "steady_clips")]
        print(f"| {r['source']} | " + " | ".join(f"{100 * m:+.1f} ± {100 * se:.1f}" for m, se in diffs) + " |")


def pair_files(paths: list[Path], base: int = 1) -> int:
    """--pair: the paired table across the sampled rows of earlier runs' --json files (same clips and seeds),
    each row minus sampled row number `base` (1: the first)."""
    if len({path.resolve() for path in paths}) < len(paths):
        print("error: --pair got one file twice: a row paired with itself says nothing", file=sys.stderr)
        return 1
    sampled, first = [], None
    for path in paths:
        try:
            payload = json.loads(path.read_text())
            setting = {k: payload["args"][k] for k in ("num", "context", "classifier")}
            rows = [{**r, "source": f"{r['source']} [{path.name}]"} for r in payload["rows"] if "sample_seconds" in r]
            if any("per_clip" not in r for r in rows):
                raise KeyError("per_clip")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"error: {path}: not a digit_score.py --json file with per-clip values ({exc!r})", file=sys.stderr)
            return 1
        if first is not None and setting != first:
            differ = ", ".join(f"--{k} {setting[k]} (first file: {first[k]})" for k in setting if setting[k] != first[k])
            print(f"error: {path}: {differ}: its rows do not pair with the first file's", file=sys.stderr)
            return 1
        first = first or setting
        sampled += rows
    if len(sampled) < 2:
        print("error: --pair needs at least two sampled rows across its files", file=sys.stderr)
        return 1
    if not 1 <= base <= len(sampled):
        print(f"error: --base {base}: the files hold {len(sampled)} sampled rows", file=sys.stderr)
        return 1
    print_paired([sampled[base - 1], *sampled[: base - 1], *sampled[base:]], first["context"] != "0")
    return 0


def controls(real: np.ndarray, shift: int = 0) -> dict[str, np.ndarray]:
    """Rows that calibrate the score from real clips [N, F, H, W]: soft, and morphing.

    Blurred clips (3x3 box filter) keep their digits but lose sharpness: how much a soft but
    steady clip loses. Shuffled clips take frame f from clip (i + f + shift) mod N, so no two frames
    come from one clip (needs N >= F + shift; skipped otherwise): the floor of the steadiness
    columns. Scored against clip i's true digits (--context), shift 1 keeps clip i's own frame out
    of it. The shuffle permutes frames, so confident frames match the real row by construction.
    """
    n, f, h, w = real.shape
    padded = np.pad(real.astype(np.float32), ((0, 0), (0, 0), (1, 1), (1, 1)))
    blurred = sum(padded[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9
    rows = {"the same, blurred 3x3": np.round(blurred).astype(np.uint8)}
    if n >= f + shift:
        name = f"the same, frame f from clip i + f{f' + {shift}' if shift else ''}"
        rows[name] = np.stack([real[(np.arange(n) + i + shift) % n, i] for i in range(f)], axis=1)
    return rows


def predicted(model: LoadedModel, real: np.ndarray, context: int, method: str, args: argparse.Namespace) -> np.ndarray:
    """Frames context .. F-1 of real clips uint8 [N, F, H, W] predicted from their first `context` (clip i: seed i).

    The model's own window, one pass for 16-frame clips: `vdgen extend` with reconstruction guidance
    (or replacement), the conditional path of VDM section 3.1.
    """
    model.net.eval()
    denoiser = PrecisionDenoiser(model.denoiser(), args.precision, "cpu")
    out = []
    for seed, clip in enumerate(real):
        video = extend(denoiser, to_model(clip[:context, ..., None]), clip.shape[0], window=model.model_config.frames,
                       context=context, method=method, sampler=args.sampler, steps=args.steps, seed=seed,
                       sampler_opts=args.sampler_opts)
        out.append(from_model(video)[context:, ..., 0])
    return np.stack(out)


def save_classifier(net: DigitNet, path: Path, size: int, accuracy: float) -> None:
    meta = {"size": str(size), "val_frame_accuracy": f"{accuracy:.6f}"}
    save_file(net.state_dict(), str(path), metadata=meta)


def load_classifier(path: Path, size: int) -> DigitNet:
    """A classifier saved by --save-classifier, for frames of `size` px."""
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise VdgenError(f"{path}: not a readable safetensors file ({exc})") from None
    if "size" not in meta:
        raise VdgenError(f"{path}: not a digit_score.py classifier (no size in its metadata)")
    if meta["size"] != str(size):
        raise VdgenError(f"{path}: a classifier for {meta['size']} px frames, these are {size} px")
    net = DigitNet()
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise VdgenError(f"{path}: not a digit_score.py classifier (its tensors do not match DigitNet)") from None
    return net.eval()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path, help="model .safetensors files (vdgen checkpoint format)")
    parser.add_argument("--num", type=int, default=64, help="clips per row: samples with seeds 0 .. num - 1, and real clips (default 64)")
    parser.add_argument("--sampler", default="dpm++", choices=SAMPLERS, help="(default dpm++)")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps (default 25)")
    parser.add_argument("--gamma", type=float, help="ancestral and pc: variance interpolation (default 0.1, the paper's)")
    parser.add_argument("--delta", type=float, help="pc: Langevin step size (default 0.1, the paper's; vdgen generate uses 0.6)")
    parser.add_argument("--context", type=int, default=0,
                        help="score predictions instead of samples: frames CONTEXT.. of real clips predicted from their "
                             "first CONTEXT, against the clips' true digits (default 0: unconditional samples)")
    parser.add_argument("--methods", default="guidance,replacement",
                        help="with --context: comma-separated, of guidance and replacement (default both)")
    parser.add_argument("--size", type=int, default=32, help="frame size when no checkpoint is given (default 32)")
    parser.add_argument("--classifier", type=Path, help="load this classifier instead of training one")
    parser.add_argument("--save-classifier", type=Path, help="save the trained classifier here (safetensors)")
    parser.add_argument("--classifier-steps", type=int, default=2000, help="(default 2000)")
    parser.add_argument("--classifier-clips", type=int, default=20000, help="training clips of 4 frames (default 20000)")
    parser.add_argument("--val-clips", type=int, default=500, help="validation clips for the classifier's accuracy (default 500)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"), help="sampling (default fp32)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--pair", type=Path, nargs="+", metavar="JSON",
                        help="no sampling: the paired table across earlier runs' --json files (sampled rows, in order)")
    parser.add_argument("--base", type=int, default=1, help="with --pair: the sampled row (1, 2, ..., in file order) "
                        "the others are paired against (default 1)")
    args = parser.parse_args(argv)
    if args.pair:
        given = [dest for dest in vars(args) if dest not in ("pair", "base", "checkpoints") and getattr(args, dest) != parser.get_default(dest)]
        if args.checkpoints:
            parser.error("--pair reads earlier results; give it no checkpoints")
        if given:
            parser.error(f"--pair only reads earlier results: --{given[0].replace('_', '-')} does not apply")
    elif args.base != 1:
        parser.error("--base needs --pair")
    if args.num < 1 or args.steps < 1 or args.classifier_steps < 1 or args.classifier_clips < 1 or args.val_clips < 1:
        parser.error("--num, --steps, --classifier-steps, --classifier-clips and --val-clips must be >= 1")
    if args.classifier and args.save_classifier:
        parser.error("--classifier loads one, --save-classifier saves a newly trained one: give one of them")
    allowed = NOISE_OPTIONS.get(args.sampler, ())
    for name in ("gamma", "delta"):
        if getattr(args, name) is not None and name not in allowed:
            parser.error(f"--{name} does not apply to the {args.sampler} sampler")
    # Every row names the gamma and delta it sampled with; unset, the library's (the paper's) values.
    try:
        args.sampler_opts = noise_options(args.sampler, {k: getattr(args, k) for k in allowed if getattr(args, k) is not None})
    except VdgenError as exc:
        parser.error(f"--{exc}")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.methods or set(args.methods) - {"guidance", "replacement"}:
        parser.error("--methods takes guidance, replacement or both, comma-separated")
    if args.methods != ["guidance", "replacement"] and not args.context:
        parser.error("--methods needs --context")
    if args.context < 0:
        parser.error("--context must be >= 0")
    if args.size not in (16, 32, 64):
        parser.error("--size must be 16, 32 or 64 (Moving MNIST sizes)")
    for path in (args.json, args.save_classifier):
        if path and not path.parent.is_dir():
            parser.error(f"folder {path.parent} does not exist")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pair:
        return pair_files(args.pair, args.base)
    set_up(args)
    try:
        models, shape = moving_mnist_models(args.checkpoints)
        frames, size = shape or (16, args.size)
        if frames <= 2 * STEADY_SLACK:
            raise VdgenError(f"the checkpoints make {frames}-frame clips; steadiness needs more than {2 * STEADY_SLACK}")
        if args.context and frames - args.context <= 2 * STEADY_SLACK:
            raise VdgenError(f"--context {args.context} leaves {frames - args.context} of {frames} frames to score; "
                             f"steadiness needs more than {2 * STEADY_SLACK}")
        started = time.perf_counter()
        net = load_classifier(args.classifier, size) if args.classifier else train_classifier(
            size, args.classifier_steps, args.classifier_clips, 128)
    except VdgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    trained_s = time.perf_counter() - started

    print_header("Digit score: steady, readable digits in Moving MNIST clips, by a digit classifier")
    real, classes = labelled_clips("val", max(args.num, args.val_clips), frames, size, 0)
    p_real = probabilities(net, real)
    accuracy = float(((p_real > PRESENT) == (classes[:, None] > 0.5)).all(axis=-1)[: args.val_clips].mean())
    source = f"loaded from {args.classifier}" if args.classifier else (
        f"trained {args.classifier_steps} steps on {args.classifier_clips} training-digit clips in {trained_s:.0f} s")
    print(f"classifier {source}; exact class set on {frames * args.val_clips} validation frames: {100 * accuracy:.1f}%")
    if args.save_classifier:
        try:
            save_classifier(net, args.save_classifier, size, accuracy)
        except OSError as exc:
            print(f"error: cannot write {args.save_classifier}: {exc.strerror or exc}", file=sys.stderr)
            return 1

    real, digits = real[: args.num], classes[: args.num] if args.context else None
    scored = slice(args.context, None)  # the frames each row scores: all, or the predicted ones
    name = f"real validation clips 0..{args.num - 1}" + (f", frames {args.context}..{frames - 1}" if args.context else "")
    rows = [{"source": name, "steps": None, **score(p_real[: args.num, scored], digits)}]
    for name, clips in controls(real[:, scored], shift=1 if args.context else 0).items():
        rows.append({"source": name, "steps": None, **score(probabilities(net, clips), digits)})
    sampler_name = " ".join([args.sampler, str(args.steps), *(f"{k} {v:g}" for k, v in args.sampler_opts.items())])
    for model in models:
        for method in args.methods if args.context else ["samples"]:
            started = time.perf_counter()
            if args.context:
                videos = predicted(model, real, args.context, method, args)
                label = f"{model.path} ({method}, {sampler_name})"
            else:
                videos = sample_videos(model.net, model.model_config, model.diffusion_config, list(range(args.num)),
                                       steps=args.steps, sampler=args.sampler, precision=args.precision,
                                       sampler_opts=args.sampler_opts)[..., 0]
                label = f"{model.path} ({sampler_name})"
            seconds = time.perf_counter() - started
            rows.append({"source": label, "steps": model.provenance.get("steps"), "sample_seconds": seconds,
                         **score(probabilities(net, videos), digits)})
            print(f"  {label}: {args.num} clips in {seconds:.0f} s", file=sys.stderr, flush=True)

    what = (f"frames {args.context}..{frames - 1} predicted from frames 0..{args.context - 1}, scored against the "
            f"clips' true digits" if args.context else "model samples")
    print(f"\n{args.num} clips per row, {frames} frames at {size}x{size}; {what}; seeds 0..{args.num - 1}, {args.precision}")
    print("| clips | training steps | frames showing the clip's digits | steady clips | confident frames | changes per clip | classes per clip |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rates = " | ".join(f"{100 * r[k]:.1f}% ± {100 * r[k + '_se']:.1f}"
                           for k in ("frames_showing_clip_digits", "steady_clips", "confident_frames"))
        steps = r["steps"] if r["steps"] is not None else "-"
        print(f"| {r['source']} | {steps} | {rates} | {r['changes_per_clip']:.2f} | {r['classes_per_clip']:.2f} |")
    sampled = [r for r in rows if "sample_seconds" in r]
    if len(sampled) > 1:
        print_paired(sampled, bool(args.context))
    if args.json:
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "classifier_accuracy": accuracy, "rows": rows}
        try:
            args.json.write_text(json.dumps(payload, indent=2) + "\n")
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
