"""Spatial attention: the unfused bf16 training path against a float64 reference, and when it runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vdgen import layers
from vdgen.layers import SpatialAttention, spatial_attend, unfused_attention


def reference(q, k, v):
    """softmax(q k^T / sqrt(d)) v in float64, written out."""
    q, k, v = (x.double() for x in (q, k, v))
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


def qkv(n=70, heads=2, positions=64, dim=16, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn(n, heads, positions, dim, generator=generator)).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_unfused_matches_the_closed_form_in_float64(chunk):
    q, k, v = qkv(dtype=torch.float64)
    torch.testing.assert_close(unfused_attention(q, k, v, chunk), reference(q, k, v), rtol=1e-12, atol=1e-12)


def test_unfused_bf16_is_within_bf16_error_of_the_reference_in_value_and_gradient():
    q, k, v = (x.requires_grad_() for x in qkv(dtype=torch.bfloat16))
    out = unfused_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * weights).sum().backward()
    grads = [x.grad.double() for x in (q, k, v)]

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    expected = reference(q64, k64, v64)
    (expected * weights.double()).sum().backward()
    # bf16 keeps 8 bits of mantissa: errors of a few 2^-8 of each tensor's scale.
    assert (out.double() - expected).abs().max() < 0.05 * expected.abs().max()
    for got, want in zip(grads, (q64.grad, k64.grad, v64.grad)):
        assert (got - want).abs().max() < 0.05 * want.abs().max()
    # The control: dropping the 1/sqrt(d) scale is far outside that tolerance.
    unscaled = torch.softmax(q64 @ k64.transpose(-1, -2), dim=-1) @ v64
    assert (out.double() - unscaled).abs().max() > 0.2 * expected.abs().max()


def test_unfused_chunks_give_the_same_bits():
    q, k, v = qkv(n=130, dtype=torch.bfloat16)
    whole = unfused_attention(q, k, v, chunk=130)
    for chunk in (1, 64, 100):
        assert torch.equal(unfused_attention(q, k, v, chunk), whole)


class Spy:
    """Counts calls of the unfused path while it runs the real one."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = layers.unfused_attention

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(layers, "unfused_attention", counted)


@pytest.mark.parametrize(
    "dtype, training, grad, positions, unfused",
    [
        (torch.bfloat16, True, True, 64, True),
        (torch.bfloat16, True, True, 256, True),
        (torch.bfloat16, True, True, 257, False),  # larger frames: the fused kernel
        (torch.bfloat16, True, False, 64, False),  # no autograd
        (torch.bfloat16, False, True, 64, False),  # eval mode with grad, as reconstruction guidance runs
        (torch.float32, True, True, 64, False),  # fp32 training
    ],
)
def test_the_unfused_path_runs_only_in_bf16_cpu_training(monkeypatch, dtype, training, grad, positions, unfused):
    spy = Spy(monkeypatch)
    q, k, v = qkv(n=4, positions=positions, dtype=dtype)
    with torch.set_grad_enabled(grad):
        out = spatial_attend(q, k, v, training)
    assert spy.calls == int(unfused)
    if not unfused:
        assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))


def test_the_layer_passes_its_mode(monkeypatch):
    spy = Spy(monkeypatch)
    layer = SpatialAttention(channels=16, heads=2)
    h = torch.randn(3, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.train()(h).float().sum().backward()
        assert spy.calls == 1
        with torch.enable_grad():
            layer.eval()(h.requires_grad_()).float().sum().backward()
        assert spy.calls == 1
