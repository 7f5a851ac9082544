"""LSKNet: Large Selective Kernel Network (Li et al., arXiv 2403.11735 / ICCV 2023).

The paper's idea: a large receptive field built by *cascading* depthwise convs (5x5, then 7x7
with dilation 3: an effective 23x23 kernel), whose two outputs are weighted per pixel by a
*spatial selection* map computed from channel-pooled statistics. Module and parameter names
follow the official checkpoints (``spatial_gating_unit``, ``conv0``, ``conv_spatial``, ...).

Variants: T dims (32, 64, 160, 256) depths (3, 3, 5, 2); S dims (64, 128, 320, 512) depths
(2, 2, 4, 2); MLP ratios (8, 8, 4, 4). Detection configs use drop_rate = drop_path_rate = 0.1.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from rsvision.models.backbones._pyramid import PyramidBackbone, create_pyramid_model, default_cfg
from rsvision.models.backbones._registry import Family, register_family

__all__ = ["LSKblock", "LSKAttention", "Mlp", "LSKNet"]


class LSKblock(nn.Module):
    """Large selective kernel: cascaded depthwise kernels + spatial kernel selection."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim // 2, 1)
        self.conv2 = nn.Conv2d(dim, dim // 2, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(dim // 2, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a0 = self.conv0(x)  # small receptive field
        b0 = self.conv_spatial(a0)  # large one, cascaded on the first
        a, b = self.conv1(a0), self.conv2(b0)
        feats = torch.cat([a, b], dim=1)
        pooled = torch.cat([feats.mean(dim=1, keepdim=True), feats.amax(dim=1, keepdim=True)], dim=1)
        s = self.conv_squeeze(pooled).sigmoid()  # per-pixel selection weights of the two kernels
        return x * self.conv(a * s[:, 0:1] + b * s[:, 1:2])


class LSKAttention(nn.Module):
    """``proj_2(LSK(GELU(proj_1(u)))) + u``."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LSKblock(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x


class DWConv(nn.Module):
    """3x3 depthwise conv; wrapped so the key is ``mlp.dwconv.dwconv`` as in the checkpoints."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class Mlp(nn.Module):
    """Conv feed-forward: 1x1 -> 3x3 depthwise -> GELU -> dropout -> 1x1 -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class LSKNet(PyramidBackbone):
    """LSKNet backbone / classifier (timm interface; see ``PyramidBackbone``)."""

    def make_attn(self, dim: int) -> nn.Module:
        return LSKAttention(dim)

    def make_mlp(self, dim: int, mlp_ratio: float, drop: float) -> nn.Module:
        return Mlp(dim, int(dim * mlp_ratio), drop)


_VARIANTS = {
    "lsknet_t": dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4)),
    "lsknet_s": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4)),
}

default_cfgs = generate_default_cfgs({f"{name}.untrained": default_cfg() for name in _VARIANTS})
register_family(Family(LSKNet, _VARIANTS, marker=".spatial_gating_unit.", mlp_key="mlp.fc1.weight", mlp_hidden_dim=0))  # fc1: (hidden, dim, 1, 1)


def _create(variant: str, pretrained: bool, **kwargs) -> LSKNet:
    return create_pyramid_model(LSKNet, variant, pretrained, **{**_VARIANTS[variant], **kwargs})


@register_model
def lsknet_t(pretrained: bool = False, **kwargs) -> LSKNet:
    """LSKNet-T: 3.99 M backbone parameters, 18.64 GMACs at 1024x1024."""
    return _create("lsknet_t", pretrained, **kwargs)


@register_model
def lsknet_s(pretrained: bool = False, **kwargs) -> LSKNet:
    """LSKNet-S: 13.84 M backbone parameters, 53.82 GMACs at 1024x1024."""
    return _create("lsknet_s", pretrained, **kwargs)
