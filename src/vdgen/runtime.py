"""Process-wide runtime settings shared by the CLI and the benchmarks."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for this setting on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024


def tune_malloc() -> bool:
    """Keep freed activation buffers in glibc's heap instead of unmapping them after each forward.

    Every U-Net forward otherwise re-faults about 12K pages; with these thresholds the default
    model's forward is about 1.16x faster (bench/unet_speed.py --levers). Returns whether the
    thresholds were set: False off Linux or off glibc, where it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
