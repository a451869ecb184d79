"""Validation denoising loss of one or more checkpoints, on the same held-out clips and the same noise.

    python bench/val_loss.py weights/vdgen-mmnist32.safetensors runs/mmnist32/model.safetensors
    python bench/val_loss.py A.safetensors B.safetensors --clips 256 --t-points 20 --precision bf16

The training loss is a noisy estimate (16 clips, one random t each, per step); this scores each
checkpoint on `--clips` Moving MNIST validation clips (mnist_5k digits, never trained on) at every t
of a fixed grid, with noise from one seeded generator drawn in the same order for every checkpoint.
Differences between rows are then the checkpoints' own, far below the training loss's step-to-step
noise. The loss is the MSE in the checkpoint's predicted space (v for the shipped model); the table
also splits it into t < 0.5 (little noise) and t >= 0.5. The last column is the change against the
first checkpoint. A second `--noise-seed` gives the noise of the estimate itself.
`--independent-frames` scores every checkpoint a second time with each frame marked as an independent
image (temporal attention masked to the identity), on the same noise: the ratio of the two losses is
how much the network draws on the other frames, a check that its temporal layers are in use.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vdgen.checkpoint import LoadedModel
from vdgen.data import MovingMNIST, make_batch
from vdgen.errors import VdgenError
from vdgen.evaluate import t_grid, validation_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import moving_mnist_models, print_header, set_up  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="model .safetensors files (vdgen checkpoint format)")
    parser.add_argument("--clips", type=int, default=128, help="validation clips (default 128)")
    parser.add_argument("--t-points", type=int, default=10, help="t grid (i + 0.5) / n for i < n, n >= 2 (default 10)")
    parser.add_argument("--noise-seed", default="1234", help="comma-separated noise seeds, each a full pass (default 1234)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"), help="scoring (default fp32)")
    parser.add_argument("--independent-frames", action="store_true",
                        help="also score with temporal attention masked to the identity (frames as independent images)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.noise_seed.split(",")]
    except ValueError:
        parser.error(f"--noise-seed must be comma-separated integers, got {args.noise_seed!r}")
    if args.clips < 1 or args.t_points < 2:
        parser.error("--clips must be >= 1 and --t-points >= 2")
    if args.json and not args.json.parent.is_dir():
        parser.error(f"--json: folder {args.json.parent} does not exist")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_up(args)
    try:
        models, (frames, height) = moving_mnist_models(args.checkpoints)
    except VdgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = height
    print_header("Validation denoising loss: the same clips, t grid and noise for every checkpoint")
    clips = make_batch(MovingMNIST(frames=frames, size=height, split="val"), list(range(args.clips)), 0)[0]
    ts = t_grid(args.t_points)
    print(f"{args.clips} Moving MNIST validation clips of {frames}x{height}x{width}, {len(ts)} t values, "
          f"noise seeds {args.noise_seed}, {args.precision}, {args.threads} threads")
    results = []
    for model in models:
        results.append({"checkpoint": str(model.path), "steps": model.provenance.get("steps"),
                        **score(model, clips, ts, args)})
        if args.independent_frames:
            results[-1].update(score(model, clips, ts, args, independent=True))
        print(f"  {model.path}: {results[-1]['loss']:.5f} ({results[-1]['seconds']:.0f} s)", flush=True)

    half = len(ts) // 2
    base = results[0]["loss"]
    print()
    print("| checkpoint | training steps | val loss | t < 0.5 | t >= 0.5 | per noise seed | vs first |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        low, high = r["loss_by_t"][:half], r["loss_by_t"][half:]
        seeds = " / ".join(f"{v:.5f}" for v in r["loss_by_seed"])
        print(f"| {r['checkpoint']} | {r['steps']} | {r['loss']:.5f} | {sum(low) / len(low):.5f} | "
              f"{sum(high) / len(high):.5f} | {seeds} | {100 * (r['loss'] / base - 1):+.2f}% |")
    if len(args.seeds) > 1:
        spread = max(100 * (max(r["loss_by_seed"]) - min(r["loss_by_seed"])) / r["loss"] for r in results)
        print(f"\nlargest spread between noise seeds within one checkpoint: {spread:.2f}% (the estimate's own noise; "
              "the same seeds are paired across checkpoints, so their differences are less noisy than this)")
    if args.independent_frames:
        print_independent_frames(results, ts)
    if args.json:
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "t_grid": ts, "results": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def score(model: LoadedModel, clips: torch.Tensor, ts: list[float], args: argparse.Namespace,
          independent: bool = False) -> dict:
    """One model's loss over every noise seed: `loss`, `loss_by_seed`, `loss_by_t`, `seconds`.

    With `independent` every frame is scored as an independent image and the keys start "independent_".
    """
    prefix = "independent_" if independent else ""
    started = time.perf_counter()
    by_seed = [
        validation_loss(model.net, model.diffusion_config, clips, ts, seed, args.precision, independent_frames=independent)
        for seed in args.seeds
    ]
    by_t = [sum(values) / len(values) for values in zip(*by_seed)]
    return {
        f"{prefix}loss": sum(by_t) / len(by_t), f"{prefix}loss_by_seed": [sum(v) / len(v) for v in by_seed],
        f"{prefix}loss_by_t": by_t, f"{prefix}seconds": time.perf_counter() - started,
    }


def print_independent_frames(results: list[dict], ts: list[float]) -> None:
    """The loss with and without the other frames in view, and their ratio, overall and per t."""
    print("\nFrames as independent images (temporal attention masked to the identity), the same noise:")
    print("| checkpoint | val loss | frames independent | ratio | ratio per noise seed | "
          + " | ".join(f"t={t:.2f}" for t in ts) + " |")
    print("|---" * (5 + len(ts)) + "|")
    for r in results:
        ratios = " | ".join(f"{a / b:.2f}" for a, b in zip(r["independent_loss_by_t"], r["loss_by_t"]))
        by_seed = " / ".join(f"{a / b:.2f}" for a, b in zip(r["independent_loss_by_seed"], r["loss_by_seed"]))
        print(f"| {r['checkpoint']} | {r['loss']:.5f} | {r['independent_loss']:.5f} | "
              f"{r['independent_loss'] / r['loss']:.2f} | {by_seed} | {ratios} |")
    print("(a ratio near 1 at middle t means the network denoises each frame on its own: its temporal layers are not used)")


if __name__ == "__main__":
    raise SystemExit(main())
