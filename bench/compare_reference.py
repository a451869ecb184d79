"""vdgen against lucidrains' video-diffusion-pytorch 0.7.0 `Unet3D`, side by side in one run.

    python bench/compare_reference.py [--threads N] [--repeats R] [--budget-s S]

Prints one table: per-NFE forward time at equal parameter counts (RGB 16x64x64 and the default
checkpoint's 1x16x32x32), achieved GFLOP/s against the fp32 matmul peak of this run, the cost of a
reconstruction-guided step against an unguided one, training throughput, and the sampling-loop
checks; each row with its ratio and pass/miss against the issue's target.

The reference is installed with `pip install --target /tmp/refpkgs --no-deps` (never into the
project's venv) and imported from there; its unused torchvision / PIL imports (image I/O in its
trainer) are satisfied by stub modules in a temporary folder put on sys.path.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flops import count_flops, format_breakdown, forward_in_child, matmul_peak_gflops, print_header, set_threads, time_call
from vdgen.config import DiffusionConfig, ModelConfig, preset
from vdgen.diffusion import Denoiser, training_loss
from vdgen.guidance import make_conditional_denoiser
from vdgen.sampling import sample
from vdgen.unet import UNet3D, count_parameters

REFERENCE_DIR = Path("/tmp/refpkgs")
# The reference and the pure-Python packages it imports, pinned to its release (Dec 2022).
REFERENCE_PACKAGES = (
    "video-diffusion-pytorch==0.7.0",
    "einops-exts==0.0.4",
    "rotary-embedding-torch==0.2.1",
    "tqdm==4.67.1",
)
STUBS = {
    # Only its GIF dataset and sample writer use these; a stub that answers any attribute is enough.
    "torchvision": "class _Any:\n    def __getattr__(self, name): return _Any()\n    def __call__(self, *a, **k): return _Any()\n"
    "transforms = _Any()\nutils = _Any()\n",
    "PIL": "Image = None\n",
}
PARAM_TOLERANCE = 0.05


def import_reference():
    """lucidrains' Unet3D and GaussianDiffusion from /tmp/refpkgs (installed there on first use)."""
    if not (REFERENCE_DIR / "video_diffusion_pytorch").is_dir():
        print(f"# installing the reference into {REFERENCE_DIR} (pip --target, --no-deps)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(REFERENCE_DIR), *REFERENCE_PACKAGES],
            check=True,
        )
    stub_dir = Path(tempfile.mkdtemp(prefix="vdgen-ref-stubs-"))
    for name, source in STUBS.items():
        if importlib.util.find_spec(name) is None:
            (stub_dir / name).mkdir()
            (stub_dir / name / "__init__.py").write_text(source)
    sys.path[:0] = [str(REFERENCE_DIR), str(stub_dir)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import video_diffusion_pytorch as ref
    return ref


def reference_params(ref, dim: int, dim_mults: tuple[int, ...], channels: int) -> int:
    with torch.device("meta"):
        return count_parameters(ref.Unet3D(dim=dim, dim_mults=dim_mults, channels=channels))


def match_reference(ref, target: int, channels: int, mults_options: list[tuple[int, ...]]) -> tuple[int, tuple[int, ...], int]:
    """The reference's (dim, dim_mults, params) closest to `target` parameters, trying `mults_options` in order.

    dim must be even: its sinusoidal time embedding has 2 * (dim // 2) features for a Linear(dim, ...).
    The first dim_mults whose best dim is within PARAM_TOLERANCE wins.
    """
    best = None
    for mults in mults_options:
        found = min(((d, reference_params(ref, d, mults, channels)) for d in range(8, 129, 2)), key=lambda p: abs(p[1] - target))
        candidate = (found[0], mults, found[1])
        if best is None or abs(candidate[2] - target) < abs(best[2] - target):
            best = candidate
        if abs(found[1] - target) <= PARAM_TOLERANCE * target:
            return candidate
    return best


@dataclasses.dataclass
class Row:
    target: str
    what: str
    vdgen: str
    reference: str
    ratio: float | None
    goal: str
    passed: bool | None


def interleaved_median(fns: list, repeats: int, budget_s: float) -> list[float]:
    """Median time of each of `fns`, timed in alternation so that load drifts hit them alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    for _ in range(max(repeats, 1)):
        for fn, slot in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            slot.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return [statistics.median(t) for t in times]


def forward_case(ref, label: str, config: ModelConfig, mults_options, repeats: int, budget_s: float, rows: list[Row], peak: list[float]):
    """Target 1 and 2 for one input shape: per-NFE time at matched parameters, and vdgen's GFLOP/s."""
    net = UNet3D(config).eval()
    n_vdgen = count_parameters(net)
    dim, mults, n_ref = match_reference(ref, n_vdgen, config.channels, mults_options)
    ref_net = ref.Unet3D(dim=dim, dim_mults=mults, channels=config.channels).eval()
    x = torch.randn(1, config.channels, config.frames, config.height, config.width)
    logsnr = torch.zeros(1, dtype=torch.float64)
    t_ref = torch.full((1,), 500, dtype=torch.long)
    flops_vdgen = count_flops(lambda: net(x, logsnr))
    flops_ref = count_flops(lambda: ref_net(x, t_ref))
    with torch.no_grad():
        t_vdgen, t_reference = interleaved_median([lambda: net(x, logsnr), lambda: ref_net(x, t_ref)], repeats, budget_s)
        # Back-to-back runs in this process, after the reference has run here (its allocations leave
        # glibc's heap fragmented; target 2 is measured in a fresh process, flops.forward_in_child).
        t_alone = time_call(lambda: net(x, logsnr), repeats, budget_s=budget_s)
    peak.append(matmul_peak_gflops())
    diff = (n_ref - n_vdgen) / n_vdgen
    shape = f"1x{config.channels}x{config.frames}x{config.height}x{config.width}"
    print(f"# {label} {shape}: vdgen {n_vdgen / 1e6:.2f}M params (base {config.base_width}, mults {config.multipliers}); "
          f"reference Unet3D(dim={dim}, dim_mults={mults}, channels={config.channels}) {n_ref / 1e6:.2f}M ({100 * diff:+.1f}%)")
    print(f"#   vdgen FLOPs     {format_breakdown(flops_vdgen)}")
    print(f"#   reference FLOPs {format_breakdown(flops_ref)}")
    speedup = t_reference / t_vdgen
    rows.append(Row("1", f"fwd/NFE {label} ({100 * diff:+.1f}% params)", f"{1e3 * t_vdgen:.0f} ms", f"{1e3 * t_reference:.0f} ms",
                    speedup, ">= 2.5x", speedup >= 2.5 and abs(diff) <= PARAM_TOLERANCE))
    return flops_vdgen["total"] / t_alone / 1e9, flops_ref["total"] / t_reference / 1e9, label, config


def guidance_case(repeats: int, budget_s: float, rows: list[Row]) -> None:
    """Target 3: one reconstruction-guided denoiser call against one unguided call, default model, 8 of 16 frames known."""
    config = ModelConfig(dropout=0.0)
    net = UNet3D(config).eval()
    denoiser = Denoiser(net, DiffusionConfig())
    z_t = torch.randn(1, 1, 16, 32, 32)
    logsnr = torch.zeros(1, dtype=torch.float64)
    mask_a = torch.zeros(1, 1, 16, 1, 1, dtype=torch.bool)
    mask_a[:, :, :8] = True
    generators = [torch.Generator().manual_seed(0)]
    guided = make_conditional_denoiser(denoiser, z_t.clamp(-1, 1), mask_a, method="guidance", generators=generators)

    def unguided():
        with torch.no_grad():
            denoiser(z_t, logsnr)

    def guided_step():
        with torch.no_grad():  # as inside the samplers; the wrapper enables grad itself
            guided(z_t, logsnr)

    t_plain, t_guided = interleaved_median([unguided, guided_step], repeats, budget_s)
    ratio = t_guided / t_plain
    rows.append(Row("3", "guided / unguided step (default, b1)", f"{1e3 * t_guided:.0f} ms", f"{1e3 * t_plain:.0f} ms (unguided)",
                    ratio, "<= 2.5x", ratio <= 2.5))


def training_case(ref, batch: int, repeats: int, budget_s: float, rows: list[Row]) -> None:
    """Target 5: training samples/s at the default checkpoint's shape, each package's own loss, Adam step included."""
    config = ModelConfig(dropout=0.0)
    net = UNet3D(config).train()
    dim, mults, _ = match_reference(ref, count_parameters(net), 1, [(1, 2, 4, 8), (1, 2, 4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_diffusion = ref.GaussianDiffusion(
            ref.Unet3D(dim=dim, dim_mults=mults, channels=1), image_size=32, num_frames=16, channels=1, timesteps=1000, loss_type="l2"
        ).train()
    opt_vdgen = torch.optim.Adam(net.parameters(), lr=1e-4)
    opt_ref = torch.optim.Adam(ref_diffusion.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, 16, 32, 32) * 2 - 1
    generator = torch.Generator().manual_seed(0)

    def vdgen_step():
        loss = training_loss(net, DiffusionConfig(), x, generator)
        opt_vdgen.zero_grad(set_to_none=True)
        loss.backward()
        opt_vdgen.step()

    def ref_step():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = ref_diffusion((x + 1) / 2)  # it expects [0, 1] and rescales to [-1, 1] itself
        opt_ref.zero_grad(set_to_none=True)
        loss.backward()
        opt_ref.step()

    t_vdgen, t_ref = interleaved_median([vdgen_step, ref_step], repeats, budget_s)
    ratio = t_ref / t_vdgen
    rows.append(Row("5", f"train samples/s (b{batch}, 1x16x32x32)", f"{batch / t_vdgen:.2f}/s", f"{batch / t_ref:.2f}/s",
                    ratio, ">= 2x", ratio >= 2.0))


def sampling_checks(rows: list[Row]) -> None:
    """Target 6: grad mode inside the unguided sampler, and what the sampler itself allocates per step."""
    shape = (1, 1, 16, 32, 32)
    out = torch.zeros(shape)
    grad_seen = []

    def probe(z_t, logsnr):  # a stand-in network: returns one preallocated x_hat, allocates nothing
        grad_seen.append(torch.is_grad_enabled())
        return out

    sample("ancestral", probe, shape, 4, [0])
    no_grad = not any(grad_seen)
    rows.append(Row("6", "autograd off in unguided sampling", "off" if no_grad else "ON", "", None, "off", no_grad))

    numel = math.prod(shape)
    for name, clips in (("ancestral", 1), ("pc", 2), ("ddim", 1), ("dpm++", 1)):
        counts = []
        for steps in (8, 16):
            with AllocationCounter(min_numel=numel) as counter:
                sample(name, probe, shape, steps, [0])
            counts.append(counter.count)
        # Steady state: one-time buffers (z_1, the noise buffer) cancel; the clip of x_hat is one per NFE.
        per_step = (counts[1] - counts[0]) / 8
        rows.append(Row("6", f"video-sized allocs/step, {name} sampler", f"{per_step:.2f}", "", None, f"<= {clips} (clip/NFE)", per_step <= clips))
    cores = len(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    rows.append(Row("6", "threads (torch) / usable cores", f"{threads} / {cores}", "--threads overrides", None, "= cores", threads == cores))


class AllocationCounter(TorchDispatchMode):
    """Counts op outputs of at least `min_numel` elements stored in fresh memory (not an input's, not a view)."""

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel = min_numel
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {a.untyped_storage().data_ptr() for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel and t.untyped_storage().data_ptr() not in inputs:
                self.count += 1
        return out


def print_table(rows: list[Row]) -> None:
    header = f"{'tgt':3} | {'measurement':42} | {'vdgen':>12} | {'reference':>20} | {'ratio':>6} | {'goal':>15} | result"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        result = {True: "PASS", False: "MISS", None: ""}[r.passed]
        print(f"{r.target:3} | {r.what:42} | {r.vdgen:>12} | {r.reference:>20} | {ratio:>6} | {r.goal:>15} | {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed warm runs per measurement (median)")
    parser.add_argument("--budget-s", type=float, default=30.0, help="soft time limit per measurement")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    print_header("vdgen vs lucidrains video-diffusion-pytorch 0.7.0 Unet3D")
    ref = import_reference()
    peak = [matmul_peak_gflops()]
    rows: list[Row] = []
    rgb = dataclasses.replace(preset("mmnist64").model, channels=3)
    achieved = [
        forward_case(ref, "RGB 64x64", rgb, [(1, 2, 4, 8)], args.repeats, args.budget_s, rows, peak),
        forward_case(ref, "default 32x32", ModelConfig(dropout=0.0), [(1, 2, 4, 8), (1, 2, 4)], args.repeats, args.budget_s, rows, peak),
    ]
    guidance_case(args.repeats * 2, args.budget_s, rows)
    if not args.skip_train:
        training_case(ref, args.train_batch, args.repeats, args.budget_s * 2, rows)
    peak.append(matmul_peak_gflops())
    best_peak = max(peak)
    print(f"# fp32 matmul peak (2048^3 and 4096^3, best of {10 * len(peak)}): {best_peak:.0f} GFLOP/s")
    for vdgen_gflops, ref_gflops, label, config in achieved:
        # As the product runs: vdgen's forward alone in a fresh process, over that process's peak.
        alone = forward_in_child(config, torch.get_num_threads(), args.repeats, args.budget_s, with_peak=True)
        share = alone["gflops"] / alone["peak"]
        rows.append(Row("2", f"fwd GFLOP/s / fp32 peak, {label}", f"{alone['gflops']:.0f} GF/s", f"{ref_gflops:.0f} GF/s",
                        share, ">= 0.50", share >= 0.5))
        print(f"# target 2, {label}: fresh process {alone['gflops']:.0f} GFLOP/s of its peak {alone['peak']:.0f} "
              f"({100 * share:.0f}%); in this process, after the reference ran, {vdgen_gflops:.0f} GFLOP/s "
              f"of {best_peak:.0f} ({100 * vdgen_gflops / best_peak:.0f}%)")
    sampling_checks(rows)
    rows.sort(key=lambda r: r.target)
    print_table(rows)


if __name__ == "__main__":
    main()
