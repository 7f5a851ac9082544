"""``optimize_for_training``: the same trainable modules with faster CPU forward and backward."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvision.models.backbones.haksnet import PartialConvMlp
from rsvision.models.backbones.lsknet import LSKAttention, Mlp
from rsvision.models.fast.inference import _backbones
from rsvision.models.fast.ops import (
    _CL, DepthwiseConv2d, InplaceBackwardGELU, PhaseDilatedConv2d, PointwiseConv2d, _tracing, depthwise_conv_into,
    depthwise_weight_grad, linear_nt,
)
from rsvision.models.fast.pool import POOL

__all__ = ["optimize_for_training", "TiledMlp", "TiledPartialConvMlp", "PooledMlp", "PooledPartialConvMlp"]

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
    """CPU, channels-last, fp32 / fp64 and no autocast (the custom FFN functions pick their own dtypes)."""
    return (
        x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.is_contiguous(memory_format=_CL)
        and not torch.is_autocast_enabled("cpu") and not _tracing()
    )


class TiledMlp(Mlp):
    """LSKNet ``Mlp`` (same parameters and keys) through ``_TiledFFN`` on CPU (no dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _tiled_ok(x) or (self.training and self.drop.p > 0):
            return super().forward(x)
        dw = self.dwconv.dwconv
        return _TiledFFN.apply(x, self.fc1.weight, self.fc1.bias, dw.weight, dw.bias, self.fc2.weight, self.fc2.bias, False)


def _partial_conv(m: PartialConvMlp, x: torch.Tensor) -> torch.Tensor:
    """HAKSNet's partial 3x3 conv on the first C/4 channels, the rest passed through (channels-last)."""
    x1, x2 = torch.split(x, [m.dim_conv, x.shape[1] - m.dim_conv], dim=1)
    return torch.cat([m.partial_conv3(x1), x2], dim=1).contiguous(memory_format=_CL)


class TiledPartialConvMlp(PartialConvMlp):
    """HAKSNet ``PartialConvMlp`` (same parameters and keys) with its gated FFN tiled on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _tiled_ok(x):
            return super().forward(x)
        z = _partial_conv(self, x)
        l1, l2, dw = self.linear1, self.linear2, self.dwconv
        return _TiledFFN.apply(z, l1.weight, l1.bias, dw.weight, dw.bias, l2.weight, l2.bias, True)


def _cl(t2d: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
    """(B*H*W, C) rows -> the channels-last (B, C, H, W) view of the same memory."""
    return t2d.view(B, H, W, -1).permute(0, 3, 1, 2)


class _PooledFFN(torch.autograd.Function):
    """The FFN ``fc2(gelu(dw(fc1(x))))`` (``gated``: HAKSNet's ``linear2(dw(h1) * h2)``) on pooled buffers.

    Its hidden maps are 4-8x the block width ((8, 256, 64, 64) = 32 MiB at 8x256^2), each a fresh
    mmap page-faulted in on every step (see ``pool``). Here forward writes them into buffers from
    ``pool.POOL`` (GEMMs and depthwise conv with ``out=``); backward overwrites each buffer with a
    gradient once its value is dead (dL/da into a, dL/dd into d, dL/dh into h after the depthwise
    weight gradient: the input gradient of a stride-1 depthwise conv is the conv with the flipped
    kernel) and gives the buffers back. They return to the pool only after backward, so several
    forwards before one backward (a siamese encoder) are safe; a second backward through the same
    graph raises. x: channels-last (B, C, H, W); w1: (k * hidden, C) with k = 2 if gated else 1;
    wd: (hidden, 1, kd, kd), kd odd; w2: (C, hidden).
    """

    @staticmethod
    def forward(ctx, x, w1, b1, wd, bd, w2, b2, gated: bool):
        B, C, H, W = x.shape
        N, hid = B * H * W, wd.shape[0]
        xh = x.permute(0, 2, 3, 1).reshape(N, C)
        bases = [POOL.take(N * hid, x) for _ in range(4 if gated else 3)]
        bufs = [b[: N * hid].view(N, hid) for b in bases]
        if gated:
            h, h2, d, a = bufs
            torch.addmm(b1[hid:], xh, w1[hid:].t(), out=h2)
        else:
            h, d, a = bufs
        torch.addmm(b1[:hid], xh, w1[:hid].t(), out=h)
        depthwise_conv_into(_cl(d, B, H, W), _cl(h, B, H, W), wd, bd, wd.shape[-1] // 2)
        if gated:
            torch.mul(d, h2, out=a)
        else:
            torch.ops.aten.gelu.out(d, out=a)
        y = linear_nt(a, w2, b2)
        ctx.save_for_backward(x, w1, wd, w2)
        ctx.bases, ctx.bufs, ctx.gated = bases, bufs, gated
        return _cl(y, B, H, W)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        if ctx.bufs is None:
            raise RuntimeError(
                "optimize_for_training's FFN reuses its buffers after the first backward: a second backward "
                "through the same graph (retain_graph=True) is not supported; use the plain model for that"
            )
        x, w1, wd, w2 = ctx.saved_tensors
        B, C, H, W = x.shape
        N, hid, k = B * H * W, wd.shape[0], wd.shape[-1]
        xh = x.permute(0, 2, 3, 1).reshape(N, C)
        gyh = gy.permute(0, 2, 3, 1).reshape(N, C)
        if ctx.gated:
            h, h2, d, a = ctx.bufs
        else:
            h, d, a = ctx.bufs
        gw2, gb2 = (a.t() @ gyh).t(), gyh.sum(0)  # this operand order: the faster GEMM here
        torch.mm(gyh, w2, out=a)  # a := dL/da
        if ctx.gated:
            torch.mul(a, d, out=d)  # d := dL/dh2
            torch.mul(a, h2, out=a)  # a := dL/dd
            gd, gh2 = a, d
        else:
            torch.ops.aten.gelu_backward.grad_input(a, d, grad_input=d)  # d := dL/dd
            gd = d
        gwd = depthwise_weight_grad(_cl(gd, B, H, W), _cl(h, B, H, W), k, k // 2)
        gbd = gd.sum(0)
        depthwise_conv_into(_cl(h, B, H, W), _cl(gd, B, H, W), wd.flip(-1, -2), None, k // 2)  # h := dL/dh
        gx = linear_nt(h, w1[:hid].t().contiguous())
        gw1, gb1 = h.t() @ xh, h.sum(0)
        if ctx.gated:
            gx += linear_nt(gh2, w1[hid:].t().contiguous())
            gw1, gb1 = torch.cat([gw1, gh2.t() @ xh]), torch.cat([gb1, gh2.sum(0)])
        POOL.give(*ctx.bases)
        ctx.bases = ctx.bufs = None
        return _cl(gx, B, H, W), gw1, gb1, gwd, gbd, gw2, gb2, None


def _pooled_ok(x: torch.Tensor, m: nn.Module) -> bool:
    """CPU channels-last input and a graph to build (else the plain forward: nothing to pool)."""
    return (
        _tiled_ok(x) and torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in m.parameters()))
    )


class PooledMlp(Mlp):
    """LSKNet ``Mlp`` (same parameters and keys) through ``_PooledFFN`` in CPU training (no dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _pooled_ok(x, self) or (self.training and self.drop.p > 0):
            return super().forward(x)
        dw = self.dwconv.dwconv
        return _PooledFFN.apply(
            x, self.fc1.weight.flatten(1), self.fc1.bias, dw.weight, dw.bias,
            self.fc2.weight.flatten(1), self.fc2.bias, False,
        )


class PooledPartialConvMlp(PartialConvMlp):
    """HAKSNet ``PartialConvMlp`` (same parameters and keys) with its gated FFN through ``_PooledFFN``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _pooled_ok(x, self):
            return super().forward(x)
        z = _partial_conv(self, x)
        l1, l2, dw = self.linear1, self.linear2, self.dwconv
        w1, w2 = l1.weight.flatten(1), l2.weight.flatten(1)
        return _PooledFFN.apply(z, w1, l1.bias, dw.weight, dw.bias, w2, l2.bias, True)


def optimize_for_training(model: nn.Module, inplace: bool = False, recompute_ffn: bool = False) -> nn.Module:
    """The same trainable model (same parameters and state-dict keys), faster on CPU.

    BatchNorm keeps batch statistics and running-stat updates; nothing is folded. Changes:
    channels-last memory format, LSKNet's dilated depthwise conv runs as a
    ``PhaseDilatedConv2d``, the blocks' 1x1 convs as ``PointwiseConv2d`` (GEMMs) and their
    depthwise convs as ``DepthwiseConv2d`` (cheaper backward), their GELUs as
    ``InplaceBackwardGELU`` (backward into the input's buffer), and the FFNs as ``PooledMlp`` /
    ``PooledPartialConvMlp``: hidden maps in buffers reused from step to step (``pool``; free
    them with ``release_training_buffers()``), gradients written over dead activations. A graph
    through them supports one backward (no ``retain_graph`` second pass, no double backward).
    ``recompute_ffn`` runs the FFNs as ``TiledMlp`` / ``TiledPartialConvMlp`` instead: cache-sized
    tiles whose 8x-wide hidden activations are recomputed in backward instead of stored. That
    saves most of the activation memory but measured ~15% slower per step on a 2-core CPU.
    Feed channels-last inputs (``x.contiguous(memory_format=torch.channels_last)``) to avoid a
    conversion. With ``inplace`` the given model is changed
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
                if type(m) is Mlp:
                    m.__class__ = TiledMlp if recompute_ffn else PooledMlp
                elif type(m) is PartialConvMlp:
                    m.__class__ = TiledPartialConvMlp if recompute_ffn else PooledPartialConvMlp
    return new.to(memory_format=_CL)
