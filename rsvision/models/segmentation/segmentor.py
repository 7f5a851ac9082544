"""Encoder-decoder segmentors over any timm ``features_only`` backbone (rsvision's ``lsknet_*`` /
``haksnet_*`` included once ``import rsvision`` has registered them), for any number of input bands.

Config as data: ``build_segmentor({"backbone": "resnet18", "decoder": "upernet", "num_classes": 7,
"in_chans": 4})`` builds the same model as the registered ``build_model({"type": "Segmentor", ...})``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvision.errors import ConfigError
from rsvision.models.segmentation.semantic_fpn import SemanticFPNHead
from rsvision.models.segmentation.upernet import UperHead

DECODERS = {"upernet": UperHead, "semantic_fpn": SemanticFPNHead, "fpn": SemanticFPNHead}


class Encoder(nn.Module):
    """A timm backbone returning its last ``num_levels`` feature maps with stride >= ``min_stride``.

    Stride-2 stems (ResNet's first map) are dropped so every decoder sees the usual 4/8/16/32 pyramid.
    """

    def __init__(
        self,
        name: str,
        in_chans: int = 3,
        pretrained: bool = False,
        num_levels: int = 4,
        min_stride: int = 4,
        **kwargs: Any,
    ):
        super().__init__()
        import timm

        import rsvision.models  # noqa: F401  (registers rsvision backbones with timm)

        try:
            self.body = timm.create_model(name, features_only=True, pretrained=pretrained, in_chans=in_chans, **kwargs)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ConfigError(f"cannot build backbone {name!r}: {exc}") from exc
        red = list(self.body.feature_info.reduction())
        chans = list(self.body.feature_info.channels())
        idx = [i for i, r in enumerate(red) if r >= min_stride][-num_levels:]
        if not idx:
            raise ConfigError(f"backbone {name!r} has no feature map with stride >= {min_stride}")
        self.keep = idx
        self.channels = [chans[i] for i in idx]
        self.strides = [red[i] for i in idx]
        self.name = name
        self.in_chans = in_chans
        self._kwargs = dict(kwargs)

    def load_pretrained(self, path: Any) -> Any:
        """Load a backbone / classifier / full checkpoint (any format ``load_checkpoint`` reads).

        ``load_checkpoint`` matches keys onto timm's ``features_only`` wrappers directly (their
        ``model.`` prefix and flattened ``stages_0`` names). Returns the load report.
        """
        from rsvision.models import load_checkpoint

        report = load_checkpoint(self.body, path)
        report.meta["encoder_tensors_loaded"] = f"{len(report.loaded)}/{len(self.body.state_dict())}"
        return report

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        return [feats[i] for i in self.keep]


def make_decoder(kind: str, in_channels: Sequence[int], num_classes: int, channels: int, **kwargs: Any) -> nn.Module:
    if kind not in DECODERS:
        raise ConfigError(f"unknown decoder {kind!r}; choose one of {sorted(DECODERS)}")
    return DECODERS[kind](in_channels, num_classes, channels=channels, **kwargs)


class Segmentor(nn.Module):
    """``(B, C, H, W)`` -> logits ``(B, K, H, W)``: encoder, decoder at stride 4, bilinear upsampling."""

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 2,
        in_chans: int = 3,
        decoder: str = "upernet",
        channels: int = 128,
        pretrained: bool = False,
        backbone_kwargs: dict | None = None,
        decoder_kwargs: dict | None = None,
    ):
        super().__init__()
        self.encoder = Encoder(backbone, in_chans=in_chans, pretrained=pretrained, **(backbone_kwargs or {}))
        self.decoder = make_decoder(decoder, self.encoder.channels, num_classes, channels, **(decoder_kwargs or {}))
        self.num_classes = num_classes
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


_SEG_KEYS = ("backbone", "num_classes", "in_chans", "decoder", "channels", "pretrained", "backbone_kwargs", "decoder_kwargs")


def _pick(cfg: dict, keys: Sequence[str], what: str) -> dict:
    cfg = dict(cfg.get("model", cfg)) if isinstance(cfg.get("model"), dict) else dict(cfg)
    cfg.pop("type", None)
    unknown = sorted(set(cfg) - set(keys))
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {unknown}; known: {sorted(keys)}")
    return cfg


def build_segmentor(cfg: dict) -> Segmentor:
    """Build a :class:`Segmentor` from a plain dict (keys as its constructor)."""
    return Segmentor(**_pick(cfg, _SEG_KEYS, "segmentor"))
