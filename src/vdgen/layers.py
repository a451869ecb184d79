"""Building blocks of the factorised space-time U-Net (VDM section 2).

Activations are folded to `[B*F, C, H, W]`: every spatial layer (1x3x3 conv, GroupNorm,
spatial attention) then acts on each frame on its own, and only the temporal attention mixes
frames. GroupNorm over a folded frame normalises that frame alone, so an independent image frame
(VDM section 3) is never mixed with the others outside the temporal attention, where a mask
fixes its attention to the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vdgen.schedule import t_from_logsnr


def norm_groups(channels: int) -> int:
    """The largest of 32, 16, 8, 4, 2, 1 that divides `channels` (GroupNorm's group count)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels, eps=1e-6)


class LogSNREmbedding(nn.Module):
    """Sinusoidal features of t(logsnr) followed by a small MLP: [B] float64 -> [B, cond_dim]."""

    def __init__(self, base_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.base_dim = base_dim
        self.mlp = nn.Sequential(nn.Linear(base_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, logsnr: torch.Tensor) -> torch.Tensor:
        # Embed t = t(logsnr) in [0, 1] at the scale of 1000 discrete steps, as DDPM-style nets do.
        t = t_from_logsnr(logsnr.double()).clamp(0.0, 1.0) * 1000.0
        half = self.base_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
        angles = t[:, None] * freqs[None, :]
        features = torch.cat([angles.cos(), angles.sin()], dim=1)
        if self.base_dim % 2:
            features = F.pad(features, (0, 1))
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """Wide ResNet block, per frame: GN-SiLU-conv, FiLM on the conditioning, GN-SiLU-dropout-conv."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """h [B*F, C, H, W]; cond [B*F, cond_dim] (already SiLU-ed and repeated per frame)."""
        # SiLU in place only without autograd: its backward needs its input.
        inplace = not torch.is_grad_enabled()
        x = self.conv1(F.silu(self.norm1(h), inplace=inplace))
        scale, shift = self.film(cond).chunk(2, dim=1)  # [B*F, C] each
        # FiLM folded into norm2's affine, one pass over x instead of three:
        # (GN(x) gamma + beta)(1 + scale) + shift = GN(x) [gamma (1 + scale)] + [beta (1 + scale) + shift].
        gain = 1 + scale
        weight = (self.norm2.weight * gain)[:, :, None, None]
        bias = torch.addcmul(shift, self.norm2.bias, gain)[:, :, None, None]
        x = torch.addcmul(bias, F.group_norm(x, self.norm2.num_groups, eps=self.norm2.eps), weight)
        x = self.conv2(self.dropout(F.silu(x, inplace=inplace)))
        return x.add_(self.skip(h))  # conv2's output is fresh and its backward does not need it


# The bf16 backward of the fused CPU attention kernel is slow at this model's shapes (64 or 256
# positions, heads of 16 or 32 channels): far more of a training step than its share of the FLOPs.
# Plain matmul, softmax, matmul in chunks of frames is faster there (`bench/train_speed.py`).
UNFUSED_MAX_POSITIONS = 256
UNFUSED_CHUNK = 64


def unfused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int = UNFUSED_CHUNK) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two dims, `chunk` entries of dim 0 at a time.

    The softmax runs in the inputs' dtype (PyTorch's CPU kernel accumulates bf16 in float32 and
    rounds only its output): a float32 softmax of bf16 scores loses the whole gain
    (`bench/train_speed.py --f32-softmax`).
    """
    scale = q.shape[-1] ** -0.5
    outs = []
    for qs, ks, vs in zip(q.split(chunk), k.split(chunk), v.split(chunk)):
        weights = torch.softmax(torch.matmul(qs * scale, ks.transpose(-1, -2)), dim=-1)
        outs.append(torch.matmul(weights, vs))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def spatial_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, training: bool) -> torch.Tensor:
    """Attention for [N, heads, L, d] inputs: the unfused path in bf16 CPU training, else the fused kernel."""
    if (
        training
        and torch.is_grad_enabled()
        and q.dtype == torch.bfloat16
        and q.device.type == "cpu"
        and q.shape[-2] <= UNFUSED_MAX_POSITIONS
    ):
        return unfused_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


class SpatialAttention(nn.Module):
    """Self-attention over the H*W positions of each frame on its own."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B*F, C, H, W] -> same shape."""
        n, c, height, width = h.shape
        tokens = rearrange(self.norm(h), "n c h w -> n (h w) c")
        q, k, v = rearrange(self.qkv(tokens), "n l (three m d) -> three n m l d", three=3, m=self.heads)
        out = spatial_attend(q, k, v, self.training)
        out = self.proj(rearrange(out, "n m l d -> n l (m d)"))
        return h + rearrange(out, "n (h w) c -> n c h w", h=height, w=width)


class TemporalAttention(nn.Module):
    """Self-attention over frames at every spatial position, with a learned relative-position bias.

    The bias is one learned scalar per head and per frame offset (offsets clipped to
    +-max_relative_position), so the layer knows frame order. A frame marked as an independent
    image attends only to itself, and no video frame attends to it (VDM section 3).
    """

    def __init__(self, channels: int, heads: int, max_relative_position: int) -> None:
        super().__init__()
        self.heads = heads
        self.max_relative_position = max_relative_position
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.relative_bias = nn.Parameter(torch.zeros(heads, 2 * max_relative_position + 1))
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def attention_bias(self, frames: int, image_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive attention bias [B or 1, 1, heads, F, F]: relative positions plus the image mask."""
        device = self.relative_bias.device
        pos = torch.arange(frames, device=device)
        offsets = (pos[None, :] - pos[:, None]).clamp(-self.max_relative_position, self.max_relative_position)
        bias = self.relative_bias[:, offsets + self.max_relative_position].to(dtype)  # [heads, F, F]
        bias = bias[None, None]
        if image_mask is None:
            return bias
        is_video = ~image_mask  # [B, F]
        both_video = is_video[:, :, None] & is_video[:, None, :]
        allowed = both_video | torch.eye(frames, dtype=torch.bool, device=device)[None]
        blocked = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        # The bias only ever links two video frames; an image frame's single logit gets none.
        return bias * both_video[:, None, None].to(dtype) + blocked[:, None, None]

    def forward(self, h: torch.Tensor, frames: int, image_mask: torch.Tensor | None) -> torch.Tensor:
        """h [B*F, C, H, W] -> same shape; image_mask [B, F] bool (True: independent image) or None."""
        n, c, height, width = h.shape
        tokens = rearrange(self.norm(h), "(b f) c h w -> b (h w) f c", f=frames)
        q, k, v = rearrange(self.qkv(tokens), "b l f (three m d) -> three b l m f d", three=3, m=self.heads)
        bias = self.attention_bias(frames, image_mask, q.dtype)  # [B or 1, 1, heads, F, F]
        if torch.is_grad_enabled():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(2, 3)  # [B, L, F, heads, d]
        else:
            # The fused kernel takes only 4-D inputs (a 5-D call runs the unfused path, copying q, k
            # and v), so without autograd attend one sample at a time on strided views of qkv.
            outs = [
                F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=bias[i if bias.shape[0] > 1 else 0]).transpose(1, 2)
                for i in range(q.shape[0])
            ]
            out = torch.stack(outs) if len(outs) > 1 else outs[0][None]
        out = self.proj(out.flatten(3))
        return h + rearrange(out, "b (h w) f c -> (b f) c h w", h=height, w=width)


class Downsample(nn.Module):
    """Spatial-only downsampling by 2: a strided 3x3 conv per frame."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(h)


class Upsample(nn.Module):
    """Spatial-only upsampling by 2: nearest neighbour, then a 3x3 conv per frame."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
