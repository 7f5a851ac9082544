"""``optimize_for_training``: the same trainable modules with faster CPU forward and backward."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvision.models.backbones.haksnet import PartialConvMlp
from rsvision.models.backbones.lsknet import LSKAttention, Mlp
from rsvision.models.fast.inference import _backbones
from rsvision.models.fast.ops import _CL, DepthwiseConv2d, InplaceBackwardGELU, PhaseDilatedConv2d, PointwiseConv2d, _tracing

__all__ = ["optimize_for_training", "TiledMlp", "TiledPartialConvMlp", "SplitPartialConvMlp"]

# FFN tiles of the recompute path (``recompute_ffn=True``)
_TRAIN_TILE_BYTES = 2 << 20
_TRAIN_TILE_CHANNELS = 128


def _ffn_tile(x, w1, b1, wd, bd, w2, wg=None, bg=None):
    """``last(dw(first(x)) [* gate(x)])`` on one tile (no ``last`` bias), differentiable.

    x is channels-last; the 1x1 convs are ``linear`` on the (B, H, W, C) view (GEMMs)."""
    xh = x.permute(0, 2, 3, 1)
    h = F.linear(xh, w1.flatten(1), b1).permute(0, 3, 1, 2)
    d = F.conv2d(h, wd, bd, padding=wd.shape[-1] // 2, groups=wd.shape[0])
    if wg is None:
        d = F.gelu(d)
    else:
        d = d * F.linear(xh, wg.flatten(1), bg).permute(0, 3, 1, 2)
    return F.linear(d.permute(0, 2, 3, 1), w2.flatten(1))  # (B, H, W, C)


def _train_tiles(x, hidden):
    B, _, H, W = x.shape
    n = min(hidden, _TRAIN_TILE_CHANNELS)
    bs = max(1, _TRAIN_TILE_BYTES // (H * W * n * 4))
    for s in range(0, hidden, n):
        for b0 in range(0, B, bs):
            yield s, min(s + n, hidden), b0, min(b0 + bs, B)


class _TiledFFN(torch.autograd.Function):
    """The FFN on (batch slice x hidden-channel group) tiles, saving only its input.

    The big hidden activations (8x the block width) are never stored: forward keeps each tile
    in cache, backward recomputes a tile and backpropagates through it. Exact up to summation
    order (``dw`` is depthwise, so channel groups are independent; ``last`` sums over them).
    ``w1`` holds ``2 * hidden`` rows when ``gated`` (rows ``hidden:`` are the gate).
    """

    @staticmethod
    def forward(ctx, x, w1, b1, wd, bd, w2, b2, gated: bool):
        ctx.save_for_backward(x, w1, b1, wd, bd, w2)
        ctx.gated = gated
        hidden = wd.shape[0]
        B, C, H, W = x.shape
        y = b2.reshape(1, 1, 1, C).expand(B, H, W, C).clone()
        for s, e, b0, b1_ in _train_tiles(x, hidden):
            g = (w1[hidden + s : hidden + e], b1[hidden + s : hidden + e]) if gated else (None, None)
            y[b0:b1_] += _ffn_tile(x[b0:b1_], w1[s:e], b1[s:e], wd[s:e], bd[s:e], w2[:, s:e], *g)
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, gy):
        x, w1, b1, wd, bd, w2 = ctx.saved_tensors
        hidden = wd.shape[0]
        gyh = gy.permute(0, 2, 3, 1)
        gx, gw1, gb1 = torch.zeros_like(x), torch.zeros_like(w1), torch.zeros_like(b1)
        gwd, gbd, gw2 = torch.zeros_like(wd), torch.zeros_like(bd), torch.zeros_like(w2)
        for s, e, b0, b1_ in _train_tiles(x, hidden):
            ps = [w1[s:e], b1[s:e], wd[s:e], bd[s:e], w2[:, s:e]]
            if ctx.gated:
                ps += [w1[hidden + s : hidden + e], b1[hidden + s : hidden + e]]
            with torch.enable_grad():
                xt = x[b0:b1_].detach().requires_grad_()
                ps = [p.detach().requires_grad_() for p in ps]
                out = _ffn_tile(xt, *ps)
                grads = torch.autograd.grad(out, [xt, *ps], gyh[b0:b1_])
            gx[b0:b1_] += grads[0]
            gw1[s:e] += grads[1]
            gb1[s:e] += grads[2]
            gwd[s:e] += grads[3]
            gbd[s:e] += grads[4]
            gw2[:, s:e] += grads[5]
            if ctx.gated:
                gw1[hidden + s : hidden + e] += grads[6]
                gb1[hidden + s : hidden + e] += grads[7]
        return gx, gw1, gb1, gwd, gbd, gw2, gy.sum((0, 2, 3)), None


def _tiled_ok(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.is_contiguous(memory_format=_CL) and not _tracing()


class TiledMlp(Mlp):
    """LSKNet ``Mlp`` (same parameters and keys) through ``_TiledFFN`` on CPU (no dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _tiled_ok(x) or (self.training and self.drop.p > 0):
            return super().forward(x)
        dw = self.dwconv.dwconv
        return _TiledFFN.apply(x, self.fc1.weight, self.fc1.bias, dw.weight, dw.bias, self.fc2.weight, self.fc2.bias, False)


class TiledPartialConvMlp(PartialConvMlp):
    """HAKSNet ``PartialConvMlp`` (same parameters and keys) with its gated FFN tiled on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _tiled_ok(x):
            return super().forward(x)
        x1, x2 = torch.split(x, [self.dim_conv, x.shape[1] - self.dim_conv], dim=1)
        z = torch.cat([self.partial_conv3(x1), x2], dim=1).contiguous(memory_format=_CL)
        l1, l2, dw = self.linear1, self.linear2, self.dwconv
        return _TiledFFN.apply(z, l1.weight, l1.bias, dw.weight, dw.bias, l2.weight, l2.bias, True)


class SplitPartialConvMlp(PartialConvMlp):
    """HAKSNet ``PartialConvMlp`` (same parameters and keys) with ``linear1`` as two GEMMs on CPU.

    ``linear1(x).chunk(2)`` gives two channel slices with the full stride: every consumer
    (depthwise conv, product, their backward) copies them. Two GEMMs on the halves of the weight
    give contiguous channels-last halves (autograd assembles the weight gradient).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _tiled_ok(x):
            return super().forward(x)
        x1, x2 = torch.split(x, [self.dim_conv, x.shape[1] - self.dim_conv], dim=1)
        zh = torch.cat([self.partial_conv3(x1), x2], dim=1).contiguous(memory_format=_CL).permute(0, 2, 3, 1)
        w, b, n = self.linear1.weight.flatten(1), self.linear1.bias, self.dwconv.weight.shape[0]
        h1 = F.linear(zh, w[:n], b[:n]).permute(0, 3, 1, 2)
        h2 = F.linear(zh, w[n:], b[n:]).permute(0, 3, 1, 2)
        return self.linear2(self.dwconv(h1) * h2)


def optimize_for_training(model: nn.Module, inplace: bool = False, recompute_ffn: bool = False) -> nn.Module:
    """The same trainable model (same parameters and state-dict keys), faster on CPU.

    BatchNorm keeps batch statistics and running-stat updates; nothing is folded. Changes:
    channels-last memory format, LSKNet's dilated depthwise conv runs as a
    ``PhaseDilatedConv2d``, the blocks' 1x1 convs as ``PointwiseConv2d`` (GEMMs) and their
    depthwise convs as ``DepthwiseConv2d`` (cheaper backward), their GELUs as
    ``InplaceBackwardGELU`` (backward into the input's buffer) and HAKSNet's ``linear1`` as two
    GEMMs (``SplitPartialConvMlp``: contiguous halves instead of strided ``chunk`` slices).
    ``recompute_ffn`` also runs the FFNs as ``TiledMlp`` / ``TiledPartialConvMlp``: cache-sized
    tiles whose 8x-wide hidden activations are recomputed in backward instead of stored. That
    saves most of the activation memory but measured ~15% slower per step on a 2-core CPU. Feed channels-last inputs (``x.contiguous(memory_format=
    torch.channels_last)``) to avoid a conversion. With ``inplace`` the given model is changed
    (parameters stay the same objects, so an existing optimizer keeps working).
    """
    new = model if inplace else copy.deepcopy(model)
    for bb in _backbones(new):
        for m in bb.modules():
            if isinstance(m, LSKAttention):
                sgu = m.spatial_gating_unit
                if not isinstance(sgu.conv_spatial, PhaseDilatedConv2d):
                    sgu.conv_spatial = PhaseDilatedConv2d.from_conv(sgu.conv_spatial)
        for blocks in (getattr(bb, f"block{i + 1}") for i in range(bb.num_stages)):
            for m in blocks.modules():
                if (
                    type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1
                    and m.stride == (1, 1) and m.padding == (0, 0)
                ):
                    m.__class__ = PointwiseConv2d  # same object and Parameters, new forward
                elif (
                    type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.stride == (1, 1)
                    and m.padding[0] == m.padding[1] and m.dilation[0] == m.dilation[1] and m.padding_mode == "zeros"
                ):
                    m.__class__ = DepthwiseConv2d
                elif type(m) is nn.GELU:
                    m.__class__ = InplaceBackwardGELU
            for m in blocks.modules():
                if recompute_ffn and type(m) is Mlp:
                    m.__class__ = TiledMlp
                elif type(m) is PartialConvMlp:
                    m.__class__ = TiledPartialConvMlp if recompute_ffn else SplitPartialConvMlp
    return new.to(memory_format=_CL)
