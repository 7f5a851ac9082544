"""The four-stage skeleton LSKNet and HAKSNet share.

Both papers use the same body (stems, BatchNorm pre-norm blocks with layer scale, a LayerNorm at
the end of each stage) and differ only in the block's ``attn`` and ``mlp``. Keeping the skeleton
here lets each family file contain just the paper's own modules, with the official key names
(``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, ``head``) so official checkpoints load directly.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import DropPath

__all__ = ["OverlapPatchEmbed", "Block", "PyramidBackbone"]


class OverlapPatchEmbed(nn.Module):
    """Strided conv (bias) + BatchNorm: 7x7/4 for the stem, 3x3/2 between stages."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 7, stride: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class Block(nn.Module):
    """Pre-norm residual block: ``x + dp(ls1 * attn(BN(x)))`` then ``x + dp(ls2 * mlp(BN(x)))``."""

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp: nn.Module,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-2,
    ):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = mlp
        # Shape (C,), broadcast over H, W, as in the official checkpoints.
        self.layer_scale_1 = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(layer_scale_init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))
        return x


class PooledHead:
    """timm's classifier interface over ``forward_features``' last (B, C, H, W) map: average pooling,
    dropout, ``head`` (a Linear of ``num_features`` inputs). Shared by the pyramid backbones, SkySense
    V2 and ViT-RVSA (which pools tokens in its own ``forward_head``); the class using it sets ``head``,
    ``num_features``, ``num_classes``, ``global_pool`` and ``drop_rate``."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


class PyramidBackbone(PooledHead, nn.Module):
    """Four stages (strides 4/8/16/32) of ``Block``s, with timm's classifier / features interface.

    Subclasses provide ``make_attn(dim)`` and ``make_mlp(dim, mlp_ratio, drop)``.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (2, 2, 4, 2),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        **kwargs,
    ):
        super().__init__()
        if not 1 <= len(depths) <= 4:
            raise ValueError(f"1 to 4 stages are supported, got depths={tuple(depths)}")
        if kwargs:
            # timm passes a few generic kwargs (e.g. pretrained_cfg) that we do not use.
            kwargs.pop("pretrained_cfg", None)
            if kwargs:
                raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.num_stages = len(depths)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # linear over all blocks
        cur = 0
        self.feature_info = []
        for i in range(self.num_stages):
            stem = i == 0
            patch_embed = OverlapPatchEmbed(
                in_chans if stem else embed_dims[i - 1], embed_dims[i], 7 if stem else 3, 4 if stem else 2
            )
            block = nn.ModuleList(
                Block(
                    embed_dims[i],
                    self.make_attn(embed_dims[i]),
                    self.make_mlp(embed_dims[i], mlp_ratios[i], drop_rate),
                    drop_path=dpr[cur + j],
                )
                for j in range(depths[i])
            )
            norm = nn.LayerNorm(embed_dims[i], eps=1e-6)
            cur += depths[i]
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", block)
            setattr(self, f"norm{i + 1}", norm)
            self.feature_info.append(
                dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f"norm{i + 1}")
            )
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    # -- subclasses -------------------------------------------------------------------------
    def make_attn(self, dim: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def make_mlp(self, dim: int, mlp_ratio: float, drop: float) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    # -- init -------------------------------------------------------------------------------
    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            # fan-out normal init (the official one) keeps the deep residual stack well scaled.
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for layer-wise lr decay: the stem, then every block in order (a stage's
        downsampling joins its first block, its norm its last), timm's convention."""
        return dict(stem=r"^patch_embed1\.", blocks=[(r"^patch_embed(\d+)\.", (0,)), (r"^block(\d+)\.(\d+)\.", None),
                                                      (r"^norm(\d+)\.", (99999,))])

    # -- forward ----------------------------------------------------------------------------
    # Each stage's modules are attributes with the official names (patch_embed{i}, block{i},
    # norm{i}), so they cannot sit in one ModuleList of stages. TorchScript has no getattr with a
    # computed name, hence one method per stage and a dispatch on literal indices; ``hasattr``
    # is resolved when scripting, so stages removed by ``prune_intermediate_layers`` are skipped.
    def _stage1(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed1(x)
        for blk in self.block1:
            x = blk(x)
        return self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm over channels

    def _stage2(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed2(x)
        for blk in self.block2:
            x = blk(x)
        return self.norm2(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def _stage3(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed3(x)
        for blk in self.block3:
            x = blk(x)
        return self.norm3(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def _stage4(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed4(x)
        for blk in self.block4:
            x = blk(x)
        return self.norm4(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Run stage ``i`` (0-based): patch embedding, blocks, token LayerNorm. NCHW in and out."""
        if hasattr(self, "block1") and i == 0:
            return self._stage1(x)
        if hasattr(self, "block2") and i == 1:
            return self._stage2(x)
        if hasattr(self, "block3") and i == 2:
            return self._stage3(x)
        if hasattr(self, "block4") and i == 3:
            return self._stage4(x)
        raise IndexError("stage index out of range")

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """timm's feature API: the stage outputs selected by ``indices`` (default all four).

        Returns ``list[Tensor]`` (B, C_i, H/2^(i+2), W/2^(i+2)) when ``intermediates_only``, else
        ``(final_features, intermediates)``.
        """
        assert output_fmt == "NCHW", "only NCHW output is supported"
        take = self._resolve_indices(indices)
        last = max(take) if (stop_early or intermediates_only) else self.num_stages - 1
        feats: list[torch.Tensor] = []
        for i in range(last + 1):
            x = self.stage(i, x)
            if i in take:
                feats.append(x)
        if intermediates_only:
            return feats
        return x, feats

    def _resolve_indices(self, indices: Optional[Union[int, list[int]]]) -> list[int]:
        if indices is None:
            return list(range(self.num_stages))
        if isinstance(indices, int):  # the last n stages, as timm does
            return list(range(self.num_stages - indices, self.num_stages))
        return [i % self.num_stages for i in indices]

    def prune_intermediate_layers(
        self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the classifier (and unused last stages) for ``features_only`` use."""
        take = self._resolve_indices(indices)
        for i in range(max(take) + 1, self.num_stages):
            for name in (f"patch_embed{i + 1}", f"block{i + 1}", f"norm{i + 1}"):
                delattr(self, name)
        self.num_stages = max(take) + 1
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_stages):
            x = self.stage(i, x)
        return x




def create_pyramid_model(cls: type, variant: str, pretrained: bool = False, **kwargs) -> PyramidBackbone:
    """timm ``build_model_with_cfg`` with the feature getter (stage outputs via forward_intermediates).

    Pretrained weights come only from a local file (``pretrained_cfg_overlay=dict(file=PATH)``);
    ``checkpoint_filter_fn`` accepts official, MMRotate, EMA and rsvision layouts.
    """
    from timm.models import build_model_with_cfg

    from rsvision.models.checkpoints import checkpoint_filter_fn

    return build_model_with_cfg(
        cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )


def default_cfg(**kwargs) -> dict:
    """timm pretrained_cfg: no URL (rsvision never downloads); ImageNet normalisation."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed1.proj",
        "classifier": "head",
        "license": "see paper; rsvision implementation Apache-2.0",
        **kwargs,
    }
