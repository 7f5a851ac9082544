"""SkySense V2: one transformer backbone for optical, multispectral and SAR imagery (arXiv 2507.13812).

No official code or weights exist; this is built from the paper's text. From the paper: a four-stage
hierarchical encoder whose parameters all modalities share, one tokenizer (patch embedding) per
modality; Swin-V2 window-attention blocks (window 8) in stages 1-2, global self-attention in stages
3-4; adaptive patch merging between stages (high-resolution optical tokens merged 2x2 with twice
the channels; multispectral and SAR tokens keep their grid, projected with the 2x2-averaged
weights, so 10 m inputs are not shrunk away); 4 learnable prompt tokens per modality per stage in
the last two stages, concatenated before the stage's blocks and dropped after it; a top-1 MoE FFN
(8 experts) in the last 6 blocks with a load-balancing loss; token width 352 (``skysense_v2_base``),
MLP ratio 4, head width 32. Module details and their choices: ``_skysense_blocks.py``.

Choices made here (not in the paper's text):

* depths (2, 2, 18, 2) for the base model (Swin-H-like; the paper's text we could read does not
  list them); patch size 4 for every tokenizer; each modality runs through the shared blocks on
  its own (modalities do not attend to one another inside the backbone);
* fusion, one output per scale: each modality's stage output (LayerNorm per stage) is resized to
  the stage's common grid, then the modalities are averaged. A modality's grid at stage i is its
  token grid halved i times (what merging would give), the common grid the largest of those, so a
  lone 120 x 120 Sentinel-2 patch yields strides 4/8/16/32 like any timm pyramid backbone
  (full-resolution token maps are area-averaged to it, smaller ones upsampled bilinearly);
* inputs: a dict ``{modality: (B, bands, H, W)}`` with any non-empty subset of the declared
  modalities, or a plain tensor for ``input_modality`` (``"s2+s1"`` splits the channels in that
  order). ``in_chans`` (which timm passes) picks the first modality with that many bands; when none
  has it and ``modalities`` is the default, the first merged modality (``hr``) is redeclared with
  ``in_chans`` generic bands, so existing single-input tasks with any band count work unchanged
  (declared ``modalities`` are never redeclared: a non-matching ``in_chans`` is an error, except
  timm's default 3, which then means the first modality);
* ``merge`` (default ``("hr",)`` when ``hr`` is declared, else none): the modalities whose tokens merge 2x2;
* ``model.aux_loss`` after a forward: the balance loss averaged over the MoE blocks and modalities
  of that forward (add it, scaled, to the task loss).

Not registered with ``register_family``: that registry describes MMRotate-style state dicts
(``patch_embed{i}``, ``block{i}``) for the detector rebuild, which this layout does not have; as a
timm ``features_only`` model it plugs into the detector, segmentor and classifier builders by name.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from rsvision.errors import BandMismatchError, ConfigError
from rsvision.models.backbones._pyramid import PooledHead, create_pyramid_model, default_cfg
from rsvision.models.backbones._skysense_blocks import AdaptivePatchMerging, Block, MoEMlp, WindowMSA

__all__ = ["SkySenseV2", "DEFAULT_MODALITIES"]

#: The paper's three modalities and band lists (HR optical RGB; Sentinel-2 L2A's ten 10/20 m bands; S1 VV, VH).
DEFAULT_MODALITIES: dict[str, tuple[str, ...]] = {
    "hr": ("R", "G", "B"),
    "s2": ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
    "s1": ("VV", "VH"),
}

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` conv + LayerNorm; (B, bands, H, W) -> (B, H/p, W/p, C), padded up."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SkySenseV2(PooledHead, nn.Module):
    """SkySense V2 backbone / classifier with timm's interface (``forward_intermediates``, ``features_only``)."""

    def __init__(
        self,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        head_dim: int = 32,
        mlp_ratio: float = 4.0,
        window: int = 8,
        window_stages: int = 2,
        num_prompts: int = 4,
        prompt_stages: Sequence[int] = (2, 3),
        num_experts: int = 8,
        moe_blocks: int = 6,
        modalities: Optional[Mapping[str, Sequence[str]]] = None,
        merge: Optional[Sequence[str]] = None,
        patch_size: int = 4,
        in_chans: Optional[int] = None,
        input_modality: Optional[str] = None,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__()
        kwargs.pop("pretrained_cfg", None)
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        mods = {str(k): tuple(str(b) for b in v) for k, v in (modalities or DEFAULT_MODALITIES).items()}
        if not mods or any(not b for b in mods.values()):
            raise ConfigError(f"skysense_v2: every modality needs at least one band, got {mods}")
        if merge is None:  # the paper: high-resolution optical tokens merge, S2 / S1 keep their grid
            merge = ("hr",) if "hr" in mods else ()
        unknown = [m for m in merge if m not in mods]
        if unknown:
            raise ConfigError(f"skysense_v2: merge names unknown modalities {unknown}; declared: {sorted(mods)}")
        self.merge = tuple(merge)
        self.input_modality = self._pick_input(mods, in_chans, input_modality, explicit=modalities is not None)
        self.modalities = mods
        self.depths, self.num_stages = list(depths), len(depths)
        self.embed_dims = [embed_dim * 2 ** i for i in range(self.num_stages)]
        self.patch_size, self.num_prompts = patch_size, num_prompts
        self.prompt_stages = tuple(i for i in prompt_stages if i < self.num_stages)
        self.num_classes, self.global_pool, self.drop_rate = num_classes, global_pool, drop_rate
        self.num_features = self.head_hidden_size = self.embed_dims[-1]

        self.patch_embed = nn.ModuleDict({m: PatchEmbed(len(b), embed_dim, patch_size) for m, b in mods.items()})
        total = sum(depths)
        dpr = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]  # linear; plain floats (meta-safe)
        first_moe = total - moe_blocks if num_experts and moe_blocks else total
        self.stages, self.merges, self.prompts, self.out_norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        k = 0
        for i, (d, dim) in enumerate(zip(depths, self.embed_dims)):
            heads = max(1, dim // head_dim)
            win = window if i < window_stages else None
            self.stages.append(nn.ModuleList(
                Block(dim, heads, mlp_ratio, win, shift=bool(j % 2), drop_path=dpr[k + j],
                      num_experts=num_experts if k + j >= first_moe else 0) for j in range(d)))
            k += d
            self.merges.append(AdaptivePatchMerging(self.embed_dims[i - 1], dim) if i else nn.Identity())
            self.prompts.append(nn.ParameterDict(
                {m: nn.Parameter(torch.zeros(num_prompts, dim)) for m in mods} if i in self.prompt_stages else {}))
            self.out_norms.append(nn.LayerNorm(dim))
        self.feature_info = [dict(num_chs=c, reduction=patch_size * 2 ** i, module=f"out_norms.{i}")
                             for i, c in enumerate(self.embed_dims)]
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_loss: torch.Tensor = torch.zeros((), device="cpu")
        self.apply(self._init_weights)
        for p in self.prompts.parameters():
            nn.init.trunc_normal_(p, std=0.02)

    # -- configuration -----------------------------------------------------------------------
    def _pick_input(self, mods: dict[str, tuple[str, ...]], in_chans: Optional[int], name: Optional[str],
                    explicit: bool) -> str:
        if name is not None:
            parts = name.split("+")
            if any(p not in mods for p in parts):
                raise ConfigError(f"skysense_v2: input_modality {name!r} names unknown modalities; declared: {sorted(mods)}")
            n = sum(len(mods[p]) for p in parts)
            if in_chans is not None and in_chans != n and len(parts) > 1:
                raise ConfigError(f"skysense_v2: input_modality {name!r} has {n} bands, in_chans is {in_chans}")
            if in_chans is not None and in_chans != n:
                mods[name] = tuple(f"band_{i + 1}" for i in range(in_chans))
            return name
        if in_chans is None:
            return next(iter(mods))
        match = [m for m, b in mods.items() if len(b) == in_chans]
        if match:
            return match[0]
        if explicit:  # declared bands are never replaced; 3 is what timm passes when nobody asked
            if in_chans == 3:
                return next(iter(mods))
            raise ConfigError(f"skysense_v2: no declared modality has in_chans={in_chans} bands: "
                              f"{ {m: len(b) for m, b in mods.items()} }")
        target = self.merge[0] if self.merge else next(iter(mods))
        mods[target] = tuple(f"band_{i + 1}" for i in range(in_chans))
        return target

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- inputs --------------------------------------------------------------------------------
    def split_inputs(self, x: Inputs) -> dict[str, torch.Tensor]:
        """A plain tensor or a dict -> ``{modality: tensor}``, every band count checked against the config."""
        if isinstance(x, torch.Tensor):
            parts = self.input_modality.split("+")
            sizes = [len(self.modalities[p]) for p in parts]
            if x.ndim != 4 or x.shape[1] != sum(sizes):
                raise BandMismatchError(
                    f"skysense_v2: modality {self.input_modality!r} expects {sum(sizes)} bands "
                    f"{list(sum((self.modalities[p] for p in parts), ()))}, got a tensor of shape {tuple(x.shape)}")
            return dict(zip(parts, torch.split(x, sizes, dim=1)))
        if not isinstance(x, Mapping) or not x:
            raise BandMismatchError("skysense_v2: input must be a tensor or a non-empty {modality: tensor} dict")
        out = {}
        for m, t in x.items():
            if m not in self.modalities:
                raise BandMismatchError(f"skysense_v2: unknown modality {m!r}; declared: {sorted(self.modalities)}")
            n = len(self.modalities[m])
            if t.ndim != 4 or t.shape[1] != n:
                raise BandMismatchError(
                    f"skysense_v2: modality {m!r} expects {n} bands {list(self.modalities[m])}, "
                    f"got a tensor of shape {tuple(t.shape)}")
            out[m] = t
        if len({t.shape[0] for t in out.values()}) > 1:
            raise BandMismatchError(f"skysense_v2: modalities differ in batch size: "
                                    f"{ {m: t.shape[0] for m, t in out.items()} }")
        return out

    # -- stages ----------------------------------------------------------------------------------
    def run_stage(self, i: int, modality: str, x: torch.Tensor, losses: list) -> torch.Tensor:
        """Stage ``i`` on one modality's (B, H, W, C) grid: merge (i > 0), [prompts +] blocks [- prompts]."""
        if i:
            x = self.merges[i](x, merge=modality in self.merge)
        blocks = self.stages[i]
        if isinstance(blocks[0].attn, WindowMSA):
            for blk in blocks:
                x = blk(x)
                if blk.is_moe:
                    losses.append(blk.mlp.last_balance_loss)
            return x
        b, h, w, c = x.shape
        seq = x.reshape(b, h * w, c)
        p = 0
        if modality in self.prompts[i]:
            prompt = self.prompts[i][modality]
            p = prompt.shape[0]
            seq = torch.cat([prompt.unsqueeze(0).expand(b, -1, -1).to(seq.dtype), seq], 1)
        for blk in blocks:
            seq = blk(seq)
            if blk.is_moe:
                losses.append(blk.mlp.last_balance_loss)
        return seq[:, p:].reshape(b, h, w, c)

    def fuse(self, maps: dict[str, torch.Tensor], grids: dict[str, tuple[int, int]]) -> torch.Tensor:
        """Mean over modalities of their (B, C, h, w) maps resized to the common grid (see module docstring)."""
        gh, gw = max(g[0] for g in grids.values()), max(g[1] for g in grids.values())
        out = []
        for t in maps.values():
            h, w = t.shape[-2:]
            if (h, w) != (gh, gw):
                t = F.adaptive_avg_pool2d(t, (gh, gw)) if h >= gh and w >= gw else \
                    F.interpolate(t, size=(gh, gw), mode="bilinear", align_corners=False)
            out.append(t)
        return out[0] if len(out) == 1 else torch.stack(out).mean(0)

    def forward_intermediates(
        self,
        x: Inputs,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's feature API: fused NCHW stage outputs for ``indices`` (default all); sets ``aux_loss``."""
        assert output_fmt == "NCHW", "only NCHW output is supported"
        take = self._resolve_indices(indices)
        last = max(take) if (stop_early or intermediates_only) else self.num_stages - 1
        streams = {m: self.patch_embed[m](t) for m, t in self.split_inputs(x).items()}
        grids = {m: tuple(s.shape[1:3]) for m, s in streams.items()}
        losses: list[torch.Tensor] = []
        feats, fused = [], None
        for i in range(last + 1):
            if i:
                grids = {m: (math.ceil(g[0] / 2), math.ceil(g[1] / 2)) for m, g in grids.items()}
            streams = {m: self.run_stage(i, m, s, losses) for m, s in streams.items()}
            if i in take or i == last:
                fused = self.fuse({m: self.out_norms[i](s).permute(0, 3, 1, 2) for m, s in streams.items()}, grids)
                if i in take:
                    feats.append(fused)
        self.aux_loss = torch.stack(losses).mean() if losses else streams[next(iter(streams))].new_zeros(())
        return feats if intermediates_only else (fused, feats)

    def _resolve_indices(self, indices: Optional[Union[int, Sequence[int]]]) -> list[int]:
        if indices is None:
            return list(range(self.num_stages))
        if isinstance(indices, int):
            return list(range(self.num_stages - indices, self.num_stages))
        return [i % self.num_stages for i in indices]

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take = self._resolve_indices(indices)
        n = max(take) + 1
        for name in ("stages", "merges", "prompts", "out_norms"):
            setattr(self, name, getattr(self, name)[:n])
        self.num_stages = n
        if prune_head:
            self.reset_classifier(0)
        return take

    def moe_layers(self) -> list[MoEMlp]:
        return [blk.mlp for stage in self.stages for blk in stage if blk.is_moe]

    def forward_features(self, x: Inputs) -> torch.Tensor:
        return self.forward_intermediates(x, indices=[self.num_stages - 1])[0]


_VARIANTS = {
    # CPU-trainable sizes (head width 32 as in the paper, fewer and narrower blocks)
    "skysense_v2_tiny": dict(embed_dim=32, depths=(2, 2, 4, 2)),
    "skysense_v2_small": dict(embed_dim=64, depths=(2, 2, 6, 2)),
    # the paper's width 352 (depths: our choice, see the module docstring)
    "skysense_v2_base": dict(embed_dim=352, depths=(2, 2, 18, 2)),
}

default_cfgs = generate_default_cfgs({f"{n}.untrained": default_cfg(first_conv="patch_embed.hr.proj")
                                      for n in _VARIANTS})


def _create(variant: str, pretrained: bool, **kwargs) -> SkySenseV2:
    return create_pyramid_model(SkySenseV2, variant, pretrained, **{**_VARIANTS[variant], **kwargs})


@register_model
def skysense_v2_tiny(pretrained: bool = False, **kwargs) -> SkySenseV2:
    return _create("skysense_v2_tiny", pretrained, **kwargs)


@register_model
def skysense_v2_small(pretrained: bool = False, **kwargs) -> SkySenseV2:
    return _create("skysense_v2_small", pretrained, **kwargs)


@register_model
def skysense_v2_base(pretrained: bool = False, **kwargs) -> SkySenseV2:
    return _create("skysense_v2_base", pretrained, **kwargs)
