"""``optimize_for_inference``: BatchNorm / layer-scale folds, fused oneDNN epilogues, tiled FFNs."""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvision.models.backbones._pyramid import Block, OverlapPatchEmbed, PyramidBackbone
from rsvision.models.backbones.haksnet import HAKSAttention, PartialConvMlp
from rsvision.models.backbones.lsknet import LSKAttention, Mlp
from rsvision.models.fast.ops import _CL, _Conv, _conv, _tracing, _use_mkldnn, dilated_depthwise_conv
from rsvision.runtime import allocator_mode

__all__ = ["optimize_for_inference", "FastPatchEmbed", "FastLSKBlock", "FastHAKSBlock"]

# On CPU, under glibc's default allocator, FFN hidden activations above _CHUNK_BYTES are computed
# in tiles (channel groups x row strips of about _TILE_BYTES): fresh multi-MB tensors then cost
# page faults (glibc returns big blocks to the OS on free), and a tile stays in cache between its
# 1x1, depthwise and 1x1 convs. 4 MiB = one 2 MiB L2 per thread on the 2-core reference machine
# (swept 0.5-16 MiB on an idle machine: 1 MiB 0.45 s, 2 MiB 0.39 s, 4 MiB 0.35 s, 8 MiB 0.41 s for
# LSKNet-T at 1024^2). When freed memory is kept (every rsvision entry point, the CLI) there are
# no page faults to save and tiles only add parallel regions: each small oneDNN call waits at a
# barrier for every thread, and on a loaded machine a descheduled thread stalls all of them.
# Measured (1x3x1024^2, 2 threads, memory kept, median of 3 interleaved, machine loaded by other
# jobs): HAKSNet-S plain 1.10 s, tiled 1.07 s, untiled 0.89 s; LSKNet-T 0.51 / 0.32 / 0.34 s; an
# earlier loaded run had HAKSNet-S tiled at 12.1 s against 2.5 s untiled. So tile only under the
# system allocator, where it still pays when quiet (LSKNet-T 2.57 s tiled vs 3.62 s untiled).
_CHUNK_BYTES = 16 << 20
_TILE_BYTES = 4 << 20
_TILE_CHANNELS = 64


def _tiles_pay() -> bool:
    """FFN tiling only saves page faults: worth it only when freed memory goes back to the OS."""
    return allocator_mode() == "system"


def _ffn(x, res, first: _Conv, dw: _Conv, last: _Conv, gate: Optional[_Conv] = None):
    """``res + last(dw(first(x)) [* gate(x)])``; written into ``res`` when not tiled.

    Tiling is exact up to summation order: ``dw`` is depthwise, so channel groups are
    independent and ``last`` sums over them; a row strip recomputes ``first`` on a halo of
    ``k // 2`` rows so that the depthwise conv sees true neighbours (zero pad only at the
    image's own top and bottom).
    """
    hidden = dw.weight.shape[0]
    B, _, H, W = x.shape
    if not _use_mkldnn(x) or B * H * W * hidden * 4 <= _CHUNK_BYTES or not _tiles_pay():
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
