"""Peak memory and time per window of `vdgen.guidance.extend` to 64 and to 256 frames.

    python bench/extend_memory.py [--threads N] [--lengths 64 256] [--steps S] [--method guidance]

Each length runs in a fresh subprocess, so its peak resident set (VmHWM from /proc/self/status,
and ru_maxrss) is its own. The model is the default config (the `weights/` checkpoint if there is
one, else the training run's export, else random weights: memory and time do not depend on the
weights); the clip is 8 frames of noise in [-1, 1], the window the model's 16 frames, the context
8 frames. Sampling steps are few (--steps): peak memory does not grow with them, and time per
window scales linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT_CANDIDATES = ("weights/mmnist32.safetensors", "weights/model.safetensors", "runs/mmnist32/model.safetensors")


def find_checkpoint() -> Path | None:
    """The first vdgen model checkpoint among the known places, or None."""
    from vdgen.checkpoint import FORMAT_NAME, read_header
    from vdgen.errors import VdgenError

    candidates = [REPO / c for c in CHECKPOINT_CANDIDATES] + sorted((REPO / "weights").glob("*.safetensors"))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            metadata = read_header(path).get("__metadata__", {})
        except VdgenError:
            continue
        if FORMAT_NAME in json.dumps(metadata):
            return path
    return None


def peak_rss_mib() -> tuple[float, float]:
    """(VmHWM, ru_maxrss) of this process in MiB."""
    hwm = float("nan")
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(length: int, steps: int, method: str, threads: int) -> None:
    """Run one extension and print one JSON line with its peak memory and timing."""
    import torch

    from vdgen.checkpoint import load_model
    from vdgen.config import DiffusionConfig, ModelConfig
    from vdgen.diffusion import Denoiser
    from vdgen.guidance import extend
    from vdgen.unet import UNet3D

    if threads > 0:
        torch.set_num_threads(threads)
    path = find_checkpoint()
    if path is not None:
        loaded = load_model(path)
        net, model_config, diffusion_config = loaded.net, loaded.model_config, loaded.diffusion_config
    else:
        model_config, diffusion_config = ModelConfig(dropout=0.0), DiffusionConfig()
        net = UNet3D(model_config).eval()
    denoiser = Denoiser(net, diffusion_config)
    generator = torch.Generator().manual_seed(0)
    clip = torch.rand(model_config.channels, 8, model_config.height, model_config.width, generator=generator) * 2 - 1
    before = peak_rss_mib()[0]
    window_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(window: int, windows: int, step: int, total: int) -> None:
        if step == total:
            now = time.perf_counter()
            window_times.append(now - last[0])
            last[0] = now

    start = time.perf_counter()
    out = extend(denoiser, clip, length, window=model_config.frames, context=model_config.frames // 2,
                 method=method, steps=steps, seed=0, callback=on_step)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == length
    hwm, maxrss = peak_rss_mib()
    print(json.dumps({
        "length": length, "windows": len(window_times), "seconds": elapsed,
        "window_s": sorted(window_times)[len(window_times) // 2], "hwm_mib": hwm, "maxrss_mib": maxrss,
        "before_mib": before, "weights": str(path.relative_to(REPO)) if path else "random", "threads": torch.get_num_threads(),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per window")
    parser.add_argument("--method", default="guidance", choices=["guidance", "replacement"])
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.method, args.threads)
        return
    import torch

    from flops import print_header, set_threads

    set_threads(args.threads)
    print_header(f"extend: peak memory per output length ({args.method}, {args.steps} steps/window)")
    results = []
    for length in args.lengths:
        cmd = [sys.executable, __file__, "--child", str(length), "--steps", str(args.steps), "--method", args.method,
               "--threads", str(torch.get_num_threads())]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"# weights: {results[0]['weights']}; window 16 frames, context 8, clip 8 frames")
    print("frames | windows | s/window | total s | peak RSS (VmHWM) MiB | ru_maxrss MiB | RSS before extend MiB")
    for r in results:
        print(f"{r['length']:6} | {r['windows']:7} | {r['window_s']:8.2f} | {r['seconds']:7.1f} | {r['hwm_mib']:20.0f} | "
              f"{r['maxrss_mib']:13.0f} | {r['before_mib']:.0f}")
    base, longest = results[0], results[-1]
    ratio = longest["hwm_mib"] / base["hwm_mib"]
    verdict = "PASS" if ratio <= 1.10 else "MISS"
    print(f"target 4: peak RSS {longest['length']} / {base['length']} frames = {ratio:.3f} (goal <= 1.10): {verdict}; "
          f"s/window {longest['window_s'] / base['window_s']:.2f}x")


if __name__ == "__main__":
    main()
