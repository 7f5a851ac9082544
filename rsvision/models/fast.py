"""Fast LSKNet / HAKSNet: the same function as the plain backbones, computed with fewer passes.

The plain modules (``rsvision.models.backbones``) stay the reference. This module rewrites a
*copy* of a model for speed; the tests prove equality on the golden weights.

Inference (``optimize_for_inference``), in eval semantics:

- Every BatchNorm becomes an affine map and is folded where that is exact: into the stem /
  downsampling convs (BN after the conv), into LSKNet's ``proj_1`` and ``fc1`` (1x1 convs, no
  padding between BN and conv). HAKSNet's pre-norms feed zero-padded depthwise convs (spatial
  branch, partial conv); a fold there would be wrong on the border pixels (the pad would hold
  BN(0) = shift instead of 0), so there BN is applied as one explicit ``x * scale + shift``.
- Layer scales are folded into the last conv of each branch (``proj_2``, ``fc2``, ``linear2``,
  the second cfam conv), and the attention's inner ``+ u`` (u = BN(x)) into the residual:
  ``x + ls * u = (1 + ls * scale) * x + ls * shift``.
- Channels-last activations; on CPU float32, oneDNN convolutions with fused epilogues (GELU,
  sigmoid, ``* other``, in-place ``+ residual``) through ``torch.ops.mkldnn._convolution_pointwise``.
- LSKNet's 7x7 dilation-3 depthwise conv takes a slow CPU kernel. A dilation-d conv only
  combines pixels in the same (row mod d, column mod d) phase, so it equals an *undilated* 7x7
  conv on each of the d*d phase sub-images (the pad of 9 becomes 3). We gather the 9 phases into
  a batch, run the fast undilated kernel, and scatter back (exact; any size, incl. H % 3 != 0).
- The FFN (1x1 -> depthwise 3x3 -> 1x1, 8x wide inside) runs in cache-sized tiles on large
  inputs: on this class of machine each fresh multi-MB tensor costs page faults (glibc hands
  big blocks back to the OS on free), which made the FFN's hidden tensors the largest cost.
- CUDA, ONNX export / tracing / torch.compile and non-float32 inputs take plain aten ops (same
  folded weights), so the module exports to ONNX with standard ``Conv`` nodes.

Training (``optimize_for_training``): BatchNorm must keep batch statistics, so nothing is
folded; the module keeps its parameters and state-dict keys and only gets channels-last
memory, the phase form of the dilated conv and 1x1 convs as GEMMs over channels-last pixels,
which autograd differentiates as usual.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvision.models.backbones._pyramid import Block, OverlapPatchEmbed, PyramidBackbone
from rsvision.models.backbones.haksnet import HAKSAttention, PartialConvMlp
from rsvision.models.backbones.lsknet import LSKAttention, Mlp

__all__ = [
    "optimize_for_inference",
    "optimize_for_training",
    "dilated_depthwise_conv",
    "depthwise_conv",
    "DepthwiseConv2d",
    "PhaseDilatedConv2d",
    "PointwiseConv2d",
    "TiledMlp",
    "TiledPartialConvMlp",
    "benchmark_table",
]

_CL = torch.channels_last


# --------------------------------------------------------------------------------------------
# Low-level ops
# --------------------------------------------------------------------------------------------
def _tracing() -> bool:
    """True while exporting / tracing / compiling: use only standard aten ops then."""
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def _probe_mkldnn() -> bool:
    try:
        x = torch.randn(1, 2, 3, 3).contiguous(memory_format=_CL)
        w = torch.randn(2, 1, 3, 3)
        y = torch.ops.mkldnn._convolution_pointwise(x, w, None, [1, 1], [1, 1], [1, 1], 2, "gelu", [], "none")
        return bool(torch.allclose(y, F.gelu(F.conv2d(x, w, None, 1, 1, 1, 2)), atol=1e-5))
    except Exception:  # op missing on this build
        return False


_MKLDNN: Optional[bool] = None


def _use_mkldnn(x: torch.Tensor) -> bool:
    """oneDNN fused convs: CPU float32 inference only (they have no autograd formula)."""
    global _MKLDNN
    if x.device.type != "cpu" or x.dtype != torch.float32 or _tracing():
        return False
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    if _MKLDNN is None:
        _MKLDNN = torch.backends.mkldnn.is_available() and _probe_mkldnn()
    return _MKLDNN


class _DepthwiseConv(torch.autograd.Function):
    """Stride-1 depthwise conv whose backward skips oneDNN's bias gradient.

    On CPU, ``convolution_backward`` with the bias gradient requested costs about as much as
    the weight gradient again (measured 1.3-2x the input+weight backward); the bias gradient is
    just ``grad.sum((0, 2, 3))``. Forward is ``F.conv2d`` unchanged.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, dilation: int):
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        p, d, has_bias = ctx.conf
        g = g.contiguous(memory_format=_CL) if x.is_contiguous(memory_format=_CL) else g.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, _ = torch.ops.aten.convolution_backward(
            g, x, w, None, [1, 1], [p, p], [d, d], False, [0, 0], x.shape[1], [need_x, need_w, False]
        )
        gb = g.sum((0, 2, 3)) if has_bias and need_b else None
        return gx, gw, gb, None, None


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int, dilation: int = 1):
    """Stride-1 depthwise ``F.conv2d`` (x: (B, C, H, W), weight: (C, 1, k, k)) with a cheaper CPU backward."""
    if x.device.type == "cpu" and not _tracing() and torch.is_grad_enabled():
        return _DepthwiseConv.apply(x, weight, bias, padding, dilation)
    return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])


def dilated_depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int
) -> torch.Tensor:
    """'Same'-padded depthwise conv with dilation ``d``, as an undilated conv on ``d*d`` phases.

    x: (B, C, H, W), weight: (C, 1, k, k) with k odd; padding ``d * (k // 2)``, stride 1.
    Output pixel (h, w) only reads pixels with the same (h mod d, w mod d), so each phase
    sub-image ``x[:, :, i::d, j::d]`` is convolved alone with the undilated kernel and pad k//2.
    When H or W is not a multiple of d the map is zero-padded up to one first: the extra rows
    stand for the original zero pad. Exact for every H, W. Returns channels-last (B, C, H, W).
    Gather and scatter are single contiguous copies (reshape of a permuted view), also in backward.
    """
    B, C, H, W = x.shape
    d, k = dilation, weight.shape[-1]
    Hd, Wd = -(-H // d), -(-W // d)
    xh = x.permute(0, 2, 3, 1)  # (B, H, W, C) view; contiguous when x is channels-last
    if (Hd * d, Wd * d) != (H, W):
        xh = F.pad(xh, (0, 0, 0, Wd * d - W, 0, Hd * d - H))
    ph = xh.reshape(B, Hd, d, Wd, d, C).permute(0, 2, 4, 1, 3, 5).reshape(B * d * d, Hd, Wd, C)
    y = depthwise_conv(ph.permute(0, 3, 1, 2), weight, bias, k // 2)
    yh = y.permute(0, 2, 3, 1).reshape(B, d, d, Hd, Wd, C).permute(0, 3, 1, 4, 2, 5).reshape(B, Hd * d, Wd * d, C)
    if (Hd * d, Wd * d) != (H, W):
        yh = yh[:, :H, :W].contiguous()
    return yh.permute(0, 3, 1, 2)


class PhaseDilatedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys) whose dilated depthwise CPU path uses phases."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not _tracing():
            return dilated_depthwise_conv(x, self.weight, self.bias, self.dilation[0])
        return super().forward(x)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "PhaseDilatedConv2d":
        k, d = conv.kernel_size[0], conv.dilation[0]
        ok = (
            conv.kernel_size[0] == conv.kernel_size[1] and k % 2 == 1 and conv.dilation == (d, d)
            and conv.padding == (d * (k // 2),) * 2 and conv.stride == (1, 1)
            and conv.groups == conv.in_channels == conv.out_channels and conv.padding_mode == "zeros"
        )
        if not ok:
            raise ValueError(f"not a 'same' depthwise dilated conv: {conv}")
        new = cls.__new__(cls)
        new.__dict__ = conv.__dict__.copy()  # shares the Parameters (same keys, same tensors)
        new._parameters = conv._parameters
        return new


def _conv(x, w, b, padding=0, stride=1, groups=1, dilation=1, act=None, other=None, op=None):
    """Conv with optional epilogue: ``act`` None | "gelu" | "sigmoid", then ``op`` with ``other``:
    "mul" -> ``conv(x) * other``, "add" -> ``conv(x) + other``, "add_" -> ``other += conv(x)``
    (in place, returns ``other``). oneDNN fuses them on CPU float32; elsewhere plain ops."""
    p, s, dl = [padding] * 2, [stride] * 2, [dilation] * 2
    if _use_mkldnn(x) and x.is_contiguous(memory_format=_CL):
        if op is None:
            alg = "none" if act == "gelu" else None
            return torch.ops.mkldnn._convolution_pointwise(x, w, b, p, s, dl, groups, act or "none", [], alg)
        assert act is None and other.is_contiguous(memory_format=_CL)
        if op == "add_":
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                other, x, w, b, p, s, dl, groups, "add", None, None, [], None
            )
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, w, b, p, s, dl, groups, op, None, None, [], None)
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    if act == "gelu":
        y = F.gelu(y)
    elif act == "sigmoid":
        y = y.sigmoid()
    if op == "add_":
        return other.add_(y) if not _tracing() else other + y
    if op == "add":
        return y + other
    if op == "mul":
        return y * other
    return y


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` 1x1 (same parameters and keys) run as a matmul over channels-last pixels.

    On CPU a small-batch 1x1 conv falls back to ``slow_conv2d`` (single thread, and always in
    backward); a ``linear`` on the (B, H, W, C) view uses GEMMs forward and backward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(memory_format=_CL) and not _tracing():
            return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


class DepthwiseConv2d(nn.Conv2d):
    """Stride-1 depthwise ``nn.Conv2d`` (same parameters and keys) with ``depthwise_conv``'s backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.padding_mode == "zeros" and not _tracing():
            return depthwise_conv(x, self.weight, self.bias, self.padding[0], self.dilation[0])
        return super().forward(x)


class _Conv(nn.Module):
    """A conv with constant (folded) weights and an optional fused epilogue (see ``_conv``)."""

    def __init__(self, weight, bias, padding=0, stride=1, groups=1, act=None, dilation=1):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone().float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone().float().contiguous())
        self.padding, self.stride, self.groups, self.act, self.dilation = padding, stride, groups, act, dilation

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, scale=None, shift=None, out_scale=None, out_shift=None, act=None):
        """Fold ``conv(x * scale + shift)`` (1x1 only) and ``out_scale * conv(.) + out_shift``."""
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        if scale is not None:
            assert conv.kernel_size == (1, 1) and conv.groups == 1, "input fold only exact for 1x1 convs"
            b = b + w[:, :, 0, 0] @ shift.double()
            w = w * scale.double()[None, :, None, None]
        if out_scale is not None:
            w = w * out_scale.double()[:, None, None, None]
            b = b * out_scale.double()
        if out_shift is not None:
            b = b + out_shift.double()
        return cls(w, b, conv.padding[0], conv.stride[0], conv.groups, act, conv.dilation[0])

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None, op: Optional[str] = None):
        return _conv(x, self.weight, self.bias, self.padding, self.stride, self.groups, self.dilation, self.act, other, op)


# On CPU, FFN hidden activations above this size are computed in tiles (channel groups x row
# strips of about _TILE_BYTES): fresh multi-MB tensors cost page faults (glibc returns big
# blocks to the OS on free), and a tile stays in cache between its 1x1, depthwise and 1x1 convs.
# 4 MiB = one 2 MiB L2 per thread on the 2-core reference machine (swept 0.5-16 MiB on an idle
# machine: 1 MiB 0.45 s, 2 MiB 0.39 s, 4 MiB 0.35 s, 8 MiB 0.41 s for LSKNet-T at 1024^2).
_CHUNK_BYTES = 16 << 20
_TILE_BYTES = 4 << 20
_TILE_CHANNELS = 64


def _ffn(x, res, first: _Conv, dw: _Conv, last: _Conv, gate: Optional[_Conv] = None):
    """``res + last(dw(first(x)) [* gate(x)])``; written into ``res`` when not tiled.

    Tiling is exact up to summation order: ``dw`` is depthwise, so channel groups are
    independent and ``last`` sums over them; a row strip recomputes ``first`` on a halo of
    ``k // 2`` rows so that the depthwise conv sees true neighbours (zero pad only at the
    image's own top and bottom).
    """
    hidden = dw.weight.shape[0]
    B, _, H, W = x.shape
    if not _use_mkldnn(x) or B * H * W * hidden * 4 <= _CHUNK_BYTES:
        h = first(x)
        d = dw(h, gate(x), "mul") if gate is not None else dw(h)
        return last(d, res, "add_")
    n = min(hidden, _TILE_CHANNELS)
    rows = max(8, _TILE_BYTES // (n * W * 4))
    pad = dw.padding
    out = res.clone()
    for s in range(0, hidden, n):
        e = min(s + n, hidden)
        w1, b1, wd, bd = first.weight[s:e], first.bias[s:e], dw.weight[s:e], dw.bias[s:e]
        w2, b2 = last.weight[:, s:e].contiguous(), (last.bias if s == 0 else None)
        for b in range(B):  # one sample: a row strip of a channels-last map is contiguous
            xb, ob = x[b : b + 1], out[b : b + 1]
            for r0 in range(0, H, rows):
                r1 = min(r0 + rows, H)
                lo, hi = max(r0 - pad, 0), min(r1 + pad, H)
                d = _conv(_conv(xb[:, :, lo:hi], w1, b1), wd, bd, pad, groups=e - s, act=dw.act)
                d = d[:, :, r0 - lo : r1 - lo]
                if gate is not None:
                    d = d.mul_(_conv(xb[:, :, r0:r1], gate.weight[s:e], gate.bias[s:e]))
                _conv(d, w2, b2, other=ob[:, :, r0:r1], op="add_")
    return out


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift`` (float64)."""
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.detach().double() - bn.running_mean.double() * scale
    return scale, shift


def _chan(v: torch.Tensor) -> torch.Tensor:
    return v.float().reshape(1, -1, 1, 1).contiguous()


# --------------------------------------------------------------------------------------------
# Fast (inference-only) modules
# --------------------------------------------------------------------------------------------
class _InferenceOnly(nn.Module):
    def _check(self):
        if self.training:
            raise RuntimeError(
                "optimize_for_inference modules compute the eval-mode function (BatchNorm folded); "
                "call .eval(), or use optimize_for_training for training"
            )


class FastPatchEmbed(_InferenceOnly):
    """Strided conv with the BatchNorm folded in; switches activations to channels-last."""

    def __init__(self, pe: OverlapPatchEmbed):
        super().__init__()
        scale, shift = _bn_affine(pe.norm)
        self.conv = _Conv.from_conv(pe.proj, out_scale=scale, out_shift=shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check()
        return self.conv(x.contiguous(memory_format=_CL))


class FastLSKBlock(_InferenceOnly):
    """LSKNet ``Block`` in eval semantics (see the module docstring for the folds)."""

    def __init__(self, blk: Block):
        super().__init__()
        at, lsk, mlp = blk.attn, blk.attn.spatial_gating_unit, blk.mlp
        s1, t1 = _bn_affine(blk.norm1)
        s2, t2 = _bn_affine(blk.norm2)
        ls1, ls2 = blk.layer_scale_1.detach().double(), blk.layer_scale_2.detach().double()
        self.proj_1 = _Conv.from_conv(at.proj_1, s1, t1, act="gelu")  # 1x1 after BN: exact
        self.conv0 = _Conv.from_conv(lsk.conv0)
        self.register_buffer("spatial_w", lsk.conv_spatial.weight.detach().clone())
        self.register_buffer("spatial_b", lsk.conv_spatial.bias.detach().clone())
        self.dilation = lsk.conv_spatial.dilation[0]
        self.conv1, self.conv2 = _Conv.from_conv(lsk.conv1), _Conv.from_conv(lsk.conv2)
        self.squeeze = _Conv.from_conv(lsk.conv_squeeze, act="sigmoid")
        self.conv = _Conv.from_conv(lsk.conv)
        # x + ls1 * (proj_2(z) + u), u = s1 x + t1  ==  r1 x + c1 + proj_2'(z)
        self.proj_2 = _Conv.from_conv(at.proj_2, out_scale=ls1)
        self.register_buffer("r1", _chan(1 + ls1 * s1))
        self.register_buffer("c1", _chan(ls1 * t1))
        self.fc1 = _Conv.from_conv(mlp.fc1, s2, t2)  # 1x1 after BN: exact
        self.dwconv = _Conv.from_conv(mlp.dwconv.dwconv, act="gelu")
        self.fc2 = _Conv.from_conv(mlp.fc2, out_scale=ls2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check()
        h = self.proj_1(x)
        a0 = self.conv0(h)
        if a0.device.type == "cpu" and not _tracing():
            b0 = dilated_depthwise_conv(a0, self.spatial_w, self.spatial_b, self.dilation)
        else:
            p = self.dilation * (self.spatial_w.shape[-1] // 2)
            b0 = F.conv2d(a0, self.spatial_w, self.spatial_b, padding=p, dilation=self.dilation, groups=a0.shape[1])
        a, b = self.conv1(a0), self.conv2(b0)
        # mean / max over the channels of cat([a, b]) without building the concatenation
        mean = (a.sum(1, keepdim=True) + b.sum(1, keepdim=True)) / (a.shape[1] + b.shape[1])
        mx = torch.maximum(a.amax(1, keepdim=True), b.amax(1, keepdim=True))
        s = self.squeeze(torch.cat([mean, mx], dim=1).contiguous(memory_format=_CL))
        m = a * s[:, 0:1]
        m = m.addcmul_(b, s[:, 1:2]) if not _tracing() else m + b * s[:, 1:2]
        z = self.conv(m, h, "mul")  # conv(m) * h
        acc = torch.addcmul(self.c1, x, self.r1)
        acc = self.proj_2(z, acc, "add_")
        return _ffn(acc, acc, self.fc1, self.dwconv, self.fc2)


class FastHAKSBlock(_InferenceOnly):
    """HAKSNet ``Block`` in eval semantics. BN stays explicit before zero-padded convs."""

    def __init__(self, blk: Block):
        super().__init__()
        sm, cm, mlp = blk.attn.spatial_mix, blk.attn.channe_mix, blk.mlp
        s1, t1 = _bn_affine(blk.norm1)
        s2, t2 = _bn_affine(blk.norm2)
        ls1, ls2 = blk.layer_scale_1.detach().double(), blk.layer_scale_2.detach().double()
        self.register_buffer("s1", _chan(s1))
        self.register_buffer("t1", _chan(t1))
        self.register_buffer("s2", _chan(s2))
        self.register_buffer("t2", _chan(t2))
        self.register_buffer("ls1", _chan(ls1))
        self.dws = nn.ModuleList(_Conv.from_conv(c) for c in (sm.dw_conv3, sm.dw_conv5, sm.dw_conv7, sm.dw_conv9))
        self.fusion = _Conv.from_conv(sm.spatial_fusion, act="sigmoid")
        self.kernel_attn = copy.deepcopy(sm.kernel_attn)
        self.channel_fc = copy.deepcopy(cm.channel_attention.fc)
        self.cfam1 = _Conv.from_conv(cm.cfam[0], act="gelu")
        self.cfam2 = _Conv.from_conv(cm.cfam[2], out_scale=ls1)  # depthwise: per-channel scale is exact
        # x + ls1 * u = r1 x + c1
        self.register_buffer("r1", _chan(1 + ls1 * s1))
        self.register_buffer("c1", _chan(ls1 * t1))
        self.dim_conv = mlp.dim_conv
        self.partial = _Conv.from_conv(mlp.partial_conv3)
        hidden = mlp.dwconv.in_channels
        w1, b1 = mlp.linear1.weight.detach(), mlp.linear1.bias.detach()
        self.lin1a = _Conv(w1[:hidden], b1[:hidden])  # h1 and h2 as two contiguous outputs
        self.lin1b = _Conv(w1[hidden:], b1[hidden:])
        self.dwconv = _Conv.from_conv(mlp.dwconv)
        self.linear2 = _Conv.from_conv(mlp.linear2, out_scale=ls2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check()
        tr = _tracing()
        u = torch.addcmul(self.t1, x, self.s1)  # BN1, explicit: dw convs below zero-pad u
        us, v = [], u
        for conv in self.dws:
            v = conv(v)
            us.append(v)
        a_s = self.fusion(torch.cat([t.mean(1, keepdim=True) for t in us], 1).contiguous(memory_format=_CL))
        a_k = self.kernel_attn(torch.cat([t.mean((2, 3), keepdim=True) for t in us], 1)).softmax(1)
        w = a_s * a_k
        mix = us[0] * w[:, 0:1]
        for i in (1, 2, 3):
            mix = mix + us[i] * w[:, i : i + 1] if tr else mix.addcmul_(us[i], w[:, i : i + 1])
        g = self.channel_fc(u.mean((2, 3), keepdim=True)).sigmoid()
        c = self.cfam1(u * g * u)  # channel attention, times u again (as trained)
        acc = torch.addcmul(self.c1, x, self.r1)
        acc = acc + mix * u * self.ls1 if tr else acc.addcmul_(mix.mul_(u), self.ls1)
        acc = self.cfam2(c, acc, "add_")
        # MLP: BN2 explicit (the partial 3x3 conv zero-pads), partial conv on the first C/4
        z = torch.addcmul(self.t2, acc, self.s2)
        if tr:
            z = torch.cat([self.partial(z[:, : self.dim_conv]), z[:, self.dim_conv :]], 1)
        else:
            z[:, : self.dim_conv] = self.partial(z[:, : self.dim_conv].contiguous(memory_format=_CL))
        return _ffn(z, acc, self.lin1a, self.dwconv, self.linear2, gate=self.lin1b)


def _backbones(model: nn.Module) -> list[PyramidBackbone]:
    found = [m for m in model.modules() if isinstance(m, PyramidBackbone)]
    if not found:
        raise TypeError(f"no LSKNet / HAKSNet backbone found in {type(model).__name__}")
    return found


def optimize_for_inference(model: nn.Module, compile: bool = False) -> nn.Module:
    """A new, faster eval-mode module computing the same function as ``model.eval()``.

    Works on ``LSKNet`` / ``HAKSNet`` backbones and on modules containing them (timm's
    ``features_only`` FeatureGetterNet, classifiers, detectors). ``model`` is not modified.
    The result is inference-only (BatchNorm is folded; parameters become buffers without grad).
    Stage outputs come out in channels-last memory (same values and shapes).
    ``compile=True`` additionally wraps the result in ``torch.compile`` (optional: slow to
    start; the eager module is already fast).
    """
    new = copy.deepcopy(model).eval()
    for bb in _backbones(new):
        for i in range(bb.num_stages):
            setattr(bb, f"patch_embed{i + 1}", FastPatchEmbed(getattr(bb, f"patch_embed{i + 1}")))
            blocks = getattr(bb, f"block{i + 1}")
            for j, blk in enumerate(blocks):
                if isinstance(blk.attn, LSKAttention) and isinstance(blk.mlp, Mlp):
                    blocks[j] = FastLSKBlock(blk)
                elif isinstance(blk.attn, HAKSAttention) and isinstance(blk.mlp, PartialConvMlp):
                    blocks[j] = FastHAKSBlock(blk)
                else:
                    raise TypeError(f"unsupported block {type(blk.attn).__name__} / {type(blk.mlp).__name__}")
    for p in new.parameters():
        p.requires_grad_(False)
    new.eval()
    return torch.compile(new) if compile else new


# --------------------------------------------------------------------------------------------
# Training: the FFN in tiles with recomputation
# --------------------------------------------------------------------------------------------
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


def optimize_for_training(model: nn.Module, inplace: bool = False, recompute_ffn: bool = False) -> nn.Module:
    """The same trainable model (same parameters and state-dict keys), faster on CPU.

    BatchNorm keeps batch statistics and running-stat updates; nothing is folded. Changes:
    channels-last memory format, LSKNet's dilated depthwise conv runs as a
    ``PhaseDilatedConv2d``, the blocks' 1x1 convs as ``PointwiseConv2d`` (GEMMs) and their
    depthwise convs as ``DepthwiseConv2d`` (cheaper backward).
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
            for m in blocks.modules() if recompute_ffn else ():
                if type(m) is Mlp:
                    m.__class__ = TiledMlp
                elif type(m) is PartialConvMlp:
                    m.__class__ = TiledPartialConvMlp
    return new.to(memory_format=_CL)


# --------------------------------------------------------------------------------------------
# Benchmark table (``rsvision models --bench``)
# --------------------------------------------------------------------------------------------
def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def benchmark_table(
    names: Sequence[str], size: int = 1024, device: str = "cpu", in_chans: int = 3, repeats: int = 3, batch: int = 1
):
    """rich Table of forward images/s, plain vs ``optimize_for_inference``, eval, random weights.

    Plain and fast runs alternate (median of ``repeats``) so that a shared machine's load hits
    both alike.
    """
    import timm
    from rich.table import Table

    dev = torch.device(device)
    table = Table(title=f"forward images/s at {batch}x{in_chans}x{size}x{size} on {dev} (median of {repeats})")
    for col in ("model", "plain img/s", "fast img/s", "speed-up", "max |diff|"):
        table.add_column(col, justify="left" if col == "model" else "right")
    x = torch.randn(batch, in_chans, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for name in names:
        plain = timm.create_model(name, num_classes=0, in_chans=in_chans).to(dev).eval()
        fast = optimize_for_inference(plain)
        with torch.inference_mode():
            yp, yf = plain.forward_features(x), fast.forward_features(x)  # warm-up + check
            diff = (yp - yf).abs().max().item()
            tp, tf = [], []
            for _ in range(repeats):
                tp += _time(lambda: (plain.forward_features(x), sync()), 1)
                tf += _time(lambda: (fast.forward_features(x), sync()), 1)
        mp, mf = statistics.median(tp), statistics.median(tf)
        table.add_row(name, f"{batch / mp:.2f}", f"{batch / mf:.2f}", f"{mp / mf:.2f}x", f"{diff:.1e}")
    return table
