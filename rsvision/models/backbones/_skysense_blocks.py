"""The modules SkySense V2 (arXiv 2507.13812) is built of; the assembly is in ``skysense_v2.py``.

From the paper: Swin-V2 window attention (window 8, cosine attention, log-spaced continuous position
bias) in the first two stages and global self-attention in the last two; adaptive patch merging
(high-resolution optical tokens merged 2x2, multispectral / SAR tokens keep their grid and only get
the channel projection, its weights averaged over the 2x2 group); a top-1 mixture-of-experts FFN
(linear gate, softmax) with a load-balancing loss; MLP ratio 4, attention head width 32.

Choices of this implementation (the paper does not fix them, or no code exists to check):

* every block is Swin-V2's residual post-norm block, ``x + LN(attn(x))`` then ``x + LN(ffn(x))``,
  in all four stages (the global blocks use plain scaled dot-product attention, no position bias:
  position enters through the window stages' bias);
* window attention pads the grid to a window multiple *before* the cyclic shift and masks the pad
  tokens out as keys, so padding never changes a real token (timm pads after the shift and lets
  zero pads take part); the mask value is -1e4, not Swin's -100, because cosine logits reach +-100;
* an axis no longer than the window is not shifted (one window covers it);
* the balance loss is Switch Transformer's ``E * sum_e f_e * P_e`` (f: fraction of tokens routed to
  expert e, P: mean gate probability of e); it equals 1 for perfectly balanced routing.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.swin_transformer_v2 import WindowAttention

__all__ = ["window_attention_mask", "WindowMSA", "GlobalMSA", "MoEMlp", "Block", "AdaptivePatchMerging"]

MASK_VALUE = -1e4  # below any cosine-attention logit (|logit| <= 100 + 16); finite in fp16


def window_attention_mask(h: int, w: int, window: int, shift_h: int, shift_w: int,
                          device: Optional[torch.device] = None) -> torch.Tensor:
    """Additive mask (nW, ws*ws, ws*ws) for a grid padded to (ceil(h/ws)*ws, ceil(w/ws)*ws), rolled by -shift.

    Key j is allowed for query i when both lie in the same region of Swin's three slices per axis
    (tokens that wrapped round in the cyclic shift are kept apart from the rest) and j is a real token.
    """
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    region = torch.zeros(hp, wp, device=device)
    valid = torch.zeros(hp, wp, dtype=torch.bool, device=device)
    valid[:h, :w] = True
    valid = torch.roll(valid, (-shift_h, -shift_w), (0, 1))
    cnt = 0
    hs = ((0, hp - window), (hp - window, hp - shift_h), (hp - shift_h, hp)) if shift_h else ((0, hp),)
    ws = ((0, wp - window), (wp - window, wp - shift_w), (wp - shift_w, wp)) if shift_w else ((0, wp),)
    for a, b in hs:
        for c, d in ws:
            region[a:b, c:d] = cnt
            cnt += 1

    def part(t: torch.Tensor) -> torch.Tensor:  # (hp, wp) -> (nW, ws*ws)
        return t.view(hp // window, window, wp // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)

    r, v = part(region), part(valid)
    allowed = (r[:, :, None] == r[:, None, :]) & v[:, None, :]
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, MASK_VALUE)


class WindowMSA(nn.Module):
    """(Shifted) window attention over a (B, H, W, C) grid; timm's Swin-V2 ``WindowAttention`` inside."""

    def __init__(self, dim: int, num_heads: int, window: int = 8, shift: bool = False):
        super().__init__()
        self.window, self.shift = window, shift
        self.attn = WindowAttention(dim, window_size=(window, window), num_heads=num_heads)

    def shifts(self, h: int, w: int) -> tuple[int, int]:
        s = self.window // 2 if self.shift else 0
        return (s if h > self.window else 0), (s if w > self.window else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window
        sh, sw = self.shifts(h, w)
        x = F.pad(x, (0, 0, 0, (-w) % ws, 0, (-h) % ws))
        hp, wp = x.shape[1:3]
        if sh or sw:
            x = torch.roll(x, (-sh, -sw), (1, 2))
        win = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        mask = None
        if sh or sw or hp != h or wp != w:
            mask = window_attention_mask(h, w, ws, sh, sw, x.device).to(x.dtype)
        out = self.attn(win, mask=mask)
        out = out.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if sh or sw:
            out = torch.roll(out, (sh, sw), (1, 2))
        return out[:, :h, :w].contiguous()


class GlobalMSA(nn.Module):
    """Multi-head self-attention over all tokens of a (B, N, C) sequence (prompt tokens included)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class MoEMlp(nn.Module):
    """Top-1 mixture of expert MLPs: ``p_e(x) * expert_e(x)`` for the expert ``e`` of highest gate probability.

    Scaling by the chosen probability keeps the gate trainable (argmax alone has no gradient).
    ``last_balance_loss`` holds the Switch balance loss of the latest call (a tensor in the graph).
    ``conditional_compute``: an expert no token chose gets no gradient in that step, so DDP training
    needs ``find_unused_parameters`` (``rsvision.tasks.train`` switches ``ddp`` to it when it sees this).
    """

    conditional_compute = True

    def __init__(self, dim: int, hidden: int, num_experts: int = 8):
        super().__init__()
        self.num_experts = num_experts
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(Mlp(dim, hidden) for _ in range(num_experts))
        self.last_balance_loss: Optional[torch.Tensor] = None

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T, C) -> gate probabilities (T, E), chosen expert (T,), balance loss ()."""
        probs = self.gate(tokens).softmax(-1)
        idx = probs.argmax(-1)
        frac = F.one_hot(idx, self.num_experts).to(probs.dtype).mean(0)
        return probs, idx, self.num_experts * (frac * probs.mean(0)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        t = x.reshape(-1, shape[-1])
        probs, idx, loss = self.route(t)
        out = torch.zeros_like(t)
        for e, expert in enumerate(self.experts):
            sel = (idx == e).nonzero(as_tuple=True)[0]
            if sel.numel():
                out.index_copy_(0, sel, expert(t[sel]) * probs[sel, e:e + 1])
        self.last_balance_loss = loss
        return out.view(shape)


class Block(nn.Module):
    """Swin-V2 residual post-norm block over (B, H, W, C) grids (window) or (B, N, C) sequences (global)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, window: Optional[int] = 8,
                 shift: bool = False, num_experts: int = 0, drop_path: float = 0.0):
        super().__init__()
        self.attn = WindowMSA(dim, num_heads, window, shift) if window else GlobalMSA(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = MoEMlp(dim, hidden, num_experts) if num_experts else Mlp(dim, hidden)
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @property
    def is_moe(self) -> bool:
        return isinstance(self.mlp, MoEMlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.norm1(self.attn(x)))
        return x + self.drop_path(self.norm2(self.mlp(x)))


class AdaptivePatchMerging(nn.Module):
    """Between stages: (B, H, W, C) -> (B, H/2, W/2, out) when ``merge`` else (B, H, W, out).

    One parameter set for both paths: ``reduction`` maps the 2x2 group's concatenated tokens, in the
    order (0,0), (1,0), (0,1), (1,1) (row, column offsets; Swin's order), to ``out`` channels; the
    keep-resolution path applies the mean of its four (out, C) blocks to each token. So a token
    repeated 2x2 and merged gives 4x the kept token, which the LayerNorm after the projection
    (Swin-V2 places it there) maps to the same output.
    """

    def __init__(self, dim: int, out_dim: Optional[int] = None):
        super().__init__()
        self.dim, self.out_dim = dim, out_dim or 2 * dim
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def kept_weight(self) -> torch.Tensor:
        return self.reduction.weight.view(self.out_dim, 4, self.dim).mean(1)

    def forward(self, x: torch.Tensor, merge: bool) -> torch.Tensor:
        if not merge:
            return self.norm(F.linear(x, self.kept_weight()))
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        # (B, h2, dr, w2, dc, C) -> (B, h2, w2, dc, dr, C): dr varies fastest, matching the order above
        x = x.view(b, h2, 2, w2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h2, w2, 4 * c)
        return self.norm(self.reduction(x))
