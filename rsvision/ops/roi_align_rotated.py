"""RoIAlignRotated in pure PyTorch with mmcv 1.7.2 semantics (gather + bilinear; autograd backward).

For every roi ``(batch_idx, cx, cy, w, h, a)`` (input-image pixels) and output bin, a regular grid of
``grid_h x grid_w`` samples is taken in the roi's frame, rotated into the feature map and bilinearly
interpolated; the bin value is their mean. Reference details reproduced exactly:

* centres are scaled by ``spatial_scale`` and, with ``aligned=True``, shifted by ``-0.5``; sizes are
  only scaled (with ``aligned=False`` they are clamped to at least 1 feature pixel);
* ``clockwise=True`` negates the angle (the MMRotate box convention; Oriented R-CNN uses it);
* ``sampling_ratio=0`` picks ``ceil(h*scale/out_h)`` x ``ceil(w*scale/out_w)`` samples per bin, per roi
  (a roi with ``h = 0`` has no samples and outputs 0);
* a sample with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` contributes 0 but still counts in the
  mean; otherwise negative coordinates clamp to 0 and coordinates at or past the last row/column snap
  to it.

Each output bin is one ``embedding_bag`` (a fused weighted gather-sum over its samples' four bilinear
corners), so no (rois x samples x channels) tensor is materialised. The gradient w.r.t. ``features``
is autograd's (a scatter-add of the bilinear weights), matching mmcv's backward kernel; rois get no
gradient.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["roi_align_rotated", "RoIAlignRotated"]

_SAMPLES_PER_CHUNK = 1 << 18  # (roi, sample) pairs indexed at once
_OUTPUTS_PER_CHUNK = 1 << 22  # pooled values (roi x channel x bin) made at once: 16 MB in float32


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def _align_group(
    feat_flat: Tensor, hw: tuple[int, int], bidx: Tensor, cx: Tensor, cy: Tensor, rw: Tensor, rh: Tensor,
    theta: Tensor, out_hw: tuple[int, int], grid: tuple[int, int],
) -> Tensor:
    """Pool K rois that share one sample grid -> (K, C, out_h, out_w)."""
    H, W = hw
    ph, pw = out_hw
    gh, gw = grid
    K = cx.shape[0]
    dt = cx.dtype
    dev = cx.device
    bin_h = (rh / ph)[:, None, None]
    bin_w = (rw / pw)[:, None, None]
    # sample offsets in the roi frame, (K, ph*gh) and (K, pw*gw), in mmcv's operation order
    p_h = torch.arange(ph, device=dev, dtype=dt).repeat_interleave(gh).view(1, -1, 1)
    i_h = (torch.arange(gh, device=dev, dtype=dt) + 0.5).repeat(ph).view(1, -1, 1)
    p_w = torch.arange(pw, device=dev, dtype=dt).repeat_interleave(gw).view(1, 1, -1)
    i_w = (torch.arange(gw, device=dev, dtype=dt) + 0.5).repeat(pw).view(1, 1, -1)
    yy = (-rh / 2.0)[:, None, None] + p_h * bin_h + i_h * bin_h / gh  # (K, ph*gh, 1)
    xx = (-rw / 2.0)[:, None, None] + p_w * bin_w + i_w * bin_w / gw  # (K, 1, pw*gw)
    cos = torch.cos(theta)[:, None, None]
    sin = torch.sin(theta)[:, None, None]
    y = yy * cos - xx * sin + cy[:, None, None]  # (K, ph*gh, pw*gw)
    x = yy * sin + xx * cos + cx[:, None, None]
    inside = (y >= -1.0) & (y <= H) & (x >= -1.0) & (x <= W)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y_low = y.floor()
    x_low = x.floor()
    y_edge = y_low >= H - 1
    x_edge = x_low >= W - 1
    y_low = torch.where(y_edge, torch.full_like(y_low, H - 1), y_low)
    x_low = torch.where(x_edge, torch.full_like(x_low, W - 1), x_low)
    y = torch.where(y_edge, y_low, y)
    x = torch.where(x_edge, x_low, x)
    y_high = torch.where(y_edge, y_low, y_low + 1)
    x_high = torch.where(x_edge, x_low, x_low + 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    valid = inside.to(dt)
    weights = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=-1) * valid[..., None]
    yl, yh = y_low.long().clamp(0, H - 1), y_high.long().clamp(0, H - 1)
    xl, xh = x_low.long().clamp(0, W - 1), x_high.long().clamp(0, W - 1)
    base = (bidx * (H * W))[:, None, None, None]
    idx = base + torch.stack([yl * W + xl, yl * W + xh, yh * W + xl, yh * W + xh], dim=-1)
    # one "bag" per output bin: its gh*gw samples x 4 corners, weighted sum without materialising
    # the gathered features (embedding_bag is a fused gather-multiply-add, with autograd)
    bags = idx.view(K, ph, gh, pw, gw, 4).permute(0, 1, 3, 2, 4, 5).reshape(K * ph * pw, gh * gw * 4)
    w = weights.view(K, ph, gh, pw, gw, 4).permute(0, 1, 3, 2, 4, 5).reshape(K * ph * pw, gh * gw * 4)
    out = F.embedding_bag(bags, feat_flat, per_sample_weights=w.to(feat_flat.dtype), mode="sum")
    out = out / float(max(gh * gw, 1))
    return out.view(K, ph, pw, -1).permute(0, 3, 1, 2)


def roi_align_rotated(
    features: Tensor,
    rois: Tensor,
    output_size,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
) -> Tensor:
    """Rotated RoIAlign (mmcv ``roi_align_rotated``).

    Args:
        features: ``(B, C, H, W)`` feature map.
        rois: ``(K, 6)`` = ``(batch_idx, cx, cy, w, h, a)`` in input-image pixels, ``a`` in radians.
        output_size: ``int`` or ``(out_h, out_w)``.
        spatial_scale: feature pixels per image pixel (``1 / stride``).
        sampling_ratio: samples per bin along each axis; ``0`` = adaptive per roi.
        aligned: shift centres by -0.5 feature pixel (pixel-centre convention).
        clockwise: negate the angle (``True`` for MMRotate / Oriented R-CNN boxes).

    Returns:
        ``(K, C, out_h, out_w)``, differentiable w.r.t. ``features``.
    """
    ph, pw = _pair(output_size)
    B, C, H, W = features.shape
    K = rois.shape[0]
    out = features.new_zeros(K, C, ph, pw)
    if K == 0 or H == 0 or W == 0:
        return out
    r = rois.detach().to(features.dtype)
    offset = 0.5 if aligned else 0.0
    cx = r[:, 1] * spatial_scale - offset
    cy = r[:, 2] * spatial_scale - offset
    rw = r[:, 3] * spatial_scale
    rh = r[:, 4] * spatial_scale
    theta = -r[:, 5] if clockwise else r[:, 5]
    if not aligned:
        rw = rw.clamp(min=1.0)
        rh = rh.clamp(min=1.0)
    bidx = r[:, 0].long()
    if sampling_ratio > 0:
        grids = torch.full((K, 2), int(sampling_ratio), dtype=torch.long)
    else:
        grids = torch.stack([torch.ceil(rh / ph), torch.ceil(rw / pw)], dim=1).cpu()
        grids = torch.nan_to_num(grids, nan=0.0).clamp(min=0, max=1 << 20).long()
    feat_flat = features.permute(0, 2, 3, 1).reshape(B * H * W, C)
    for g in torch.unique(grids, dim=0).tolist():
        gh, gw = g
        sel = ((grids[:, 0] == gh) & (grids[:, 1] == gw)).nonzero(as_tuple=True)[0].to(features.device)
        if gh <= 0 or gw <= 0:
            continue  # no samples: the reference outputs 0
        step = max(1, min(_SAMPLES_PER_CHUNK // (ph * gh * pw * gw), _OUTPUTS_PER_CHUNK // (ph * pw * C)))
        for s in range(0, sel.numel(), step):
            k = sel[s : s + step]
            # written in place chunk by chunk: no copy of the whole (K, C, ph, pw) output (a detector's 2000
            # rois x 256 channels are 100 MB each); autograd records the in-place copies
            out.index_copy_(0, k, _align_group(feat_flat, (H, W), bidx[k], cx[k], cy[k], rw[k], rh[k], theta[k],
                                               (ph, pw), (gh, gw)))
    return out


class RoIAlignRotated(nn.Module):
    """Module form of :func:`roi_align_rotated`; also accepts mmcv's ``out_size`` / ``sample_num``."""

    def __init__(
        self,
        output_size=None,
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        aligned: bool = True,
        clockwise: bool = False,
        *,
        out_size=None,
        sample_num: int | None = None,
    ):
        super().__init__()
        output_size = output_size if output_size is not None else out_size
        if output_size is None:
            raise ValueError("RoIAlignRotated needs output_size")
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sample_num if sample_num is not None else sampling_ratio)
        self.aligned = aligned
        self.clockwise = clockwise

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_align_rotated(
            features, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.clockwise
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, clockwise={self.clockwise}"
        )
