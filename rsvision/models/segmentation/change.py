"""Siamese change detector: one shared encoder for both dates, per-level temporal fusion, one decoder.

Input pairs are ``(B, 2, C, H, W)`` (TorchGeo's layout: dim 1 is time). ``fusion="diff"`` uses
``|f_A - f_B|`` (order-invariant, the usual FC-Siam-diff choice); ``"concat"`` stacks both dates'
features and lets the decoder learn the comparison (FC-Siam-conc), which can also tell direction.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvision.errors import ConfigError
from rsvision.models.segmentation.segmentor import Encoder, _pick, make_decoder

FUSIONS = ("diff", "concat")


class SiameseChangeModel(nn.Module):
    """``(B, 2, C, H, W)`` -> logits ``(B, K, H, W)`` (``K = 2``: unchanged / changed by default)."""

    def __init__(
        self,
        backbone: str = "resnet18",
        in_chans: int = 3,
        num_classes: int = 2,
        fusion: str = "diff",
        decoder: str = "upernet",
        channels: int = 128,
        pretrained: bool = False,
        backbone_kwargs: dict | None = None,
        decoder_kwargs: dict | None = None,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; choose one of {list(FUSIONS)}")
        self.encoder = Encoder(backbone, in_chans=in_chans, pretrained=pretrained, **(backbone_kwargs or {}))
        mult = 2 if fusion == "concat" else 1
        self.decoder = make_decoder(
            decoder, [mult * c for c in self.encoder.channels], num_classes, channels, **(decoder_kwargs or {})
        )
        self.fusion = fusion
        self.num_classes = num_classes
        self.in_chans = in_chans

    def fuse(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        return (fa - fb).abs() if self.fusion == "diff" else torch.cat([fa, fb], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 2:
            raise ValueError(f"expected (B, 2, C, H, W) image pairs, got {tuple(x.shape)}")
        b = x.shape[0]
        feats = self.encoder(torch.cat([x[:, 0], x[:, 1]], 0))  # one pass, shared weights
        fused = [self.fuse(f[:b], f[b:]) for f in feats]
        logits = self.decoder(fused)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


_CHANGE_KEYS = ("backbone", "in_chans", "num_classes", "fusion", "decoder", "channels", "pretrained",
                "backbone_kwargs", "decoder_kwargs")


def build_change_model(cfg: dict[str, Any]) -> SiameseChangeModel:
    """Build a :class:`SiameseChangeModel` from a plain dict (keys as its constructor)."""
    return SiameseChangeModel(**_pick(cfg, _CHANGE_KEYS, "change model"))
