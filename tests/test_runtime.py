"""Process-wide runtime settings: the glibc malloc thresholds the CLI sets at start-up."""

import platform
import subprocess
import sys

import pytest

from vdgen import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_malloc_sets_the_thresholds_on_glibc():
    # In a child, so this test process keeps glibc's defaults.
    code = "from vdgen.runtime import tune_malloc; import sys; sys.exit(0 if tune_malloc() else 3)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_tune_malloc_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.tune_malloc() is False


def test_thresholds_are_within_glibc_limits():
    # glibc rejects an mmap threshold above 32 MiB on 64-bit (HEAP_MAX_SIZE / 2).
    assert 0 < runtime.MMAP_THRESHOLD <= 32 * 1024 * 1024
    assert runtime.TRIM_THRESHOLD >= runtime.MMAP_THRESHOLD
