"""Choosing the numeric precision: fp32 everywhere, bf16 autocast only where it measures faster.

On CPUs bf16 is fast only with native bf16 instructions: AMX tiles (Intel Sapphire Rapids and
later) or AVX512_BF16 dot products (AMD Zen 4, Intel Cooper Lake). Elsewhere (AMD Zen 3, older
Xeons) oneDNN emulates it and it can be 100x slower than fp32. So "auto" picks bf16 on a CPU only
if /proc/cpuinfo lists one of those *and* a short timed probe, run once per process, shows bf16 at
least BF16_MIN_SPEEDUP faster on a small conv + matmul workload. On CUDA it is bf16 wherever the
GPU supports it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from vdgen.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
# bf16 must beat fp32 by this factor in the probe before "auto" picks it: below it the rounding
# error is not worth the speed.
BF16_MIN_SPEEDUP = 1.3
AMX_FLAGS = ("amx_bf16", "amx_tile")
AVX512_BF16_FLAGS = ("avx512f", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")

_probe_cache: dict[str, float] = {}
# A first bf16 run slower than this many warm fp32 runs means emulated bf16.
_EMULATED_FACTOR = 20.0


def cpu_fields(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's entries in `cpuinfo` ("flags", "cpu family", "model", ...); empty
    where it cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The first processor's flags in `cpuinfo`; empty where it cannot be read or lists none."""
    return set(cpu_fields(cpuinfo).get("flags", "").split())


def bf16_hardware(cpuinfo: Path = CPUINFO) -> str:
    """'AMX', 'AVX512_BF16' or 'none' (emulated): what bf16 matmuls run on."""
    return _bf16_hardware_of(cpu_flags(cpuinfo))


def _bf16_hardware_of(flags: set[str]) -> str:
    """bf16_hardware for a set of cpuinfo flags."""
    if flags.issuperset(AMX_FLAGS):
        return "AMX"
    return "AVX512_BF16" if flags.issuperset(AVX512_BF16_FLAGS) else "none"


def cpu_has_amx(cpuinfo: Path = CPUINFO) -> bool:
    """True if the CPU flags in `cpuinfo` include amx_bf16 and amx_tile; False where it cannot be read."""
    return bf16_hardware(cpuinfo) == "AMX"


def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True if the CPU computes bf16 in hardware: AMX tiles, or AVX-512 with AVX512_BF16 dot products."""
    return bf16_hardware(cpuinfo) != "none"


def _probe_workload() -> tuple[torch.nn.Module, torch.Tensor]:
    """A small U-Net-like workload: 3x3 convs and a token matmul, [8, 64, 32, 32]."""
    generator = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.Flatten(2),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    x = torch.randn(8, 64, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
    return net, x


def _time_probe(net: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, bf16: bool, repeats: int) -> list[float]:
    """Wall times of 1 + `repeats` runs of the probe workload (the first builds oneDNN's kernels)."""
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(1 + repeats):
            start = time.perf_counter()
            h = net(x)  # [B, 64, H*W]
            torch.matmul(h.transpose(1, 2), weight)
            times.append(time.perf_counter() - start)
            # Emulated bf16 (no AMX or AVX512_BF16) is 10-100x slower: stop after the first run, the answer is clear.
            if bf16 and times[0] > _EMULATED_FACTOR * _probe_cache.get("fp32_s", float("inf")):
                break
    return times


def measure_bf16_speedup(repeats: int = 5) -> float:
    """fp32 time / bf16-autocast time of the probe (best of `repeats` warm runs each), well under a second."""
    net, x = _probe_workload()
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    fp32 = min(_time_probe(net, x, weight, bf16=False, repeats=repeats)[1:])
    _probe_cache["fp32_s"] = fp32
    bf16 = min(_time_probe(net, x, weight, bf16=True, repeats=repeats))
    return fp32 / bf16


def bf16_is_faster(device: torch.device | str) -> bool:
    """Whether bf16 autocast should be the automatic choice on `device` (cached per process).

    CUDA: wherever the GPU supports bf16. CPU: only with native bf16 (AMX or AVX512_BF16), and only
    if the probe shows bf16 at least BF16_MIN_SPEEDUP times faster than fp32. Any other device: never.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    if "cpu" not in _probe_cache:
        _probe_cache["cpu"] = cpu_has_native_bf16() and measure_bf16_speedup() >= BF16_MIN_SPEEDUP
    return bool(_probe_cache["cpu"])


def resolve_precision(name: str, device: torch.device | str) -> str:
    """'fp32' or 'bf16' for a requested precision 'fp32', 'bf16' or 'auto' on `device`."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if bf16_is_faster(device) else "fp32"
    return name


def emulated_bf16_warning(precision: str, device: torch.device | str, cpuinfo: Path | None = None) -> str | None:
    """A warning when bf16 is to run on an x86 CPU that only emulates it (no AMX, no AVX512_BF16), else None.

    "auto" never picks bf16 there; this catches an explicit `--precision bf16`, or a run whose
    config.json says bf16 resumed on such a CPU. On the 2-core Zen 3 of 2026-12-07 the probe ran
    bf16 at 0.06x the speed of fp32 (`bench/results/2026-12-07-zen3-train-speed/bf16_probe.txt`).
    Only x86 cpuinfo has a "flags" line; elsewhere (ARM's "Features", no /proc/cpuinfo at all)
    nothing is known, so nothing is claimed.
    """
    # Read CPUINFO at call time (not as a default argument), so tests can point it at a fake file.
    if precision != "bf16" or torch.device(device).type != "cpu":
        return None
    fields = cpu_fields(cpuinfo or CPUINFO)
    if "flags" not in fields or _bf16_hardware_of(set(fields["flags"].split())) != "none":
        return None
    return (
        "this CPU has no native bf16 (neither AMX nor AVX512_BF16 in /proc/cpuinfo), so bf16 is emulated "
        "and many times slower than fp32; use --precision fp32 (or auto)"
    )


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for precision 'bf16'; a no-op context for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
