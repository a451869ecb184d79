"""Shared tiny fixtures: a randomised tiny U-Net and a checkpoint of it, written once per session.

Tests run on one thread: the machine's few cores are shared with training jobs and other suites.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vdgen.config import preset
from vdgen.unet import UNet3D

torch.set_num_threads(1)


def randomise(net: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter, so the zero-initialised output convs, projections and relative
    biases take part and the network's output depends on its whole input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return net


def tiny_net(seed: int = 0, **model_changes) -> UNet3D:
    """The 'tiny' preset's U-Net (4 frames, 16x16, base 16) with random weights, in eval mode."""
    import dataclasses

    config = preset("tiny").model
    if model_changes:
        config = dataclasses.replace(config, **model_changes)
    torch.manual_seed(seed)
    return randomise(UNet3D(config), seed).eval()


@pytest.fixture(scope="session")
def make_net():
    """`make_net(seed=0, **model_changes)`: a fresh randomised tiny U-Net (see `tiny_net`)."""
    return tiny_net


@pytest.fixture(scope="session")
def tiny_config():
    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A tiny model checkpoint (randomised weights, v-prediction) in a session tmp folder."""
    from vdgen.checkpoint import save_model

    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    net = tiny_net(0)
    save_model(path, net.state_dict(), tiny_config.model, tiny_config.diffusion, {"made_by": "tests/conftest.py"})
    return path


@pytest.fixture
def emulating_cpu(tmp_path, monkeypatch) -> Path:
    """Point vdgen.precision.CPUINFO at an x86 cpuinfo without AMX or AVX512_BF16 (bf16 emulated,
    as on AMD Zen 3); returns the file, which a test may rewrite with other flags."""
    from vdgen import precision

    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    monkeypatch.setattr(precision, "CPUINFO", path)
    return path
