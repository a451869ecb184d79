"""Seconds per training step of the shipped config: fused against unfused spatial attention.

    python bench/train_speed.py [--threads N] [--precision bf16|fp32] [--steps 5] [--rounds 3] [--chunks 64,256] [--f32-softmax] [--compile]

Runs the product's own training step (`vdgen.train._train_step`: a Moving MNIST batch, the
v-prediction loss, backward, clipping, Adam, EMA) on the `mmnist32` preset (batch 16, 16x32x32).
Rows, timed in alternation round by round so that load drifts hit all alike:
- `fused`: the spatial attention always runs `F.scaled_dot_product_attention`;
- `unfused/C`: matmul, softmax, matmul in chunks of C frames (the shipped rule in bf16 CPU training
  uses `vdgen.layers.UNFUSED_CHUNK`), one row per --chunks value;
- `f32-softmax/C` (with --f32-softmax): the same with the softmax in float32 (the rejected variant);
- `compiled` (with --compile): the network under `torch.compile` (TorchInductor; needs a C++
  compiler), with the shipped attention rule. Its first step (compile included) is timed and
  printed before the table; it is not in the row's time. Training does not compile (yet): this
  row measures whether it should.
Each row is the median over all its timed steps after one warm step per round. The last column is
the fused row's time over this row's: above 1 means faster than the fused kernel. Stop training
runs first (see README.md): on 2 cores any other busy process makes timings meaningless.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from flops import print_header, set_threads
from vdgen import layers
from vdgen.config import preset
from vdgen.train import DistInfo, _train_step, make_dataset, new_state


def f32_softmax_attention(q, k, v, chunk):
    """unfused_attention with the softmax in float32, cast back for the second matmul."""
    outs = []
    for qs, ks, vs in zip(q.split(chunk), k.split(chunk), v.split(chunk)):
        weights = torch.softmax(torch.matmul(qs * q.shape[-1] ** -0.5, ks.transpose(-1, -2)), dim=-1, dtype=torch.float32)
        outs.append(torch.matmul(weights.to(vs.dtype), vs))
    return torch.cat(outs)


SHIPPED = "shipped"


@contextlib.contextmanager
def attention_rule(chunk: int | None | str, f32_softmax: bool = False):
    """Force the fused kernel (chunk None) or the unfused path in chunks of `chunk` frames; SHIPPED
    keeps the product's own rule (`vdgen.layers.spatial_attend`)."""
    if chunk == SHIPPED:
        yield
        return
    saved = layers.spatial_attend

    def fused(q, k, v, training):
        return F.scaled_dot_product_attention(q, k, v)

    def unfused(q, k, v, training):
        if f32_softmax:
            return f32_softmax_attention(q, k, v, chunk)
        return layers.unfused_attention(q, k, v, chunk)

    layers.spatial_attend = fused if chunk is None else unfused
    try:
        yield
    finally:
        layers.spatial_attend = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all rows in alternation")
    parser.add_argument("--chunks", default=str(layers.UNFUSED_CHUNK), help="comma-separated chunk sizes to time")
    parser.add_argument("--f32-softmax", action="store_true", help="also time the float32-softmax variant at each chunk size")
    parser.add_argument("--compile", action="store_true", help="also time the network under torch.compile (shipped attention rule)")
    args = parser.parse_args()
    set_threads(args.threads)
    print_header(f"training step, mmnist32 preset, {args.precision}")

    config = preset("mmnist32")
    state = new_state(config, torch.device("cpu"))
    dataset = make_dataset(config)
    chunks = [int(c) for c in args.chunks.split(",")]
    if min(chunks) < 1:
        parser.error(f"--chunks must be positive integers, got {args.chunks}")
    rows: dict[str, tuple[int | None | str, bool]] = {"fused": (None, False)}
    rows.update({f"unfused/{c}": (c, False) for c in chunks})
    if args.f32_softmax:
        rows.update({f"f32-softmax/{c}": (c, True) for c in chunks})
    networks = {name: state.net for name in rows}
    cpu = torch.device("cpu")
    if args.compile:
        rows["compiled"] = (SHIPPED, False)
        networks["compiled"] = torch.compile(state.net)
        t0 = time.perf_counter()
        _train_step(networks["compiled"], state, config, dataset, DistInfo(), cpu, args.precision)
        print(f"# torch.compile: first step, compile included: {time.perf_counter() - t0:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, (chunk, f32_softmax) in rows.items():
            with attention_rule(chunk, f32_softmax):
                _train_step(networks[name], state, config, dataset, DistInfo(), cpu, args.precision)
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    _train_step(networks[name], state, config, dataset, DistInfo(), cpu, args.precision)
                    times[name].append(time.perf_counter() - t0)
    fused = statistics.median(times["fused"])
    print(f"{'row':<16}{'s/step':>10}{'samples/s':>12}{'fused/row':>11}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<16}{median:>10.3f}{config.train.batch_size / median:>12.2f}{fused / median:>10.2f}x")


if __name__ == "__main__":
    main()
