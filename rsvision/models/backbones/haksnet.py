"""HAKSNet: hierarchical adaptive kernel selection (LSKNet's body with new attn and mlp).

``attn(x) = spatial_mix(x) + channe_mix(x) + x``:
- *spatial_mix* cascades undilated depthwise kernels 3/5/7/9 and mixes the four responses with
  a per-pixel spatial weight (from their channel means) times a per-layer kernel weight (softmax
  over the four kernels, from their global average pools): adaptive kernel selection per layer.
- *channe_mix* (official key spelling) is squeeze-excitation gating followed by a depthwise
  "cfam" refinement. The official code multiplies the gated map by ``x`` once more
  (``x * x * sigmoid(fc(pool(x)))``); the released weights were trained that way, so we keep it.
``mlp`` is a partial-conv gated FFN: a 3x3 conv on the first quarter of the channels, then a
gated (GLU-like) depthwise FFN without activation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from rsvision.models.backbones._pyramid import PyramidBackbone, create_pyramid_model, default_cfg
from rsvision.models.backbones._registry import Family, register_family

__all__ = ["SpatialMix", "ChannelMix", "ChannelAttention", "HAKSAttention", "PartialConvMlp", "HAKSNet"]


def _dw(dim: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)


class SpatialMix(nn.Module):
    """Cascaded depthwise kernels 3-5-7-9 weighted by spatial (A_s) and kernel (A_k) attention."""

    def __init__(self, dim: int):
        super().__init__()
        self.dw_conv3, self.dw_conv5, self.dw_conv7, self.dw_conv9 = (_dw(dim, k) for k in (3, 5, 7, 9))
        self.spatial_fusion = nn.Conv2d(4, 4, 7, padding=3)
        self.kernel_attn = nn.Sequential(nn.Conv2d(4 * dim, 4, 1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u1 = self.dw_conv3(x)
        u2 = self.dw_conv5(u1)
        u3 = self.dw_conv7(u2)
        u4 = self.dw_conv9(u3)
        us = (u1, u2, u3, u4)
        a_s = self.spatial_fusion(torch.cat([u.mean(dim=1, keepdim=True) for u in us], dim=1)).sigmoid()
        a_k = self.kernel_attn(torch.cat([u.mean(dim=(2, 3), keepdim=True) for u in us], dim=1)).softmax(dim=1)
        w = a_s * a_k  # (B, 4, H, W): per-pixel weight of each kernel
        return x * (u1 * w[:, 0:1] + u2 * w[:, 1:2] + u3 * w[:, 2:3] + u4 * w[:, 3:4])


class ChannelAttention(nn.Module):
    """Squeeze-excitation gate: ``x * sigmoid(fc(avgpool(x)))`` with a C/4 bottleneck."""

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv2d(dim, dim // reduction, 1), nn.ReLU(inplace=True), nn.Conv2d(dim // reduction, dim, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3), keepdim=True)).sigmoid()


class ChannelMix(nn.Module):
    """Channel gating, times ``x`` again (as trained), then a depthwise refinement (cfam)."""

    def __init__(self, dim: int):
        super().__init__()
        self.channel_attention = ChannelAttention(dim)
        self.cfam = nn.Sequential(_dw(dim, 3), nn.GELU(), _dw(dim, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cfam(self.channel_attention(x) * x)


class HAKSAttention(nn.Module):
    """``spatial_mix(x) + channe_mix(x) + x``."""

    def __init__(self, dim: int):
        super().__init__()
        self.spatial_mix = SpatialMix(dim)
        self.channe_mix = ChannelMix(dim)  # official key spelling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_mix(x) + self.channe_mix(x) + x


class PartialConvMlp(nn.Module):
    """Partial 3x3 conv on C/4 channels, then ``linear2(dwconv(h1) * h2)`` with ``h1, h2 = linear1(x)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim_conv = dim // 4
        self.partial_conv3 = nn.Conv2d(self.dim_conv, self.dim_conv, 3, padding=1, bias=False)
        self.linear1 = nn.Conv2d(dim, 2 * hidden, 1)
        self.dwconv = _dw(hidden, 3)
        self.linear2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, [self.dim_conv, x.shape[1] - self.dim_conv], dim=1)
        x = torch.cat([self.partial_conv3(x1), x2], dim=1)
        h1, h2 = self.linear1(x).chunk(2, dim=1)
        return self.linear2(self.dwconv(h1) * h2)


class HAKSNet(PyramidBackbone):
    """HAKSNet backbone / classifier (timm interface; see ``PyramidBackbone``)."""

    def make_attn(self, dim: int) -> nn.Module:
        return HAKSAttention(dim)

    def make_mlp(self, dim: int, mlp_ratio: float, drop: float) -> nn.Module:
        return PartialConvMlp(dim, int(dim * mlp_ratio))  # the paper's FFN has no dropout


_VARIANTS = {
    "haksnet_t": dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4)),
    "haksnet_s": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4)),
}

default_cfgs = generate_default_cfgs({f"{name}.untrained": default_cfg() for name in _VARIANTS})
register_family(Family(HAKSNet, _VARIANTS, marker=".spatial_mix.", mlp_key="mlp.linear2.weight", mlp_hidden_dim=1))  # linear2: (dim, hidden, 1, 1)


def _create(variant: str, pretrained: bool, **kwargs) -> HAKSNet:
    return create_pyramid_model(HAKSNet, variant, pretrained, **{**_VARIANTS[variant], **kwargs})


@register_model
def haksnet_t(pretrained: bool = False, **kwargs) -> HAKSNet:
    """HAKSNet-T: 4.70 M backbone parameters, 22.96 GMACs at 1024x1024."""
    return _create("haksnet_t", pretrained, **kwargs)


@register_model
def haksnet_s(pretrained: bool = False, **kwargs) -> HAKSNet:
    """HAKSNet-S: 15.88 M backbone parameters, 63.75 GMACs at 1024x1024."""
    return _create("haksnet_s", pretrained, **kwargs)
