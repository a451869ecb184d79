"""The factorised space-time 3D U-Net (VDM section 2), built only from a ModelConfig."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vdgen.config import ModelConfig
from vdgen.errors import ConfigError
from vdgen.layers import (
    Downsample,
    LogSNREmbedding,
    ResBlock,
    SpatialAttention,
    TemporalAttention,
    Upsample,
    group_norm,
)


class AttentionPair(nn.Module):
    """Spatial attention per frame, then temporal attention over frames (VDM section 2)."""

    def __init__(self, channels: int, config: ModelConfig) -> None:
        super().__init__()
        self.spatial = SpatialAttention(channels, config.heads)
        self.temporal = TemporalAttention(channels, config.heads, config.max_relative_position)

    def forward(self, h: torch.Tensor, frames: int, image_mask: torch.Tensor | None) -> torch.Tensor:
        return self.temporal(self.spatial(h), frames, image_mask)


class Level(nn.Module):
    """One U-Net level: residual blocks, each optionally followed by an attention pair."""

    def __init__(self, widths: list[tuple[int, int]], attend: bool, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(i, o, config.cond_dim, config.dropout) for i, o in widths)
        self.attns = nn.ModuleList(AttentionPair(o, config) for _, o in widths) if attend else None


class UNet3D(nn.Module):
    """forward(z [B, C, F, H, W], logsnr [B], image_mask [B, F] | None) -> raw output [B, C, F, H, W].

    The raw output is eps, v or x depending on the diffusion config; `vdgen.diffusion.Denoiser`
    turns it into x_hat. `image_mask[b, f]` True marks frame f as an independent image.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_width * m for m in config.multipliers]
        self.embed = LogSNREmbedding(config.base_width, config.cond_dim)
        self.conv_in = nn.Conv2d(config.channels, widths[0], 3, padding=1)

        resolution = min(config.height, config.width)
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_widths = [widths[0]]
        ch = widths[0]
        for i, width in enumerate(widths):
            pairs = []
            for _ in range(config.res_blocks):
                pairs.append((ch, width))
                ch = width
                skip_widths.append(ch)
            self.down.append(Level(pairs, resolution in config.attention_resolutions, config))
            if i < len(widths) - 1:
                self.downsamplers.append(Downsample(ch))
                skip_widths.append(ch)
                resolution //= 2

        self.mid1 = ResBlock(ch, ch, config.cond_dim, config.dropout)
        self.mid_attn = AttentionPair(ch, config)
        self.mid2 = ResBlock(ch, ch, config.cond_dim, config.dropout)

        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            pairs = []
            for _ in range(config.res_blocks + 1):
                pairs.append((ch + skip_widths.pop(), width))
                ch = width
            self.up.append(Level(pairs, resolution in config.attention_resolutions, config))
            if i > 0:
                self.upsamplers.append(Upsample(ch))
                resolution *= 2
        assert not skip_widths

        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, config.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def check_input(self, z: torch.Tensor) -> None:
        """Raise ConfigError if z [B, C, F, H, W] does not fit this network."""
        cfg = self.config
        if z.ndim != 5:
            raise ConfigError(f"expected a 5-D input [B, C, F, H, W], got shape {tuple(z.shape)}")
        _, c, frames, height, width = z.shape
        if c != cfg.channels:
            raise ConfigError(f"the model takes {cfg.channels} channel(s), got {c}")
        if frames > cfg.max_relative_position + 1:
            raise ConfigError(f"{frames} frames exceed the model's temporal range of {cfg.max_relative_position + 1}")
        if height % cfg.stride or width % cfg.stride:
            raise ConfigError(f"frame size {height}x{width} is not divisible by the U-Net stride {cfg.stride}")

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(z)
        batch, _, frames = z.shape[:3]
        emb = F.silu(self.embed(logsnr.reshape(-1).expand(batch)))
        cond = emb.repeat_interleave(frames, dim=0)  # [B*F, cond_dim]
        if image_mask is not None:
            image_mask = image_mask.to(torch.bool).reshape(-1, frames).expand(batch, frames)
            if not image_mask.any():
                image_mask = None

        h = self.conv_in(rearrange(z, "b c f h w -> (b f) c h w").contiguous(memory_format=torch.channels_last))
        if not torch.is_autocast_enabled(z.device.type):
            # With one input channel both layouts look alike and conv_in answers NCHW; in fp32 convert
            # anyway (oneDNN's fp32 convs run 1.2-1.5x faster channels-last). Under bf16 autocast the
            # one-channel model stays NCHW: there channels-last GroupNorm is far slower (bench/README.md).
            h = h.contiguous(memory_format=torch.channels_last)
        skips = [h]
        for i, level in enumerate(self.down):
            h, outputs = self._run_level(level, h, cond, frames, image_mask, skips=None)
            skips.extend(outputs)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
                skips.append(h)

        h = self.mid1(h, cond)
        h = self.mid_attn(h, frames, image_mask)
        h = self.mid2(h, cond)

        for i, level in enumerate(self.up):
            h, _ = self._run_level(level, h, cond, frames, image_mask, skips=skips)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h)

        out = self.conv_out(F.silu(self.norm_out(h)))
        return rearrange(out, "(b f) c h w -> b c f h w", f=frames).contiguous()

    @staticmethod
    def _run_level(
        level: Level, h: torch.Tensor, cond: torch.Tensor, frames: int, image_mask: torch.Tensor | None,
        skips: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run one level; on the way up each block first concatenates the next skip from `skips`."""
        outputs = []
        for j, block in enumerate(level.blocks):
            if skips is not None:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, cond)
            if level.attns is not None:
                h = level.attns[j](h, frames, image_mask)
            outputs.append(h)
        return h, outputs


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
