"""U-Net forward time per NFE and achieved GFLOP/s against the fp32 matmul peak of the same run.

    python bench/unet_speed.py [--threads N] [--repeats R] [--budget-s S] [--skip-paper] [--levers] [--compile]

Rows: the default config (the shipped checkpoint: 1 channel, base 32, multipliers (1, 2, 4)) and a
paper-shaped config (base 128, multipliers (1, 2, 4, 8), 2 res blocks, attention at 32/16/8, head
dim 64), each at 16x32x32 and 16x64x64, batch 1. The config is built for each frame size, so its
attention sits at the resolutions it names. The paper config is large: it is timed once (one warm
run), within --budget-s. --levers times the shipped choices against their alternatives on the
default config (fp32 channels-last vs NCHW, fused vs hand-written attention, bf16 NCHW vs
channels-last, glibc malloc thresholds, optionally torch.compile), interleaved so that load
drifts hit both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from flops import count_flops, format_breakdown, forward_in_child, matmul_peak_gflops, print_header, set_threads, time_call
from vdgen.config import ModelConfig
from vdgen.layers import Downsample, ResBlock, SpatialAttention, TemporalAttention, Upsample
from vdgen.precision import cpu_has_native_bf16
from vdgen.runtime import MMAP_THRESHOLD, TRIM_THRESHOLD
from vdgen.unet import AttentionPair, UNet3D, count_parameters

DEFAULT = ModelConfig(dropout=0.0)
PAPER = ModelConfig(
    base_width=128, multipliers=(1, 2, 4, 8), res_blocks=2, attention_resolutions=(32, 16, 8), heads=2, dropout=0.0
)
PAPER_HEAD_DIM = 64
# glibc frees and re-faults the activations' pages on every forward (its heap is trimmed, large
# blocks are mmap-ed); fixing both thresholds keeps the pages. Measured as a lever, not shipped.


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


def force_layout(net: UNet3D, memory_format: torch.memory_format) -> UNet3D:
    """`net` with every block's input converted to `memory_format` (forward pre-hooks; bench only)."""
    for module in net.modules():
        if isinstance(module, (ResBlock, AttentionPair, Downsample, Upsample)):
            module.register_forward_pre_hook(lambda mod, args: (args[0].contiguous(memory_format=memory_format), *args[1:]))
    return net


def copy_of(net: UNet3D) -> UNet3D:
    twin = UNet3D(net.config).eval()
    twin.load_state_dict(net.state_dict())
    return twin


def levers(repeats: int, with_compile: bool) -> None:
    """Each shipped choice against its alternative on the default config, timed in alternation."""
    net = UNet3D(DEFAULT).eval()
    nchw = force_layout(copy_of(net), torch.contiguous_format)
    channels_last = force_layout(copy_of(net), torch.channels_last)
    print("lever (shipped vs alternative)            | batch | shipped ms | alternative ms | shipped speedup")

    def report(label: str, batch: int, shipped: float, alternative: float, note: str = "") -> None:
        print(f"{label:42} | {batch:5} | {1e3 * shipped:10.1f} | {1e3 * alternative:14.1f} | {alternative / shipped:.2f}x{note}")

    for batch in (1, 8):
        x = torch.randn(batch, 1, 16, 32, 32)
        logsnr = torch.zeros(batch, dtype=torch.float64)

        def unfused():
            with unfused_attention():
                net(x, logsnr)

        with torch.no_grad():
            t = interleaved({"shipped": lambda: net(x, logsnr), "nchw": lambda: nchw(x, logsnr), "unfused": unfused},
                            repeats if batch == 1 else max(2, repeats // 3))
        report("fp32 channels-last vs NCHW", batch, t["shipped"], t["nchw"])
        report("fused SDPA vs softmax(QK^T)V", batch, t["shipped"], t["unfused"])
    if cpu_has_native_bf16():
        x = torch.randn(1, 1, 16, 32, 32)
        logsnr = torch.zeros(1, dtype=torch.float64)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            t = interleaved({"shipped": lambda: net(x, logsnr), "cl": lambda: channels_last(x, logsnr)}, repeats)
        report("bf16 autocast: NCHW vs channels-last", 1, t["shipped"], t["cl"], " (1-channel model)")
    threads = torch.get_num_threads()
    tuned = [forward_in_child(DEFAULT, threads, repeats, tuned_malloc=True)["seconds"] for _ in range(2)]
    plain = [forward_in_child(DEFAULT, threads, repeats, tuned_malloc=False)["seconds"] for _ in range(2)]
    report("CLI malloc thresholds vs glibc default", 1, min(tuned), min(plain),
           f" (mmap {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 30} GiB; fresh processes)")
    if with_compile:
        x = torch.randn(1, 1, 16, 32, 32)
        logsnr = torch.zeros(1, dtype=torch.float64)
        start = time.perf_counter()
        compiled = torch.compile(net)
        with torch.no_grad():
            compiled(x, logsnr)
            compile_s = time.perf_counter() - start
            t = interleaved({"shipped": lambda: net(x, logsnr), "compiled": lambda: compiled(x, logsnr)}, repeats)
        report("eager vs torch.compile", 1, t["shipped"], t["compiled"], f" (compile {compile_s:.0f} s)")


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
    print(f"# fp32 matmul peak (2048^3 and 4096^3, best of {10 * len(peaks)}): {peak:.0f} GFLOP/s")
    print(f"{'config':8} | {'input':12} | {'params':>8} | {'GFLOP':>7} | {'ms/NFE':>8} | {'GFLOP/s':>7} | {'of peak':>7} | FLOPs by layer type")
    for r in rows:
        gflops = r["flops"]["total"] / r["seconds"] / 1e9
        print(f"{r['name']:8} | {r['shape']:12} | {r['params'] / 1e6:7.1f}M | {r['flops']['total'] / 1e9:7.1f} | "
              f"{1e3 * r['seconds']:8.1f} | {gflops:7.0f} | {100 * gflops / peak:6.0f}% | {format_breakdown(r['flops'])}")
    if args.levers:
        levers(args.repeats, args.compile)


if __name__ == "__main__":
    main()
