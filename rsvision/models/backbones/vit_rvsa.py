"""ViT + RVSA: plain ViT with rotated varied-size window attention (Wang et al., arXiv 2208.03987),
the encoder MTP (arXiv 2403.13430) released ViT-B / ViT-L weights for.

Why RVSA: a plain ViT is too costly at remote-sensing tile sizes, and fixed windows fit objects of
arbitrary size and orientation badly. RVSA keeps 7x7 windows of *queries* but lets each window and
head predict (from the window's average-pooled features) an offset, a per-axis scale and a rotation
of where its 49 *keys / values* are bilinearly sampled. Every ``interval``-th block stays global
(full attention with decomposed relative positions), as in the paper.

This is a pure-PyTorch reimplementation of MTP's ``ViT_Win_RVSA_V3_WSZ7``: module and parameter
names are the official ones, so released and finetuned state dicts load directly (see
``rsvision.models.load_checkpoint``: ``encoder.`` / ``backbone.`` prefixes, and pos-embed and
global rel-pos tables resized bicubically to another image size, as MTP's finetune loaders do).
The official quirks that change numbers are kept (see ``../shared/golden/README.md``): the offset
divisors ``floor(G/7)`` of the *unpadded* grid, rotation on normalised coordinates, unscaled ``q``
in the window rel-pos terms, no mask on padded keys, the final ``norm`` never applied to features.

Extensions beyond the official class (which accepts only inputs of exactly ``img_size``): other
input sizes resize ``pos_embed`` and the global tables on the fly (the finetune loader's resizing,
so a model run at a size equals one built and loaded at that size); grids under 7 tokens divide
offsets by 1 instead of 0 (the official code yields inf/nan there); a timm classifier head
(token mean -> ``norm`` -> ``head``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from rsvision.models.backbones._pyramid import PooledHead
from rsvision.models.checkpoints import checkpoint_filter_fn, resize_pos_embed, resize_rel_pos

__all__ = ["ViTRVSA", "RVSAttention", "GlobalAttention", "resize_pos_embed", "resize_rel_pos"]

WS = 7  # RVSA window size (hard-coded in the official class)


def _rel_pos_terms(q: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Decomposed relative position (MViTv2): q . Rh[yq - yk + gh - 1] + q . Rw[xq - xk + gw - 1].

    q: (B, heads, gh*gw, d) -> bias (B, heads, gh*gw, gh*gw) over keys on the same (gh, gw) grid.
    """
    b, h, _, d = q.shape
    ih = torch.arange(gh, device=q.device)
    iw = torch.arange(gw, device=q.device)
    r_h = rh[ih[:, None] - ih[None, :] + gh - 1]  # (gh, gh, d)
    r_w = rw[iw[:, None] - iw[None, :] + gw - 1]
    qg = q.reshape(b, h, gh, gw, d)
    bias_h = torch.einsum("bhyxc,ykc->bhyxk", qg, r_h)  # (B, h, gh, gw, gh_k)
    bias_w = torch.einsum("bhyxc,xkc->bhyxk", qg, r_w)  # (B, h, gh, gw, gw_k)
    return (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, h, gh * gw, gh * gw)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 -> dropout (the official MLP has no dropout after the activation)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class GlobalAttention(nn.Module):
    """Full self-attention with decomposed relative positions (tables sized for the build grid)."""

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int], qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        # zeros, as the official init: a checkpoint without them (MTP's detection-finetune class)
        # then gives exactly that class's q.k-only logits
        self.full_attn_rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.full_attn_rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q = q * self.scale  # the global blocks scale q before the rel-pos terms too
        rh = resize_rel_pos(self.full_attn_rel_pos_h, 2 * gh - 1)
        rw = resize_rel_pos(self.full_attn_rel_pos_w, 2 * gw - 1)
        bias = _rel_pos_terms(q, rh, rw, gh, gw)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


def _predictor(dim: int, out: int) -> nn.Sequential:
    """Per-window regressor: 7x7 average pool (padded zeros count) -> LeakyReLU -> 1x1 conv (key ``.2.``)."""
    return nn.Sequential(nn.AvgPool2d(WS, WS), nn.LeakyReLU(), nn.Conv2d(dim, out, 1))


class RVSAttention(nn.Module):
    """Rotated varied-size window attention (official name ``RotatedVariedSizeWindowAttention``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dim = dim
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * WS - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * WS - 1, head_dim))
        self.sampling_offsets = _predictor(dim, 2 * num_heads)  # channel 2*head: x (column), 2*head+1: y
        self.sampling_scales = _predictor(dim, 2 * num_heads)
        self.sampling_angles = _predictor(dim, num_heads)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * WS - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        yy, xx = torch.meshgrid(torch.arange(WS), torch.arange(WS), indexing="ij")
        yy, xx = yy.flatten(), xx.flatten()
        index = (yy[:, None] - yy[None, :] + WS - 1) * (2 * WS - 1) + (xx[:, None] - xx[None, :] + WS - 1)
        self.register_buffer("relative_position_index", index)  # persistent: it is in the released files

    def _sample_grid(self, z: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """grid_sample coordinates (B*heads, 7*nh, 7*nw, 2) of every window's key slots over the padded map."""
        b, _, hp, wp = z.shape
        nh, nw, heads = hp // WS, wp // WS, self.num_heads
        off = self.sampling_offsets(z).reshape(b * heads, 2, nh, nw)
        # official quirks: divide by floor(G/7) of the unpadded grid, x by the height term (1 if G < 7)
        off = torch.stack([off[:, 0] / max(gh // WS, 1), off[:, 1] / max(gw // WS, 1)], 1)
        scl = self.sampling_scales(z).reshape(b * heads, 2, nh, nw)
        ang = self.sampling_angles(z).reshape(b * heads, nh, nw)
        # normalised coordinates (align_corners=True): window centres as the mean of their 7 positions
        ref_h = torch.linspace(-1, 1, hp, device=z.device)
        ref_w = torch.linspace(-1, 1, wp, device=z.device)
        cy = F.avg_pool1d(ref_h[None, None], WS)[0, 0]  # (nh,)
        cx = F.avg_pool1d(ref_w[None, None], WS)[0, 0]  # (nw,)
        ay = torch.arange(WS, device=z.device) * 2 / (hp - 1)
        ax = torch.arange(WS, device=z.device) * 2 / (wp - 1)
        ay, ax = ay - ay.mean(), ax - ax.mean()
        # (B*h, nh, 7, nw, 7): scale each axis first, then rotate about the window centre
        px = ax[None, None, None, None, :] * (1 + scl[:, 0, :, None, :, None])
        py = ay[None, None, :, None, None] * (1 + scl[:, 1, :, None, :, None])
        cos, sin = ang.cos()[:, :, None, :, None], ang.sin()[:, :, None, :, None]
        gx = cx[None, None, None, :, None] + px * cos - py * sin + off[:, 0, :, None, :, None]
        gy = cy[None, :, None, None, None] + px * sin + py * cos + off[:, 1, :, None, :, None]
        return torch.stack([gx, gy], -1).reshape(b * heads, nh * WS, nw * WS, 2)

    def forward(self, x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        b, n, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        pad_h, pad_w = (WS - gh % WS) % WS, (WS - gw % WS) % WS
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # left, right, top, bottom
        z = F.pad(x.transpose(1, 2).reshape(b, c, gh, gw), pads)
        hp, wp = z.shape[-2:]
        nh, nw = hp // WS, wp // WS
        grid = self._sample_grid(z, gh, gw)
        # qkv on the unpadded tokens, then zero-padded: padded positions carry no bias
        qkv = self.qkv(x).transpose(1, 2).reshape(b * 3 * heads, d, gh, gw)
        qkv = F.pad(qkv, pads).reshape(b, 3, heads, d, hp, wp)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, h, d, Hp, Wp)
        k = F.grid_sample(k.reshape(b * heads, d, hp, wp), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        v = F.grid_sample(v.reshape(b * heads, d, hp, wp), grid, mode="bilinear", padding_mode="zeros", align_corners=True)

        def windows(t: torch.Tensor) -> torch.Tensor:  # (B*h, d, Hp, Wp) -> (B*nh*nw, h, 49, d)
            t = t.reshape(b, heads, d, nh, WS, nw, WS).permute(0, 3, 5, 1, 4, 6, 2)
            return t.reshape(b * nh * nw, heads, WS * WS, d)

        q, k, v = windows(q), windows(k.reshape(b, heads, d, hp, wp)), windows(v.reshape(b, heads, d, hp, wp))
        # bias terms use the slots' nominal positions and the *unscaled* q; no mask on padded keys
        table = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = _rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, WS, WS)
        bias = bias + table.reshape(WS * WS, WS * WS, heads).permute(2, 0, 1)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        out = out.reshape(b, nh, nw, heads, WS, WS, d).permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
        out = out[:, :, pads[2]:pads[2] + gh, pads[0]:pads[0] + gw]
        return self.proj_drop(self.proj(out.flatten(2).transpose(1, 2)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, no layer scale)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: bool, grid: tuple[int, int],
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = (RVSAttention(dim, num_heads, qkv_bias, attn_drop, drop) if window
                     else GlobalAttention(dim, num_heads, grid, qkv_bias, attn_drop, drop))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), gh, gw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Norm2d(nn.Module):
    """Channel LayerNorm of an NCHW map (key ``ln``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ViTRVSA(PooledHead, nn.Module):
    """MTP's ViT + RVSA backbone: four maps (strides 4, 8, 16, 32) from blocks ``out_indices``.

    timm interface: ``forward_intermediates`` gives the four maps (``features_only=True``),
    ``forward`` classifies (token mean -> ``norm`` -> ``head``).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, out_blocks: Sequence[int] = (3, 5, 7, 11), interval: int = 3,
                 use_checkpoint: bool = False, global_pool: str = "avg", **kwargs):
        super().__init__()
        kwargs.pop("pretrained_cfg", None)
        # the official name of out_blocks (timm's features_only reserves out_indices for the 4 maps)
        out_indices = list(kwargs.pop("out_indices", out_blocks))
        for k in ("use_abs_pos_emb", "use_rel_pos_bias"):  # official kwargs every MTP config sets True
            if not kwargs.pop(k, True):
                raise ValueError(f"{k}=False is not supported")
        if kwargs.pop("qk_scale", None) is not None:
            raise ValueError("qk_scale must be None (head_dim ** -0.5)")
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if patch_size != 16:
            raise ValueError("only patch_size 16 is supported (the neck of every MTP config)")
        if len(out_indices) != 4 or max(out_indices) >= depth:
            raise ValueError(f"out_indices must be 4 block indices < depth={depth}, got {list(out_indices)}")
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.patch_size, self.num_classes, self.global_pool = patch_size, num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.out_indices, self.interval, self.drop_rate = list(out_indices), interval, drop_rate
        self.grad_checkpointing = use_checkpoint
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], embed_dim))  # no class token
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as torch.linspace
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, (i + 1) % interval != 0, self.grid, qkv_bias, drop_rate,
                  attn_drop_rate, dpr[i]) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)  # in the released weights; never applied to features
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2), Norm2d(embed_dim), nn.GELU(),
                                  nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2))
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, 2)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=r, module=f"fpn{i + 1}")
                             for i, r in enumerate((4, 8, 16, 32))]
        self._init_weights()

    def _init_weights(self) -> None:
        """The official init: trunc-normal(0.02) linears and pos_embed, proj / fc2 scaled by 1/sqrt(2 * layer)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            for i, blk in enumerate(self.blocks, 1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    # -- timm API -----------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for layer-wise lr decay: stem 0, block i -> i + 1, the rest (neck, norm, head)
        last, as BEiT's / MTP's ``get_num_layer_for_vit``."""
        return dict(stem=r"^pos_embed|^patch_embed", blocks=r"^blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_num_layers(self) -> int:
        return len(self.blocks)

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 4, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """``features_only``: drop the classifier; blocks and ``norm`` stay (their keys are in every checkpoint)."""
        if prune_head:
            self.reset_classifier(0)
        return self._resolve_indices(indices)

    @staticmethod
    def _resolve_indices(indices: Optional[Union[int, Sequence[int]]]) -> list[int]:
        if indices is None:
            return [0, 1, 2, 3]
        if isinstance(indices, int):
            return list(range(4 - indices, 4))
        return [i % 4 for i in indices]

    # -- forward ------------------------------------------------------------------------------
    def _tokens(self, x: torch.Tensor, stop: int) -> tuple[list[torch.Tensor], torch.Tensor, int, int]:
        """Run blocks 0..stop; returns the out_indices maps (B, C, gh, gw) so far, the last tokens, gh, gw."""
        x = self.patch_embed(x)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + resize_pos_embed(self.pos_embed, (gh, gw))
        x = self.pos_drop(x)
        maps = []
        for i, blk in enumerate(self.blocks[: stop + 1]):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, gh, gw, use_reentrant=False)
            else:
                x = blk(x, gh, gw)
            if i in self.out_indices:
                maps.append(x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw))
        return maps, x, gh, gw

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, list[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """The four neck maps (fpn1..fpn4: strides 4, 8, 16, 32) selected by ``indices`` (default all)."""
        assert output_fmt == "NCHW", "only NCHW output is supported"
        take = self._resolve_indices(indices)
        stop = self.out_indices[max(take)] if (stop_early or intermediates_only) else len(self.blocks) - 1
        maps, last, _, _ = self._tokens(x, stop)
        ops = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        feats = [ops[i](maps[i]) for i in take]
        return feats if intermediates_only else (last, feats)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) after the last block."""
        return self._tokens(x, len(self.blocks) - 1)[1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``(B, N, C)``: mean of the patch tokens (``avg``) or the first token, then ``norm``."""
        x = self.norm(x.mean(dim=1) if self.global_pool == "avg" else x[:, 0])
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)


_COMMON = dict(patch_size=16, mlp_ratio=4.0, qkv_bias=True)
_VARIANTS = {
    # the pretraining kwargs of MTP's vit_b_rvsa / vit_l_rvsa (ViT-L was pretrained at 448)
    "vit_b_rvsa": dict(embed_dim=768, depth=12, num_heads=12, out_indices=(3, 5, 7, 11), interval=3, **_COMMON),
    "vit_l_rvsa": dict(embed_dim=1024, depth=24, num_heads=16, out_indices=(7, 11, 15, 23), interval=6, **_COMMON),
    # the golden file's reduced layout (tests, CPU experiments)
    "vit_t_rvsa": dict(embed_dim=96, depth=6, num_heads=3, out_indices=(1, 2, 4, 5), interval=3, **_COMMON),
}


def _cfg(img: int = 224, **kwargs) -> dict:
    return {"url": "", "num_classes": 1000, "input_size": (3, img, img), "pool_size": None, "crop_pct": 1.0,
            "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "patch_embed.proj", "classifier": "head",
            "license": "MTP weights: see ViTAE-Transformer/MTP; rsvision implementation Apache-2.0", **kwargs}


default_cfgs = generate_default_cfgs({"vit_b_rvsa.untrained": _cfg(224), "vit_l_rvsa.untrained": _cfg(448),
                                      "vit_t_rvsa.untrained": _cfg(224)})


def _create(variant: str, pretrained: bool, **kwargs) -> ViTRVSA:
    arch = dict(_VARIANTS[variant])
    arch["out_blocks"] = arch.pop("out_indices")  # with features_only, timm takes out_indices (the maps)
    kwargs = {**arch, "drop_path_rate": 0.1, **kwargs}
    kwargs.setdefault("img_size", 448 if variant == "vit_l_rvsa" else 224)
    return build_model_with_cfg(ViTRVSA, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"), **kwargs)


@register_model
def vit_b_rvsa(pretrained: bool = False, **kwargs) -> ViTRVSA:
    """ViT-B + RVSA (MTP): 768 wide, 12 blocks (global 2, 5, 8, 11), maps from blocks 3, 5, 7, 11."""
    return _create("vit_b_rvsa", pretrained, **kwargs)


@register_model
def vit_l_rvsa(pretrained: bool = False, **kwargs) -> ViTRVSA:
    """ViT-L + RVSA (MTP): 1024 wide, 24 blocks (global 5, 11, 17, 23), maps from blocks 7, 11, 15, 23."""
    return _create("vit_l_rvsa", pretrained, **kwargs)


@register_model
def vit_t_rvsa(pretrained: bool = False, **kwargs) -> ViTRVSA:
    """Reduced ViT + RVSA (96 wide, 6 blocks, 3 heads: the golden file's layout), for tests and CPU runs."""
    return _create("vit_t_rvsa", pretrained, **kwargs)
