"""Low-level fast ops: phase-form dilated depthwise conv, oneDNN fused convs, GEMM 1x1 convs.

Shapes are (B, C, H, W); the fast paths expect channels-last memory. Each op falls back to plain
aten ops on CUDA, non-float32 inputs and while exporting / tracing / compiling.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "depthwise_conv", "depthwise_conv_into", "depthwise_weight_grad", "dilated_depthwise_conv", "linear_nt",
    "PhaseDilatedConv2d", "PointwiseConv2d", "DepthwiseConv2d", "InplaceBackwardGELU",
]

_CL = torch.channels_last


def _tracing() -> bool:
    """True while exporting / tracing / compiling: use only standard aten ops then."""
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def _probe_mkldnn() -> bool:
    try:
        x = torch.randn(1, 2, 3, 3).contiguous(memory_format=_CL)
        w = torch.randn(2, 1, 3, 3)
        y = torch.ops.mkldnn._convolution_pointwise(x, w, None, [1, 1], [1, 1], [1, 1], 2, "gelu", [], "none")
        a, m = torch.randn(5, 4), torch.randn(3, 4)
        z = torch.ops.mkldnn._linear_pointwise(a, m, None, "none", [], "")
        conv_ok = torch.allclose(y, F.gelu(F.conv2d(x, w, None, 1, 1, 1, 2)), atol=1e-5)
        return bool(conv_ok and torch.allclose(z, a @ m.t(), atol=1e-5))
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


def linear_nt(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ w.T (+ b)``, x: (N, K), w: (M, K) -> (N, M); no autograd (for custom backwards).

    On CPU float32 this is oneDNN's matmul, measured 10-25% faster than ``F.linear`` (MKL) for
    the FFN's hidden -> width projections (e.g. (32768, 256) x (256, 32): 4.1 vs 5.5 ms, 2 threads).
    """
    if _use_mkldnn(x):
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def depthwise_weight_grad(g: torch.Tensor, x: torch.Tensor, k: int, padding: int) -> torch.Tensor:
    """dL/dweight (C, 1, k, k) of a stride-1, undilated depthwise conv with ``padding``.

    g: (B, C, Ho, Wo) output gradient, x: (B, C, H, W) input. oneDNN's depthwise weight-gradient
    kernel is fast for 3x3 and several times slower per FLOP for 5x5 / 7x7 (CPU, channels-last,
    measured: (8, 64, 32, 32) 5x5 2.02 ms vs 0.94 ms; (72, 32, 22, 22) 7x7 6.93 vs 3.98 ms). So a
    k x k kernel is computed as ceil(k/3)^2 3x3 blocks: block (a, b) holds the taps
    (3a + i, 3b + j), i.e. the 3x3 weight gradient of the zero-padded input shifted by (3a, 3b).
    Taps past k (the last block's overhang) read extra zero padding and are dropped.
    """
    C = x.shape[1]

    def wgrad(xs, kk, pad):  # oneDNN's weight gradient of a kk x kk depthwise conv
        w = x.new_empty(C, 1, kk, kk)  # only its shape is used
        return torch.ops.aten.convolution_backward(
            g, xs, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], C, [False, True, False]
        )[1]

    if k <= 3:
        return wgrad(x, k, padding)
    nb = -(-k // 3)
    extra = 3 * nb - k
    Ho, Wo = g.shape[-2:]
    xp = F.pad(x, (padding, padding + extra, padding, padding + extra))
    gw = x.new_empty(C, 1, 3 * nb, 3 * nb)
    for a in range(nb):
        for b in range(nb):
            xs = xp[:, :, 3 * a : 3 * a + Ho + 2, 3 * b : 3 * b + Wo + 2]
            gw[:, :, 3 * a : 3 * a + 3, 3 * b : 3 * b + 3] = wgrad(xs, 3, 0)
    return gw[:, :, :k, :k].contiguous()


class _DepthwiseConv(torch.autograd.Function):
    """Stride-1 depthwise conv with a cheaper CPU backward than ``convolution_backward``'s.

    On CPU, ``convolution_backward`` with the bias gradient requested costs about as much as
    the weight gradient again (measured 1.3-2x the input+weight backward); the bias gradient is
    just ``grad.sum((0, 2, 3))``. Undilated kernels above 3x3 get their weight gradient from
    ``depthwise_weight_grad``. Forward is ``F.conv2d`` unchanged.
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
        k = w.shape[-1]
        split = need_w and d == 1 and k > 3 and w.shape[-2] == k
        gx, gw, _ = torch.ops.aten.convolution_backward(
            g, x, w, None, [1, 1], [p, p], [d, d], False, [0, 0], x.shape[1], [need_x, need_w and not split, False]
        )
        if split:
            gw = depthwise_weight_grad(g, x, k, p)
        gb = g.sum((0, 2, 3)) if has_bias and need_b else None
        return gx, gw, gb, None, None


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int, dilation: int = 1):
    """Stride-1 depthwise ``F.conv2d`` (x: (B, C, H, W), weight: (C, 1, k, k)) with a cheaper CPU backward."""
    if x.device.type == "cpu" and not _tracing() and torch.is_grad_enabled():
        return _DepthwiseConv.apply(x, weight, bias, padding, dilation)
    return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])


def depthwise_conv_into(
    out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int
) -> torch.Tensor:
    """``out[:] = F.conv2d(x, weight, bias, 1, padding, 1, C)`` without a fresh output tensor.

    out, x: channels-last (B, C, H, W) with the same shape, not overlapping; weight (C, 1, k, k).
    On CPU float32 oneDNN accumulates into the zeroed ``out`` (a fresh big output would be
    page-faulted in: see ``pool``); elsewhere a plain conv is copied in. Returns ``out``.
    """
    C = x.shape[1]
    if _use_mkldnn(x) and x.is_contiguous(memory_format=_CL) and out.is_contiguous(memory_format=_CL):
        out.zero_()
        p = [padding] * 2
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            out, x, weight, bias, p, [1, 1], [1, 1], C, "add", None, None, [], None
        )
    return out.copy_(F.conv2d(x, weight, bias, 1, padding, 1, C))


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


class _GELUInplaceBackward(torch.autograd.Function):
    """Exact (erf) GELU whose backward writes the input gradient into the saved input's memory.

    The pre-activation is needed only by GELU's backward, so its buffer can take the gradient:
    one fresh activation-sized tensor less per GELU (at 8x256^2 the stage-1 FFN's are 33.5 MiB,
    page-faulted in on every step). Measured on the stage-1 FFN (depthwise conv + GELU, forward
    + backward, 2 threads): 71 -> 59 ms. If another op had saved the same tensor, autograd's
    version check raises instead of computing a wrong gradient.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.gelu(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward.grad_input(g, x, grad_input=x)


class InplaceBackwardGELU(nn.GELU):
    """``nn.GELU`` whose CPU training backward reuses the input's buffer (``_GELUInplaceBackward``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.approximate == "none" and torch.is_grad_enabled() and not _tracing():
            return _GELUInplaceBackward.apply(x)
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
