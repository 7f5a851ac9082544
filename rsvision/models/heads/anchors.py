"""Horizontal anchors with mmdet 2.x ``AnchorGenerator`` semantics.

Base anchors of level ``l`` have sizes ``stride * scale * (1/sqrt(r), sqrt(r))`` for each ratio
``r = h / w`` (scale-major order), centred at ``center_offset * stride`` (0 for Oriented R-CNN,
i.e. the top-left corner of each cell, not its middle; no rounding).  The grid shifts them by
``(x * stride, y * stride)`` so that row ``(y * W + x) * A + a`` is anchor ``a`` at cell ``(y, x)``,
which is the order an RPN head's ``permute(0, 2, 3, 1)`` flattening produces.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator"]


class AnchorGenerator:
    """Anchors for every pyramid level.

    Args:
        strides: stride of each level (4, 8, 16, 32, 64 for P2-P6).
        ratios: height / width ratios.
        scales: anchor sizes in units of the stride (8 gives 32 px at stride 4).
        center_offset: anchor centre within a cell, as a fraction of the stride.
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = (8,),
        center_offset: float = 0.0,
    ):
        self.strides = [int(s) for s in strides]
        self.ratios = [float(r) for r in ratios]
        self.scales = [float(s) for s in scales]
        self.center_offset = float(center_offset)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_anchors(self) -> int:
        """Anchors per feature-map cell (same on every level)."""
        return len(self.ratios) * len(self.scales)

    def base_anchors(self, level: int, dtype=torch.float32, device=None) -> Tensor:
        """(A, 4) xyxy anchors of one level centred at the cell origin."""
        stride = self.strides[level]
        ratios = torch.tensor(self.ratios, dtype=dtype, device=device)
        scales = torch.tensor(self.scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1.0 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        c = self.center_offset * stride
        return torch.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], dim=-1)

    def single_level_anchors(
        self, featmap_size: Sequence[int], level: int, dtype=torch.float32, device=None
    ) -> Tensor:
        """(H * W * A, 4) xyxy anchors of one level for a (H, W) feature map."""
        h, w = int(featmap_size[0]), int(featmap_size[1])
        stride = self.strides[level]
        base = self.base_anchors(level, dtype, device)
        shift_x = torch.arange(w, dtype=dtype, device=device) * stride
        shift_y = torch.arange(h, dtype=dtype, device=device) * stride
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)

    def grid_anchors(
        self, featmap_sizes: Sequence[Sequence[int]], dtype=torch.float32, device=None
    ) -> list[Tensor]:
        """Anchors of every level: list of (H_l * W_l * A, 4) xyxy tensors."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(featmap_sizes)}")
        return [self.single_level_anchors(s, i, dtype, device) for i, s in enumerate(featmap_sizes)]

    def __repr__(self) -> str:
        return (
            f"AnchorGenerator(strides={self.strides}, ratios={self.ratios}, scales={self.scales}, "
            f"center_offset={self.center_offset})"
        )

