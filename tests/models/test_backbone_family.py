"""A backbone family is one module: registered once, detectors and checkpoint readers find it by name."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from rsvision.models import build_model
from rsvision.models.backbones import FAMILIES, Family, register_family
from rsvision.models.backbones._pyramid import PyramidBackbone, create_pyramid_model, default_cfg
from rsvision.models.detectors.builder import config_from_state_dict


class MiniMix(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mini_mix = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mini_mix(x)


class MiniMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class MiniNet(PyramidBackbone):
    def make_attn(self, dim: int) -> nn.Module:
        return MiniMix(dim)

    def make_mlp(self, dim: int, mlp_ratio: float, drop: float) -> nn.Module:
        return MiniMlp(dim, int(dim * mlp_ratio))


# what a family module holds: its variants, timm registration, one register_family call
_VARIANTS = {"mininet_t": dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2))}
default_cfgs = generate_default_cfgs({"mininet_t.untrained": default_cfg()})


@register_model
def mininet_t(pretrained: bool = False, **kwargs) -> MiniNet:
    return create_pyramid_model(MiniNet, "mininet_t", pretrained, **{**_VARIANTS["mininet_t"], **kwargs})


register_family(Family(MiniNet, _VARIANTS, marker=".mini_mix.", mlp_key="mlp.fc1.weight", mlp_hidden_dim=0))


def test_a_new_family_builds_detectors_and_is_recognised_in_state_dicts():
    assert FAMILIES["MiniNet"].cls is MiniNet
    cfg = {"type": "OrientedRCNN", "backbone": "mininet_t", "num_classes": 2, "fpn_channels": 16,
           "fc_channels": 32, "rpn": {"nms_pre": 50, "max_per_img": 20}, "rcnn": {"max_per_img": 10}}
    det = build_model(cfg).eval()
    with torch.no_grad():
        out = det(torch.randn(1, 3, 64, 64))
    assert set(out[0]) >= {"boxes", "scores", "labels"}
    inferred = config_from_state_dict(det.state_dict())
    assert inferred["backbone"] == "mininet_t" and inferred["backbone_kwargs"] == {}
    assert inferred["fpn_channels"] == 16 and inferred["num_classes"] == 2
    again = build_model(inferred)
    again.load_state_dict(det.state_dict())  # same keys and shapes
