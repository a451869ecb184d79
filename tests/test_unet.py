"""The factorised space-time U-Net: shapes, input checks, image-frame isolation and order awareness."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vdgen.config import ModelConfig, preset
from vdgen.errors import ConfigError
from vdgen.layers import TemporalAttention
from vdgen.unet import UNet3D, count_parameters


def small_config(**changes) -> ModelConfig:
    return dataclasses.replace(preset("tiny").model, **changes)


def temporal_layers(net: torch.nn.Module) -> list[TemporalAttention]:
    return [m for m in net.modules() if isinstance(m, TemporalAttention)]


def logsnrs(batch: int, value: float = 0.0) -> torch.Tensor:
    return torch.full((batch,), value, dtype=torch.float64)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("frames", [1, 3, 8, 16])
@pytest.mark.parametrize(
    "height, width, multipliers, attention",
    [
        (16, 16, (1, 2), (8,)),  # stride 2, square
        (16, 32, (1, 2), (8,)),  # stride 2, wide
        (24, 40, (1, 2), (12,)),  # stride 2, sizes that are not powers of two
        (24, 40, (1, 1, 2), (12, 6)),  # stride 4
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape(frames, height, width, multipliers, attention, channels, make_net):
    net = make_net(channels=channels, height=height, width=width, multipliers=multipliers, attention_resolutions=attention)
    z = randn(2, channels, frames, height, width)
    with torch.no_grad():
        out = net(z, logsnrs(2))
    assert out.shape == z.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().max() > 1e-3  # the randomised network does not collapse to zero


def test_frame_count_beyond_the_relative_range_is_refused():
    net = UNet3D(small_config(max_relative_position=3)).eval()
    with torch.no_grad():
        assert net(randn(1, 1, 4, 16, 16), logsnrs(1)).shape == (1, 1, 4, 16, 16)  # 3 + 1 frames: fine
        with pytest.raises(ConfigError) as info:
            net(randn(1, 1, 5, 16, 16), logsnrs(1))
    message = str(info.value)
    assert "\n" not in message and "5 frames" in message and "4" in message


def test_config_window_beyond_the_relative_range_is_refused():
    assert small_config(frames=4, max_relative_position=3).frames == 4
    with pytest.raises(ConfigError, match=r"model.frames \(5\) must be at most"):
        small_config(frames=5, max_relative_position=3)


@pytest.mark.parametrize("height, width, multipliers", [(15, 16, (1, 2)), (18, 16, (1, 2, 2)), (16, 20, (1, 2, 2, 2))])
def test_size_not_divisible_by_the_stride_is_refused(height, width, multipliers):
    stride = 2 ** (len(multipliers) - 1)
    net = UNet3D(small_config(multipliers=multipliers, attention_resolutions=())).eval()
    with torch.no_grad(), pytest.raises(ConfigError) as info:
        net(randn(1, 1, 2, height, width), logsnrs(1))
    message = str(info.value)
    assert "\n" not in message and f"{height}x{width}" in message and f"stride {stride}" in message
    # The config itself refuses such a size too.
    with pytest.raises(ConfigError, match=f"stride {stride}"):
        small_config(height=height, width=width, multipliers=multipliers)


def test_wrong_channels_and_rank_are_refused():
    net = UNet3D(small_config()).eval()
    with torch.no_grad():
        with pytest.raises(ConfigError, match="1 channel"):
            net(randn(1, 3, 2, 16, 16), logsnrs(1))
        with pytest.raises(ConfigError, match="5-D"):
            net(randn(1, 2, 16, 16), logsnrs(1))


def test_parameter_layout_is_stable():
    # Shipped and training checkpoints load strictly by name and shape: a change here breaks them.
    net = UNet3D(preset("tiny").model)
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert count_parameters(net) == 208_041
    assert shapes["conv_in.weight"] == (16, 1, 3, 3)
    assert shapes["mid_attn.temporal.relative_bias"] == (2, 65)
    assert shapes["down.1.attns.0.temporal.relative_bias"] == (2, 65)
    assert shapes["up.0.blocks.0.conv1.weight"] == (32, 64, 3, 3)
    assert shapes["conv_out.weight"] == (1, 16, 3, 3)
    assert len(temporal_layers(net)) == 1 + 1 + 2  # mid, one down level, one up level (2 blocks)


# ------------------------------------------------------------------------------------------ conditioning


def test_each_sample_gets_its_own_logsnr(make_net):
    # Catches conditioning broadcast across the folded (batch, frame) axis in the wrong order.
    net = make_net()
    z = randn(2, 1, 3, 16, 16)
    with torch.no_grad():
        both = net(z, torch.tensor([-6.0, 4.0], dtype=torch.float64))
        first = net(z[:1], logsnrs(1, -6.0))
        second = net(z[1:], logsnrs(1, 4.0))
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=0)
    assert (first - net(z[:1], logsnrs(1, 4.0)).detach()).abs().max() > 1e-3  # logsnr matters


def test_eval_mode_is_deterministic_with_dropout(make_net):
    net = make_net(dropout=0.5)
    z = randn(1, 1, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(z, logsnrs(1)), net(z, logsnrs(1)))
        net.train()
        assert not torch.equal(net(z, logsnrs(1)), net(z, logsnrs(1)))


# ------------------------------------------------------------------------------------------ image frames (VDM section 3)


def run(net, z, mask=None):
    with torch.no_grad():
        return net(z, logsnrs(z.shape[0], 1.0), mask)


def changed_frames(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> list[int]:
    """Frame indices where outputs [1, C, F, H, W] differ beyond `atol`."""
    return [f for f in range(a.shape[2]) if (a[:, :, f] - b[:, :, f]).abs().max() > atol]


IMAGE_MASK = torch.tensor([[False, True, False, False, True, False]])  # frames 1 and 4 are independent images


@pytest.mark.parametrize("image_frame", [1, 4])
def test_changing_an_image_frame_changes_only_that_frame(image_frame, make_net):
    net = make_net()
    z = randn(1, 1, 6, 16, 16)
    z2 = z.clone()
    z2[:, :, image_frame] = randn(1, 1, 16, 16, seed=1)
    assert changed_frames(run(net, z, IMAGE_MASK), run(net, z2, IMAGE_MASK)) == [image_frame]
    # Control: without the mask the change spreads to every frame.
    assert changed_frames(run(net, z), run(net, z2)) == list(range(6))


@pytest.mark.parametrize("video_frame", [0, 5])
def test_video_frames_never_reach_image_frames(video_frame, make_net):
    net = make_net()
    z = randn(1, 1, 6, 16, 16)
    z2 = z.clone()
    z2[:, :, video_frame] = randn(1, 1, 16, 16, seed=2)
    assert changed_frames(run(net, z, IMAGE_MASK), run(net, z2, IMAGE_MASK)) == [0, 2, 3, 5]


def test_appended_images_are_exactly_separate_runs(make_net):
    # Joint training's layout: a video with K images appended. The video part must equal the video
    # run alone, and each image must equal that image run as a 1-frame clip: nothing leaks, not
    # even the relative-position bias.
    net = make_net()
    for layer in temporal_layers(net):
        layer.relative_bias.data = randn(*layer.relative_bias.shape, seed=3)
    video, images = randn(1, 1, 4, 16, 16, seed=4), randn(1, 1, 2, 16, 16, seed=5)
    mask = torch.tensor([[False] * 4 + [True] * 2])
    joint = run(net, torch.cat([video, images], dim=2), mask)
    torch.testing.assert_close(joint[:, :, :4], run(net, video), atol=1e-5, rtol=0)
    for k in range(2):
        torch.testing.assert_close(joint[:, :, 4 + k], run(net, images[:, :, k : k + 1])[:, :, 0], atol=1e-5, rtol=0)


def test_mask_applies_per_sample(make_net):
    net = make_net()
    z = randn(2, 1, 4, 16, 16)
    mask = torch.tensor([[False, False, False, True], [False, False, False, False]])
    z2 = z.clone()
    z2[:, :, 3] = randn(2, 1, 16, 16, seed=6)
    a, b = run(net, z, mask), run(net, z2, mask)
    assert changed_frames(a[:1], b[:1]) == [3]  # sample 0: frame 3 is an image
    assert changed_frames(a[1:], b[1:]) == [0, 1, 2, 3]  # sample 1: all video
    # A 1-D mask [F] applies to every sample.
    torch.testing.assert_close(run(net, z, mask[0]), run(net, z, mask[:1].expand(2, 4)), atol=0, rtol=0)


def test_all_video_mask_equals_no_mask(make_net):
    net = make_net()
    z = randn(1, 1, 4, 16, 16)
    torch.testing.assert_close(run(net, z, torch.zeros(1, 4, dtype=torch.bool)), run(net, z), atol=0, rtol=0)


def test_image_only_mode_treats_every_frame_alone(make_net):
    net = make_net()
    z = randn(1, 1, 3, 16, 16)
    out = run(net, z, torch.ones(1, 3, dtype=torch.bool))
    for f in range(3):
        torch.testing.assert_close(out[:, :, f], run(net, z[:, :, f : f + 1])[:, :, 0], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ frame order


def reversal_gap(net, z) -> float:
    """max |net(reversed z) - reversed(net(z))|: zero iff the network ignores frame order."""
    return (run(net, z.flip(2)) - run(net, z).flip(2)).abs().max().item()


def test_relative_positions_make_the_network_order_aware(make_net):
    net = make_net()
    for i, layer in enumerate(temporal_layers(net)):
        layer.relative_bias.data = randn(*layer.relative_bias.shape, seed=10 + i)
    z = randn(1, 1, 5, 16, 16)
    scale = run(net, z).abs().max().item()
    assert reversal_gap(net, z) > 0.05 * scale


def test_without_relative_bias_temporal_attention_is_permutation_equivariant(make_net):
    # The control for the test above: with the bias zeroed nothing else carries frame order.
    net = make_net()
    for layer in temporal_layers(net):
        layer.relative_bias.data.zero_()
    z = randn(1, 1, 5, 16, 16)
    assert reversal_gap(net, z) < 1e-5
    permutation = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(run(net, z[:, :, permutation]), run(net, z)[:, :, permutation], atol=1e-5, rtol=0)
