"""Feature Pyramid Network (Lin et al., 2017) as used by Oriented R-CNN.

Semantics follow mmdet 2.x ``FPN`` with ``num_outs=5`` and no extra convs: lateral 1x1 convs,
top-down nearest upsampling to the *exact* size of the finer map (so odd sizes work), 3x3 output
convs, and one extra level P6 = ``max_pool2d(P5, kernel 1, stride 2)``.  Submodules are named
``lateral_convs.{i}.conv`` / ``fpn_convs.{i}.conv`` so MMRotate checkpoints load key for key.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FPN"]


class _ConvWrap(nn.Module):
    """A conv behind a ``.conv`` attribute (mmcv ``ConvModule`` key layout without norm/act)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """FPN over backbone maps of strides 4/8/16/32 giving P2-P6 (strides 4..64).

    Args:
        in_channels: channels of each backbone map, finest first.
        out_channels: width of every output level (256 in the paper).
        num_outs: number of outputs; levels beyond ``len(in_channels)`` are max-pools of the last.

    Input: list of ``len(in_channels)`` tensors (B, C_i, H_i, W_i). Output: list of ``num_outs``
    tensors (B, out_channels, H_i, W_i).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError("num_outs must be >= number of input levels")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(_ConvWrap(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(_ConvWrap(out_channels, out_channels, 3) for _ in in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mmdet FPN: xavier-uniform convs, zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs

