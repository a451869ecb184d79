"""bf16 autocast against fp32: sampling speed and how far the samples move, plus a training step.

    python bench/bf16_sampling.py [--threads N] [--seeds 4] [--steps 32] [--sampler ancestral] [--train-batch 4]

Samples the same seeds in fp32 and in bf16 with `vdgen.generate.sample_videos` and reports the
speed ratio and the mean (and 99th-percentile) absolute pixel difference in 0..255 levels. The
model is the `weights/` checkpoint if there is one, else the training run's latest export
(runs/mmnist32/model.safetensors), else random weights (then the difference says little: an
untrained network's samples are noise). Also times one training step (forward, backward, Adam) at
the default shape in both precisions, and prints what `resolve_precision("auto", "cpu")` picks
here, with the probe's measured speedup.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from extend_memory import REPO, find_checkpoint
from flops import print_header, set_threads
from vdgen.config import DiffusionConfig, ModelConfig
from vdgen.diffusion import training_loss
from vdgen.generate import sample_videos
from vdgen.precision import BF16_MIN_SPEEDUP, autocast, bf16_hardware, cpu_has_native_bf16, measure_bf16_speedup, resolve_precision
from vdgen.unet import UNet3D


def load_network() -> tuple[torch.nn.Module, ModelConfig, DiffusionConfig, str]:
    path = find_checkpoint()
    if path is not None:
        from vdgen.checkpoint import load_model

        loaded = load_model(path)
        return loaded.net, loaded.model_config, loaded.diffusion_config, str(path.relative_to(REPO))
    config = ModelConfig(dropout=0.0)
    net = UNet3D(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the zero-initialised output layers would make every sample identical
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5 / max(1, p[0].numel()) ** 0.5)
    return net.eval(), config, DiffusionConfig(), "random"


def time_sampling(net, model_config, diffusion_config, seeds, steps, sampler, precision) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    videos = sample_videos(net, model_config, diffusion_config, seeds, steps=steps, sampler=sampler, precision=precision)
    return videos, time.perf_counter() - start


def time_training(model_config: ModelConfig, diffusion_config: DiffusionConfig, batch: int, precision: str, repeats: int = 3) -> float:
    """Median seconds of one training step (forward, backward, Adam) at the model's shape."""
    net = UNet3D(model_config).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(batch, model_config.channels, model_config.frames, model_config.height, model_config.width) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with autocast(precision, "cpu"):
            loss = training_loss(net, diffusion_config, x, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:  # the first step builds oneDNN's kernels
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--seeds", type=int, default=4, help="samples, seeds 0 .. N-1")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--sampler", default="ancestral")
    parser.add_argument("--train-batch", type=int, default=4, help="0 skips the training-step timing")
    args = parser.parse_args()
    set_threads(args.threads)
    print_header("bf16 autocast vs fp32")
    net, model_config, diffusion_config, source = load_network()
    seeds = list(range(args.seeds))
    speedup = measure_bf16_speedup()
    auto = resolve_precision("auto", "cpu")
    print(f"# weights: {source}; {len(seeds)} seeds, {args.sampler} sampler, {args.steps} steps")
    print(f"# probe: bf16 {speedup:.2f}x fp32 (bf16 hardware: {bf16_hardware()}, needs >= {BF16_MIN_SPEEDUP}x); auto resolves to {auto}")
    if not cpu_has_native_bf16():
        print("# no AMX or AVX512_BF16: bf16 is emulated here; timing it on a full sampling run would take very long, skipped")
        return
    sample_videos(net, model_config, diffusion_config, seeds[:1], steps=2, sampler=args.sampler, precision="bf16")  # warm-up
    fp32, t_fp32 = time_sampling(net, model_config, diffusion_config, seeds, args.steps, args.sampler, "fp32")
    bf16, t_bf16 = time_sampling(net, model_config, diffusion_config, seeds, args.steps, args.sampler, "bf16")
    diff = np.abs(fp32.astype(np.int16) - bf16.astype(np.int16))
    rows = [("sampling (s per video)", t_fp32 / len(seeds), t_bf16 / len(seeds))]
    if args.train_batch:
        rows.append((f"training step b{args.train_batch} (s)", time_training(model_config, diffusion_config, args.train_batch, "fp32"),
                     time_training(model_config, diffusion_config, args.train_batch, "bf16")))
    print("measurement              |     fp32 |     bf16 | bf16 speedup")
    for name, a, b in rows:
        print(f"{name:24} | {a:8.2f} | {b:8.3f} | {a / b:.2f}x")
    per_seed = [f"{d.mean():.2f}" for d in diff]
    print(f"pixel |fp32 - bf16| in 0..255 levels: mean {diff.mean():.2f}, 99th pct {np.percentile(diff, 99):.0f}, "
          f"max {diff.max()}, per seed {', '.join(per_seed)}; share of pixels off by > 8 levels {100 * (diff > 8).mean():.1f}%")


if __name__ == "__main__":
    main()
