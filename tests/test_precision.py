"""Precision selection: AMX detection from cpuinfo, the cached probe, and the names 'resolve_precision' accepts."""

import pytest
import torch

from vdgen import precision
from vdgen.errors import ConfigError
from vdgen.precision import bf16_hardware, bf16_is_faster, cpu_has_amx, cpu_has_native_bf16, resolve_precision

SAPPHIRE_RAPIDS_FLAGS = "fpu vme avx2 avx512f avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8"
ZEN3_FLAGS = "fpu vme avx2 fma sha_ni vaes vpclmulqdq"
# AMD EPYC family 25 model 17 (Zen 4), as one of these sessions' /proc/cpuinfo lists it (abridged).
ZEN4_FLAGS = "fpu vme avx2 fma avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vnni"


def write_cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return path


@pytest.fixture(autouse=True)
def fresh_probe_cache(monkeypatch):
    monkeypatch.setattr(precision, "_probe_cache", {})


def test_amx_detected_from_flags(tmp_path):
    assert cpu_has_amx(write_cpuinfo(tmp_path, SAPPHIRE_RAPIDS_FLAGS))


def test_no_amx_without_both_flags(tmp_path):
    assert not cpu_has_amx(write_cpuinfo(tmp_path, ZEN3_FLAGS))
    assert not cpu_has_amx(write_cpuinfo(tmp_path, "avx512f amx_tile"))  # amx_bf16 missing


def test_no_amx_where_cpuinfo_is_missing_or_has_no_flags(tmp_path):
    assert not cpu_has_amx(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("processor\t: 0\n")
    assert not cpu_has_amx(empty)


def test_native_bf16_is_amx_or_avx512_bf16(tmp_path):
    assert cpu_has_native_bf16(write_cpuinfo(tmp_path, SAPPHIRE_RAPIDS_FLAGS))
    assert cpu_has_native_bf16(write_cpuinfo(tmp_path, ZEN4_FLAGS))
    assert not cpu_has_native_bf16(write_cpuinfo(tmp_path, ZEN3_FLAGS))
    assert not cpu_has_native_bf16(write_cpuinfo(tmp_path, "avx2 avx512_bf16"))  # no avx512f
    assert not cpu_has_native_bf16(tmp_path / "absent")
    assert [bf16_hardware(write_cpuinfo(tmp_path, f)) for f in (SAPPHIRE_RAPIDS_FLAGS, ZEN4_FLAGS, ZEN3_FLAGS)] == [
        "AMX", "AVX512_BF16", "none"]


def test_fp32_without_native_bf16_and_no_probe(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)

    def probe_must_not_run(*args, **kwargs):
        raise AssertionError("the timed probe ran on a CPU without native bf16")

    monkeypatch.setattr(precision, "measure_bf16_speedup", probe_must_not_run)
    assert not bf16_is_faster("cpu")
    assert resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize("speedup, expected", [(2.0, "bf16"), (1.1, "fp32")])
def test_native_bf16_needs_a_measured_speedup(monkeypatch, speedup, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda: speedup)
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_probe_runs_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda: calls.append(1) or 2.0)
    assert bf16_is_faster("cpu") and bf16_is_faster("cpu")
    assert len(calls) == 1


def test_cuda_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert bf16_is_faster("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "fp32"


def test_explicit_names_are_kept(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize("name", ["fp16", "BF16", "", "float32"])
def test_unknown_name_is_a_config_error(name):
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision(name, "cpu")


def test_real_probe_is_short_and_positive():
    speedup = precision.measure_bf16_speedup(repeats=1)
    assert speedup > 0


def test_bf16_on_a_cpu_that_emulates_it_warns(tmp_path):
    zen3 = write_cpuinfo(tmp_path, ZEN3_FLAGS)
    warning = precision.emulated_bf16_warning("bf16", "cpu", zen3)
    assert "no native bf16" in warning and "--precision fp32" in warning


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS_FLAGS, ZEN4_FLAGS])
def test_bf16_on_native_hardware_does_not_warn(tmp_path, flags):
    assert precision.emulated_bf16_warning("bf16", "cpu", write_cpuinfo(tmp_path, flags)) is None


def test_fp32_gpus_and_unknown_cpus_do_not_warn(tmp_path):
    zen3 = write_cpuinfo(tmp_path, ZEN3_FLAGS)
    assert precision.emulated_bf16_warning("fp32", "cpu", zen3) is None
    assert precision.emulated_bf16_warning("bf16", "cuda", zen3) is None
    # No /proc/cpuinfo (macOS, Windows): nothing is known, so nothing is claimed.
    assert precision.emulated_bf16_warning("bf16", "cpu", tmp_path / "missing") is None


def test_arm_cpuinfo_has_no_flags_line_and_gets_no_warning(tmp_path):
    # aarch64 Linux (e.g. AWS Graviton3) lists "Features", with its own names for bf16.
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 svebf16 i8mm\n")
    assert precision.emulated_bf16_warning("bf16", "cpu", path) is None
