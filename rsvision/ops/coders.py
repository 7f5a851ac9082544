"""Box coders of Oriented R-CNN, with MMRotate 0.3.4 semantics (pinned by the golden tests).

* :class:`MidpointOffsetCoder`: horizontal anchors ``(x1, y1, x2, y2)`` <-> rotated boxes through six
  deltas ``(dx, dy, dw, dh, da, db)`` (the oriented RPN).
* :class:`DeltaXYWHAOBBoxCoder`: rotated proposals <-> rotated boxes through ``(dx, dy, dw, dh, da)``
  (the RoI head; ``proj_xy`` measures the centre offset in the proposal's own frame, ``edge_swap``
  picks the w/h assignment that needs the smaller rotation).

Both ``encode`` methods cast to float32 first, as the reference does, so training targets are float32
whatever the input dtype; ``decode`` keeps the dtype of ``deltas``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .boxes import norm_angle, obb2poly, obb2xyxy, poly2obb

__all__ = ["MidpointOffsetCoder", "DeltaXYWHAOBBoxCoder"]

_HALF_PI = math.pi / 2


class DeltaXYWHAOBBoxCoder:
    """Rotated proposal -> rotated box deltas (MMRotate ``DeltaXYWHAOBBoxCoder``).

    Args mirror the reference; ``norm_factor`` (if set) divides the angle delta by ``norm_factor*pi``.
    ``add_ctr_clamp`` limits the centre shift to ``ctr_clamp`` pixels and only clamps dw/dh from above.
    """

    def __init__(
        self,
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 0.1),
        angle_range: str = "le90",
        norm_factor: float | None = None,
        edge_swap: bool = True,
        proj_xy: bool = True,
        add_ctr_clamp: bool = False,
        ctr_clamp: float = 32,
    ):
        self.means = tuple(float(m) for m in target_means)
        self.stds = tuple(float(s) for s in target_stds)
        self.angle_range = angle_range
        self.norm_factor = norm_factor
        self.edge_swap = edge_swap
        self.proj_xy = proj_xy
        self.add_ctr_clamp = add_ctr_clamp
        self.ctr_clamp = ctr_clamp

    def encode(self, bboxes: Tensor, gt_bboxes: Tensor) -> Tensor:
        """``(N, 5)`` proposals and ``(N, 5)`` targets -> ``(N, 5)`` float32 normalised deltas."""
        if bboxes.shape != gt_bboxes.shape or bboxes.shape[-1] != 5:
            raise ValueError(f"expected equal (N, 5) shapes, got {tuple(bboxes.shape)}, {tuple(gt_bboxes.shape)}")
        return self.encode_exact(bboxes.float(), gt_bboxes.float())

    def encode_exact(self, bboxes: Tensor, gt_bboxes: Tensor) -> Tensor:
        """:meth:`encode` without the float32 cast (computes in the inputs' dtype)."""
        px, py, pw, ph, pa = bboxes.unbind(-1)
        gx, gy, gw, gh, ga = gt_bboxes.unbind(-1)
        if self.proj_xy:
            cos, sin = torch.cos(pa), torch.sin(pa)
            dx = (cos * (gx - px) + sin * (gy - py)) / pw
            dy = (-sin * (gx - px) + cos * (gy - py)) / ph
        else:
            dx = (gx - px) / pw
            dy = (gy - py) / ph
        if self.edge_swap:
            d1 = norm_angle(ga - pa, self.angle_range)
            d2 = norm_angle(ga - pa + _HALF_PI, self.angle_range)
            keep = torch.abs(d1) < torch.abs(d2)  # strict: a tie takes the swapped option
            da = torch.where(keep, d1, d2)
            dw = torch.log(torch.where(keep, gw, gh) / pw)
            dh = torch.log(torch.where(keep, gh, gw) / ph)
        else:
            da = norm_angle(ga - pa, self.angle_range)
            dw = torch.log(gw / pw)
            dh = torch.log(gh / ph)
        if self.norm_factor:
            da = da / (self.norm_factor * math.pi)
        deltas = torch.stack([dx, dy, dw, dh, da], dim=-1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(
        self,
        bboxes: Tensor,
        deltas: Tensor,
        max_shape: Sequence[int] | None = None,
        wh_ratio_clip: float = 16 / 1000,
    ) -> Tensor:
        """``(N, 5)`` proposals and ``(N, 5*k)`` deltas -> ``(N, 5*k)`` boxes.

        ``max_shape = (H, W)`` clamps the *centre* to ``[0, W-1] x [0, H-1]`` (w, h are not clamped).
        dw, dh are clamped to ``+-|log(wh_ratio_clip)|`` after de-normalisation. With ``edge_swap`` a
        box with ``w <= h`` (ties included) is returned as ``(h, w, norm(a + pi/2))``.
        """
        k = deltas.shape[-1] // 5
        means = deltas.new_tensor(self.means).repeat(k)
        stds = deltas.new_tensor(self.stds).repeat(k)
        d = deltas * stds + means
        dx, dy, dw, dh, da = (d[:, i::5] for i in range(5))
        if self.norm_factor:
            da = da * (self.norm_factor * math.pi)
        px, py, pw, ph, pa = (bboxes[:, i : i + 1].to(deltas.dtype) for i in range(5))
        max_ratio = abs(math.log(wh_ratio_clip))
        dx_w, dy_h = pw * dx, ph * dy
        if self.add_ctr_clamp:
            dx_w = dx_w.clamp(-self.ctr_clamp, self.ctr_clamp)
            dy_h = dy_h.clamp(-self.ctr_clamp, self.ctr_clamp)
            dw = dw.clamp(max=max_ratio)
            dh = dh.clamp(max=max_ratio)
        else:
            dw = dw.clamp(-max_ratio, max_ratio)
            dh = dh.clamp(-max_ratio, max_ratio)
        gw = pw * dw.exp()
        gh = ph * dh.exp()
        if self.proj_xy:
            cos, sin = torch.cos(pa), torch.sin(pa)
            gx = dx * pw * cos - dy * ph * sin + px
            gy = dx * pw * sin + dy * ph * cos + py
        else:
            gx = px + dx_w
            gy = py + dy_h
        ga = norm_angle(pa + da, self.angle_range)
        if max_shape is not None:
            gx = gx.clamp(0, max_shape[1] - 1)
            gy = gy.clamp(0, max_shape[0] - 1)
        if self.edge_swap:
            wide = gw > gh
            w = torch.where(wide, gw, gh)
            h = torch.where(wide, gh, gw)
            ga = norm_angle(torch.where(wide, ga, ga + _HALF_PI), self.angle_range)
            gw, gh = w, h
        return torch.stack([gx, gy, gw, gh, ga], dim=-1).view(deltas.shape)


class MidpointOffsetCoder:
    """Horizontal anchor -> rotated box via midpoint offsets (MMRotate ``MidpointOffsetCoder``).

    The target is the gt's horizontal box plus ``da`` (offset of the top vertex from the box's centre
    column, as a fraction of its width) and ``db`` (offset of the right vertex from the centre row).
    """

    def __init__(
        self,
        target_means: Sequence[float] = (0.0,) * 6,
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5),
        angle_range: str = "le90",
    ):
        self.means = tuple(float(m) for m in target_means)
        self.stds = tuple(float(s) for s in target_stds)
        self.angle_range = angle_range

    def encode(self, bboxes: Tensor, gt_bboxes: Tensor) -> Tensor:
        """``(N, 4)`` xyxy anchors and ``(N, 5)`` rotated gts -> ``(N, 6)`` float32 deltas.

        The top vertex is the rightmost vertex within 0.1 px of the minimum y, the right vertex the
        lowest one within 0.1 px of the maximum x (independently, as the reference; a thin box at a
        tiny angle can therefore round-trip to a degenerate box).
        """
        if bboxes.shape[-1] != 4 or gt_bboxes.shape[-1] != 5 or bboxes.shape[0] != gt_bboxes.shape[0]:
            raise ValueError(f"expected (N, 4) and (N, 5), got {tuple(bboxes.shape)}, {tuple(gt_bboxes.shape)}")
        return self.encode_exact(bboxes.float(), gt_bboxes.float())

    def encode_exact(self, anchors: Tensor, gt: Tensor) -> Tensor:
        """:meth:`encode` without the float32 cast (computes in the inputs' dtype)."""
        px = (anchors[:, 0] + anchors[:, 2]) * 0.5
        py = (anchors[:, 1] + anchors[:, 3]) * 0.5
        pw = anchors[:, 2] - anchors[:, 0]
        ph = anchors[:, 3] - anchors[:, 1]
        hbb = obb2xyxy(gt, self.angle_range)
        poly = obb2poly(gt, self.angle_range)
        gx = (hbb[:, 0] + hbb[:, 2]) * 0.5
        gy = (hbb[:, 1] + hbb[:, 3]) * 0.5
        gw = hbb[:, 2] - hbb[:, 0]
        gh = hbb[:, 3] - hbb[:, 1]
        xs, ys = poly[:, 0::2], poly[:, 1::2]
        y_min = ys.amin(1, keepdim=True)
        x_max = xs.amax(1, keepdim=True)
        fill = xs.new_tensor(-1000.0)
        ga = torch.where(torch.abs(ys - y_min) > 0.1, fill, xs).amax(1)
        gb = torch.where(torch.abs(xs - x_max) > 0.1, fill, ys).amax(1)
        deltas = torch.stack(
            [(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph), (ga - gx) / gw, (gb - gy) / gh],
            dim=-1,
        )
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(
        self,
        bboxes: Tensor,
        deltas: Tensor,
        max_shape: Sequence[int] | None = None,
        wh_ratio_clip: float = 16 / 1000,
    ) -> Tensor:
        """``(N, 4)`` anchors and ``(N, 6)`` deltas -> ``(N, 5)`` rotated boxes (``max_shape`` is ignored,
        as in the reference, so proposals may extend past the image).

        da, db are clamped to ``[-0.5, 0.5]``; the quadrilateral of the four midpoints is made a
        rectangle by stretching every centre-to-vertex vector to the longest one, then converted with
        :func:`poly2obb`. ``|da| = |db| = 0.5`` gives ``h = 0``.
        """
        del max_shape
        if deltas.shape[-1] != 6:
            raise ValueError(f"expected (N, 6) deltas, got {tuple(deltas.shape)}")
        d = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        dx, dy, dw, dh, da, db = d.unbind(-1)
        max_ratio = abs(math.log(wh_ratio_clip))
        dw = dw.clamp(-max_ratio, max_ratio)
        dh = dh.clamp(-max_ratio, max_ratio)
        a = bboxes.to(deltas.dtype)
        px = (a[:, 0] + a[:, 2]) * 0.5
        py = (a[:, 1] + a[:, 3]) * 0.5
        pw = a[:, 2] - a[:, 0]
        ph = a[:, 3] - a[:, 1]
        gw = pw * dw.exp()
        gh = ph * dh.exp()
        gx = px + pw * dx
        gy = py + ph * dy
        x1, y1, x2, y2 = gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5
        da = da.clamp(-0.5, 0.5)
        db = db.clamp(-0.5, 0.5)
        polys = torch.stack([gx + da * gw, y1, x2, gy + db * gh, gx - da * gw, y2, x1, gy - db * gh], dim=-1)
        center = torch.stack([gx, gy] * 4, dim=-1)
        vec = polys - center
        diag = torch.sqrt(vec[:, 0::2] ** 2 + vec[:, 1::2] ** 2)
        scale = diag.amax(-1, keepdim=True) / diag
        rect = vec * scale.repeat_interleave(2, dim=-1) + center
        return poly2obb(rect, self.angle_range)
