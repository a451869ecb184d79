"""Shared helpers of the benchmarks: FLOP counting by layer type, timing, the matmul peak, the header.

FLOPs are counted at the ATen level with a dispatch mode, so one counter serves vdgen and the
reference package alike: convolutions (`aten.convolution`, transposed ones included), linear layers
(`mm` / `addmm`, which is what `nn.Linear` lowers to) and attention matmuls (`bmm` / `baddbmm`, the
einsums of a hand-written attention, and the fused `scaled_dot_product_attention` kernels, counted
as their two matmuls QK^T and PV). A multiply-add is 2 FLOPs. Normalisations, activations and
softmax are left out: they are memory-bound and a small share of the work.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vdgen.config import to_dict
from vdgen.precision import bf16_hardware, cpu_fields, resolve_precision
from vdgen.runtime import tune_malloc

aten = torch.ops.aten
MALLOC_TUNED = False  # set by set_threads


def _conv_flops(args: tuple, out: torch.Tensor) -> int:
    x, weight = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    kernel = math.prod(weight.shape[2:])
    if transposed:
        # Weight [in, out/groups, k...]: each input element scatters into out/groups * k outputs.
        return 2 * x.numel() * weight.shape[1] * kernel
    # Weight [out, in/groups, k...]: each output element gathers in/groups * k inputs.
    return 2 * out.numel() * weight.shape[1] * kernel


def _mm_flops(a: torch.Tensor, b: torch.Tensor) -> int:
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


def _bmm_flops(a: torch.Tensor, b: torch.Tensor) -> int:
    return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _sdpa_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    # QK^T: [.., L, d] x [.., d, S]; PV: [.., L, S] x [.., S, dv].
    batch = math.prod(q.shape[:-2])
    length, dim = q.shape[-2], q.shape[-1]
    keys, dim_v = k.shape[-2], v.shape[-1]
    return 2 * batch * length * keys * (dim + dim_v)


_SDPA_OPS = {
    name
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_attention_math",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    if hasattr(aten, name)
}


class FlopCounter(TorchDispatchMode):
    """Counts forward FLOPs by layer type ('conv', 'linear', 'attention') of everything run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet is aten.convolution:
            self.flops["conv"] += _conv_flops(args, out)
        elif packet is aten.mm:
            self.flops["linear"] += _mm_flops(args[0], args[1])
        elif packet is aten.addmm:
            self.flops["linear"] += _mm_flops(args[1], args[2])
        elif packet is aten.bmm:
            self.flops["attention"] += _bmm_flops(args[0], args[1])
        elif packet is aten.baddbmm:
            self.flops["attention"] += _bmm_flops(args[1], args[2])
        elif packet.__name__ in _SDPA_OPS:
            self.flops["attention"] += _sdpa_flops(args[0], args[1], args[2])
        return out

    @property
    def total(self) -> int:
        return sum(self.flops.values())


def count_flops(fn: Callable[[], object]) -> dict[str, int]:
    """FLOPs of one call of `fn` by layer type, plus 'total'."""
    with torch.no_grad(), FlopCounter() as counter:
        fn()
    return {**{k: counter.flops.get(k, 0) for k in ("conv", "linear", "attention")}, "total": counter.total}


def format_breakdown(flops: dict[str, int]) -> str:
    total = max(flops["total"], 1)
    parts = [f"{k} {flops[k] / 1e9:.2f} ({100 * flops[k] / total:.0f}%)" for k in ("conv", "linear", "attention")]
    return f"{flops['total'] / 1e9:.2f} GFLOP = " + " + ".join(parts)


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1, budget_s: float | None = None) -> float:
    """Median wall time of `fn` over `repeats` warm runs (fewer if `budget_s` runs out; at least one)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def matmul_peak_gflops(sizes: tuple[int, ...] = (2048, 4096), tries: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of one [n x n] @ [n x n] matmul over `tries` runs at each n in `sizes`: the
    practical peak (the larger size reaches a few percent higher on some CPUs)."""
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        out = torch.empty(size, size, dtype=dtype)
        torch.mm(a, b, out=out)
        fastest = math.inf
        for _ in range(tries):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            fastest = min(fastest, time.perf_counter() - t0)
        best = max(best, 2 * size**3 / fastest / 1e9)
    return best


def cpu_model() -> str:
    """The processor's model name as lscpu gives it (falls back to /proc/cpuinfo, then platform)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_family() -> str:
    """Vendor family/model numbers and the widest vector units, from /proc/cpuinfo: lscpu's name alone
    ("AMD EPYC") does not tell Zen 3 (AVX2) from Zen 4 (AVX-512 with bf16 dot products)."""
    fields = cpu_fields()
    if not fields:
        return "family unknown"
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {vector}"


CHILD_FORWARD = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from flops import count_flops, matmul_peak_gflops, time_call
from vdgen.config import ModelConfig, from_dict
from vdgen.runtime import tune_malloc
from vdgen.unet import UNet3D
if {tuned_malloc}:
    tune_malloc()
if {threads} > 0:
    torch.set_num_threads({threads})
torch.manual_seed(0)
config = from_dict(ModelConfig, json.loads({config!r}), "model")
net = UNet3D(config).eval()
x = torch.randn(1, config.channels, config.frames, config.height, config.width)
logsnr = torch.zeros(1, dtype=torch.float64)
result = {{}}
if {with_peak}:
    result["flops"] = count_flops(lambda: net(x, logsnr))["total"]
    peaks = [matmul_peak_gflops()]
with torch.no_grad():
    result["seconds"] = time_call(lambda: net(x, logsnr), {repeats}, budget_s={budget_s})
if {with_peak}:
    peaks.append(matmul_peak_gflops())
    result["gflops"] = result["flops"] / result["seconds"] / 1e9
    result["peak"] = max(peaks)
print(json.dumps(result))
"""


def forward_in_child(config, threads: int, repeats: int, budget_s: float | None = None, tuned_malloc: bool = True,
                     with_peak: bool = False) -> dict:
    """vdgen's batch-1 forward of `config` timed alone in a fresh Python process (median of warm runs).

    Returns {"seconds"}; with `with_peak` also the counted "flops", the achieved "gflops" and the fp32
    matmul "peak" of that process. `tuned_malloc` sets the CLI's glibc thresholds there (they cannot
    be undone in a process once set, hence the child).
    """
    code = CHILD_FORWARD.format(bench=str(Path(__file__).resolve().parent), tuned_malloc=tuned_malloc, threads=threads,
                                config=json.dumps(to_dict(config)), repeats=repeats, budget_s=budget_s, with_peak=with_peak)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def set_threads(threads: int) -> int:
    """Set up the process as the CLI runs: `threads` intra-op threads (0: keep torch's default) and
    the CLI's glibc malloc thresholds (vdgen.runtime.tune_malloc). Returns the thread count in effect."""
    global MALLOC_TUNED
    MALLOC_TUNED = tune_malloc()
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def set_up(args) -> None:
    """The start of a benchmark's main: `args.threads` set (set_threads) and `args.precision` resolved for the CPU."""
    args.threads = set_threads(args.threads)
    args.precision = resolve_precision(args.precision, "cpu")


def print_header(title: str) -> None:
    """The line every benchmark starts with: what, on which CPU, torch version, threads."""
    hardware = bf16_hardware()
    amx = "no native bf16" if hardware == "none" else f"bf16 on {hardware}"
    print(f"# {title}")
    malloc = "CLI malloc thresholds" if MALLOC_TUNED else "default malloc"
    print(f"# CPU: {cpu_model()} ({cpu_family()}, {amx}) | torch {torch.__version__} | threads {torch.get_num_threads()} | {malloc}")


def moving_mnist_models(paths: list[Path]) -> tuple[list, tuple[int, int] | None]:
    """Load checkpoints that must share one Moving MNIST clip shape: (models, (frames, size)).

    The shape is None when `paths` is empty. Raises VdgenError for an unreadable file, shapes that
    differ, or a shape Moving MNIST does not come in (1 channel, square, 16, 32 or 64 px).
    """
    from vdgen.checkpoint import load_model
    from vdgen.errors import VdgenError

    models = [load_model(path) for path in paths]
    shapes = {(m.model_config.channels, m.model_config.frames, m.model_config.height, m.model_config.width) for m in models}
    if len(shapes) > 1:
        raise VdgenError(f"the checkpoints have different clip shapes {sorted(shapes)}; they cannot share validation clips")
    if not shapes:
        return models, None
    channels, frames, height, width = shapes.pop()
    if channels != 1 or height != width or height not in (16, 32, 64):
        raise VdgenError(f"Moving MNIST gives 1 channel at 16, 32 or 64 px; the checkpoints are {channels}x{height}x{width}")
    return models, (frames, height)

