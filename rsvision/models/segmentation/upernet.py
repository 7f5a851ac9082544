"""UperNet decoder (Xiao et al., ECCV 2018): a pyramid pooling module on the coarsest feature and an
FPN over all levels, fused at the finest stride. MTP and LSKNet report segmentation with this head.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PPM(nn.Module):
    """Pyramid pooling (PSPNet): average-pool at several grid sizes, project, upsample, concatenate.

    The pooled branches use conv + ReLU without BatchNorm: a 1x1 pooled map has one value per
    channel, so BatchNorm would fail (and be meaningless) for batches of one image.
    """

    def __init__(self, cin: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(cin, channels, 1), nn.ReLU(inplace=True))
            for s in pool_scales
        )
        self.bottleneck = ConvBNReLU(cin + len(pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return self.bottleneck(torch.cat(outs, 1))


class UperHead(nn.Module):
    """Features ``[(B, C_i, H/s_i, W/s_i)]`` (fine to coarse) -> logits ``(B, K, H/s_0, W/s_0)``."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.ppm = PPM(in_channels[-1], channels, pool_scales)
        self.lateral = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [lat(f) for lat, f in zip(self.lateral, feats[:-1])] + [self.ppm(feats[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, 1))))
