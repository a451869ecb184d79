"""U-Net forward time per NFE and achieved GFLOP/s against the fp32 matmul peak of the same run.

    python bench/unet_speed.py [--threads N] [--repeats R] [--budget-s S] [--skip-paper] [--levers] [--compile]

Rows: the default config (the shipped checkpoint: 1 channel, base 32, multipliers (1, 2, 4)) and a
paper-shaped config (base 128, multipliers (1, 2, 4, 8), 2 res blocks, attention at 32/16/8, head
dim 64), each at 16x32x32 and 16x64x64, batch 1. The config is built for each frame size, so its
attention sits at the resolutions it names. The paper config is large: it is timed once (one warm
run), within --budget-s. --levers times the shipped choices against their alternatives on the
default config (channels-last vs contiguous, fused vs hand-written attention, optionally
torch.compile), interleaved so that load drifts hit both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from flops import count_flops, format_breakdown, matmul_peak_gflops, print_header, set_threads, time_call
from vdgen.config import ModelConfig
from vdgen.layers import SpatialAttention, TemporalAttention
from vdgen.unet import UNet3D, count_parameters

DEFAULT = ModelConfig(dropout=0.0)
PAPER = ModelConfig(
    base_width=128, multipliers=(1, 2, 4, 8), res_blocks=2, attention_resolutions=(32, 16, 8), heads=2, dropout=0.0
)
PAPER_HEAD_DIM = 64


def paper_network(config: ModelConfig) -> UNet3D:
    """The paper-shaped U-Net with head dim 64 everywhere (vdgen's config fixes the head count instead)."""
    net = UNet3D(config)
    for module in net.modules():
        if isinstance(module, (SpatialAttention, TemporalAttention)):
            module.heads = module.qkv.in_features // PAPER_HEAD_DIM
            if isinstance(module, TemporalAttention):
                module.relative_bias = torch.nn.Parameter(torch.zeros(module.heads, 2 * module.max_relative_position + 1))
    return net


def forward_row(name: str, config: ModelConfig, size: int, repeats: int, budget_s: float, paper: bool) -> dict:
    config = dataclasses.replace(config, height=size, width=size)
    net = (paper_network(config) if paper else UNet3D(config)).eval()
    x = torch.randn(1, config.channels, 16, size, size)
    logsnr = torch.zeros(1, dtype=torch.float64)
    flops = count_flops(lambda: net(x, logsnr))
    with torch.no_grad():
        seconds = time_call(lambda: net(x, logsnr), repeats=1 if paper else repeats, budget_s=budget_s)
    return {"name": name, "shape": f"1x{config.channels}x16x{size}x{size}", "params": count_parameters(net), "flops": flops, "seconds": seconds}


def manual_attention(q, k, v, attn_mask=None, **kwargs):
    """softmax(q k^T / sqrt(d) + mask) v, unfused: the alternative to scaled_dot_product_attention."""
    logits = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5)
    if attn_mask is not None:
        logits = logits + attn_mask
    return logits.softmax(dim=-1) @ v


@contextlib.contextmanager
def unfused_attention():
    fused = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = manual_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = fused


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def levers(repeats: int, with_compile: bool) -> None:
    """Each shipped choice against its alternative, default config, 1x1x16x32x32 and batch 8."""
    net = UNet3D(DEFAULT).eval()
    contiguous_net = UNet3D(DEFAULT).eval()
    contiguous_net.load_state_dict(net.state_dict())
    # A pre-hook that hands conv_in a plain NCHW tensor: every later layer then runs contiguous.
    contiguous_net.conv_in.register_forward_pre_hook(lambda module, args: (args[0].contiguous(),))
    print("lever                              | batch | shipped ms | alternative ms | shipped speedup")
    for batch in (1, 8):
        x = torch.randn(batch, 1, 16, 32, 32)
        logsnr = torch.zeros(batch, dtype=torch.float64)

        def shipped():
            net(x, logsnr)

        def contiguous():
            contiguous_net(x, logsnr)

        def unfused():
            with unfused_attention():
                net(x, logsnr)

        with torch.no_grad():
            t = interleaved({"shipped": shipped, "contiguous": contiguous, "unfused": unfused}, repeats)
        for label, alt in (("channels-last (vs contiguous)", "contiguous"), ("fused SDPA (vs softmax(QK^T)V)", "unfused")):
            print(f"{label:34} | {batch:5} | {1e3 * t['shipped']:10.1f} | {1e3 * t[alt]:14.1f} | {t[alt] / t['shipped']:.2f}x")
    if with_compile:
        x = torch.randn(1, 1, 16, 32, 32)
        logsnr = torch.zeros(1, dtype=torch.float64)
        start = time.perf_counter()
        compiled = torch.compile(net)
        with torch.no_grad():
            compiled(x, logsnr)
            compile_s = time.perf_counter() - start
            t = interleaved({"shipped": lambda: net(x, logsnr), "compiled": lambda: compiled(x, logsnr)}, repeats)
        print(f"{'torch.compile (vs eager)':34} | {1:5} | {1e3 * t['shipped']:10.1f} | {1e3 * t['compiled']:14.1f} | "
              f"{t['compiled'] / t['shipped']:.2f}x (compile {compile_s:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed warm runs (median); the paper config runs once")
    parser.add_argument("--budget-s", type=float, default=60.0, help="soft time limit per row")
    parser.add_argument("--skip-paper", action="store_true", help="leave out the large paper-shaped config")
    parser.add_argument("--levers", action="store_true", help="also time channels-last / fused attention against alternatives")
    parser.add_argument("--compile", action="store_true", help="with --levers: also time torch.compile (slow to compile)")
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    print_header("U-Net forward per NFE (batch 1, fp32)")
    peaks = [matmul_peak_gflops()]
    rows = [forward_row("default", DEFAULT, size, args.repeats, args.budget_s, paper=False) for size in (32, 64)]
    if not args.skip_paper:
        rows += [forward_row("paper", PAPER, size, args.repeats, args.budget_s, paper=True) for size in (32, 64)]
    peaks.append(matmul_peak_gflops())
    peak = max(peaks)
    print(f"# fp32 matmul peak (2048^3, best of {5 * len(peaks)}): {peak:.0f} GFLOP/s")
    print(f"{'config':8} | {'input':12} | {'params':>8} | {'GFLOP':>7} | {'ms/NFE':>8} | {'GFLOP/s':>7} | {'of peak':>7} | FLOPs by layer type")
    for r in rows:
        gflops = r["flops"]["total"] / r["seconds"] / 1e9
        print(f"{r['name']:8} | {r['shape']:12} | {r['params'] / 1e6:7.1f}M | {r['flops']['total'] / 1e9:7.1f} | "
              f"{1e3 * r['seconds']:8.1f} | {gflops:7.0f} | {100 * gflops / peak:6.0f}% | {format_breakdown(r['flops'])}")
    if args.levers:
        levers(args.repeats, args.compile)


if __name__ == "__main__":
    main()
