"""Semantic FPN (Kirillov et al., Panoptic FPN, CVPR 2019): an FPN neck, then per level a stack of
conv + 2x upsampling down to the finest stride, summed and classified. Lighter than UperNet.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvision.models.segmentation.upernet import ConvBNReLU


class FPNNeck(nn.Module):
    """Plain FPN: 1x1 laterals, nearest top-down sum, 3x3 output convs (all ``channels`` wide)."""

    def __init__(self, in_channels: Sequence[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.out = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        return [conv(x) for conv, x in zip(self.out, lat)]


class SemanticFPNHead(nn.Module):
    """Features (fine to coarse, strides doubling) -> logits at the finest stride."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 128,
        head_channels: int | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        head_channels = head_channels or channels
        self.neck = FPNNeck(in_channels, channels)
        self.scale_heads = nn.ModuleList()
        for level in range(len(in_channels)):
            layers: list[nn.Module] = []
            for k in range(max(1, level)):
                layers.append(ConvBNReLU(channels if k == 0 else head_channels, head_channels, 3))
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        pyramid = self.neck(feats)
        size = pyramid[0].shape[-2:]
        out = self.scale_heads[0](pyramid[0])
        for head, p in zip(self.scale_heads[1:], pyramid[1:]):
            y = head(p)
            if y.shape[-2:] != size:  # odd input sizes: strides are not exact powers of two
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = out + y
        return self.classifier(self.dropout(out))
