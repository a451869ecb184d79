"""Joint image-video training (VDM section 3, Table 4): does appending K image frames help the video model?

    python bench/joint_training.py                       # K = 0, 4, 8; 400 steps each, base width 16, batch 8
    python bench/joint_training.py --image-frames 0,8 --steps 1500 --base-width 32 --batch 16

Every K trains the same Moving MNIST config (the shipped mmnist32 preset, narrowed by --base-width)
from the same seed for the same number of steps, in a temporary run folder. Each is then scored on
held-out validation clips (mnist_5k digits, never trained on) by the video denoising loss: the same
clips, the same grid of t and the same noise for every K, video frames only (nothing is appended at
evaluation), for the raw weights and for the EMA. Lower is better.

Equal steps is not equal compute: K image frames make each step see 16 + K frames, so the table
also gives seconds per step. On Moving MNIST the appended images are frames of other generated
clips, so they add no data the video stream would not also show in time; the paper's gain
(FVD 202 -> 68 -> 58 for K = 0 / 4 / 8) came from a text-to-video set where images add variety.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from vdgen.config import RunConfig, merge, preset
from vdgen.data import make_batch
from vdgen.evaluate import t_grid as make_t_grid, validation_loss
from vdgen.train import TrainCallbacks, make_dataset, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import print_header, set_up  # noqa: E402


def run_config(args: argparse.Namespace, image_frames: int, seed: int) -> RunConfig:
    """The mmnist32 preset at the bench's width and batch, with K image frames; no samples written."""
    base = preset("mmnist32")
    return RunConfig(
        model=merge(base.model, base_width=args.base_width),
        diffusion=base.diffusion,
        train=merge(
            base.train,
            image_frames=image_frames,
            batch_size=args.batch,
            steps=args.steps,
            warmup_steps=min(base.train.warmup_steps, args.steps // 4),
            precision=args.precision,
            threads=args.threads,
            seed=seed,
            sample_every=args.steps + 1,
            checkpoint_minutes=1e6,
        ),
    )


def train_and_score(args: argparse.Namespace, k: int, seed: int, clips: torch.Tensor, t_grid: list[float]) -> dict:
    """Train one K from one seed in a temporary folder; its timings, losses and validation scores."""
    config = run_config(args, k, seed)
    with tempfile.TemporaryDirectory(prefix=f"vdgen-joint-k{k}-") as tmp:
        started = time.perf_counter()
        state = train(Path(tmp) / "run", config, callbacks=TrainCallbacks())
        seconds = time.perf_counter() - started
    raw = validation_loss(state.net, config.diffusion, clips, t_grid, seed=1234, precision=args.precision)
    ema = validation_loss(state.ema, config.diffusion, clips, t_grid, seed=1234, precision=args.precision)
    last = state.losses[-50:]
    return {
        "image_frames": k, "seed": seed, "steps": state.step, "seconds_per_step": seconds / state.step,
        "train_loss_last50": sum(last) / len(last),
        "val_loss_raw": sum(raw) / len(raw), "val_loss_ema": sum(ema) / len(ema), "val_loss_raw_by_t": raw,
        "t_grid": t_grid,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-frames", default="0,4,8", help="comma-separated K values (default 0,4,8)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per K (default 400)")
    parser.add_argument("--base-width", type=int, default=16, help="U-Net base width (shipped: 32; default 16)")
    parser.add_argument("--batch", type=int, default=8, help="videos per step (default 8)")
    parser.add_argument("--val-clips", type=int, default=64, help="validation clips scored (default 64)")
    parser.add_argument("--t-points", type=int, default=10, help="t grid (i + 0.5) / n for i < n (default 10)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds, each run for every K (default 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"), help="training and scoring (default fp32)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        args.k_values = [int(k) for k in args.image_frames.split(",")]
        args.seed_values = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--image-frames and --seeds must be comma-separated integers, got {args.image_frames!r}, {args.seeds!r}")
    if any(k < 0 for k in args.k_values) or args.steps < 1 or args.val_clips < 1 or args.t_points < 1:
        parser.error("--image-frames must be >= 0 and --steps, --val-clips, --t-points >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_up(args)
    print_header("Joint image-video training: validation video loss after equal steps")
    val = make_dataset(run_config(args, 0, 0), split="val")
    clips = make_batch(val, list(range(args.val_clips)), 0)[0]
    t_grid = make_t_grid(args.t_points)
    print(
        f"config: mmnist32 at base width {args.base_width}, batch {args.batch}, {args.steps} steps, seeds {args.seeds}, "
        f"{args.precision}, {args.threads} threads; scored on {args.val_clips} validation clips x {len(t_grid)} t values"
    )
    results = []
    for seed in args.seed_values:
        for k in args.k_values:
            results.append(train_and_score(args, k, seed, clips, t_grid))
            r = results[-1]
            print(f"  K={k} seed {seed}: {r['seconds_per_step'] * r['steps']:.0f} s, val loss raw {r['val_loss_raw']:.5f}, "
                  f"EMA {r['val_loss_ema']:.5f}", flush=True)

    print()
    print("| K image frames | seed | s/step | train loss (last 50 steps, video + images) | val video loss, raw | val video loss, EMA | raw, t < 0.5 | raw, t > 0.5 |")
    print("|---|---|---|---|---|---|---|---|")
    half = len(t_grid) // 2
    for r in results:
        by_t = r["val_loss_raw_by_t"]
        low, high = by_t[:half] or by_t, by_t[half:]
        print(
            f"| {r['image_frames']} | {r['seed']} | {r['seconds_per_step']:.2f} | {r['train_loss_last50']:.5f} | "
            f"{r['val_loss_raw']:.5f} | {r['val_loss_ema']:.5f} | {sum(low) / len(low):.5f} | {sum(high) / len(high):.5f} |"
        )
    print()
    for seed in args.seed_values:
        baseline = next((r for r in results if r["image_frames"] == 0 and r["seed"] == seed), None)
        for r in results:
            if baseline is not None and r["seed"] == seed and r is not baseline:
                change = 100 * (r["val_loss_raw"] / baseline["val_loss_raw"] - 1)
                change_ema = 100 * (r["val_loss_ema"] / baseline["val_loss_ema"] - 1)
                ratio = r["seconds_per_step"] / baseline["seconds_per_step"]
                print(f"seed {seed}, K={r['image_frames']} vs K=0: val video loss raw {change:+.1f}%, EMA {change_ema:+.1f}%, "
                      f"at {ratio:.2f}x the time per step")
    zeros = [r for r in results if r["image_frames"] == 0]
    if len(zeros) > 1:
        values = [r["val_loss_raw"] for r in zeros]
        spread = 100 * (max(values) - min(values)) / min(values)
        print(f"seed-to-seed spread at K=0 (raw): {spread:.1f}%, the noise between unpaired runs; within one seed the "
              "runs share initial weights and video stream, so compare K there, and trust only a sign every seed agrees on")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
