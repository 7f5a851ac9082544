"""Layer-wise lr decay (``optim.layer_decay``) against hand-computed scales ``decay ** (L - i)``."""
from __future__ import annotations

import pytest
import timm
import torch

import rsvision.models  # noqa: F401  (registers the backbones)
from rsvision.config import OptimConfig
from rsvision.errors import ConfigError
from rsvision.models.optim import param_groups
from rsvision.models.segmentation import Segmentor


def _scale_of(groups) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_vit_rvsa_segmentor_scales_by_hand():
    """ViT-RVSA tiny (6 blocks) in a UperNet: stem 0.9^7, block i 0.9^(6 - i), neck / norm / decoder 1."""
    model = Segmentor("vit_t_rvsa", num_classes=3, channels=16, backbone_kwargs={"img_size": 64})
    scale = _scale_of(param_groups(model, 0.05, no_decay_norm_bias=True, layer_decay=0.9))
    names = dict(model.named_parameters())
    assert len(scale) == len(names)  # every parameter in exactly one group
    for n, p in names.items():
        rest = n.removeprefix("encoder.body.model.")
        if rest.startswith(("pos_embed", "patch_embed")):
            want = 0.9 ** 7
        elif rest.startswith("blocks."):
            want = 0.9 ** (6 - int(rest.split(".")[1]))
        else:  # fpn1/fpn2, the unused norm, the whole decoder
            want = 1.0
        got, wd = scale[id(p)]
        assert got == pytest.approx(want, rel=1e-12), n
        no_wd = p.ndim <= 1 or n.endswith(".bias") or rest == "pos_embed"
        assert wd == (0.0 if no_wd else 0.05), n
    assert scale[id(names["encoder.body.model.blocks.0.attn.qkv.weight"])][0] == pytest.approx(0.531441)


def test_pyramid_backbone_counts_blocks_across_stages():
    """LSKNet-T (3 + 3 + 5 + 2 blocks): stem 0, then blocks 1..13 in order, head last (L = 14)."""
    model = timm.create_model("lsknet_t", num_classes=4)
    scale = _scale_of(param_groups(model, 0.05, layer_decay=0.5))
    p = dict(model.named_parameters())
    assert scale[id(p["patch_embed1.proj.weight"])][0] == 0.5 ** 14
    assert scale[id(p["block1.0.mlp.fc1.weight"])][0] == 0.5 ** 13
    assert scale[id(p["patch_embed2.proj.weight"])][0] == 0.5 ** 10  # joins block2.0 (the 4th block)
    assert scale[id(p["block2.0.mlp.fc1.weight"])][0] == 0.5 ** 10
    assert scale[id(p["norm3.weight"])][0] == 0.5 ** 3  # joins block3.4 (the 11th)
    assert scale[id(p["block4.1.mlp.fc1.weight"])][0] == 0.5 ** 1
    assert scale[id(p["head.weight"])][0] == 1.0


def test_task_optimiser_applies_the_scales_to_each_group_lr():
    from rsvision.tasks.segmentation import SegmentationTask

    task = SegmentationTask(model={"backbone": "vit_t_rvsa", "channels": 16, "backbone_kwargs": {"img_size": 64}},
                            data={"classes": ["a", "b"], "mean": [0.0] * 3, "std": [1.0] * 3, "img_size": 64},
                            optim={"lr": 2e-3, "layer_decay": 0.9})
    opt = task.configure_optimizers()["optimizer"]
    qkv0 = task.model.encoder.body.model.blocks[0].attn.qkv.weight
    head = next(iter(task.model.decoder.parameters()))
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(qkv0)] == pytest.approx(2e-3 * 0.9 ** 6)
    assert lr_of[id(head)] == pytest.approx(2e-3)
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4}  # no_decay_norm_bias off: all decayed


def test_no_layer_decay_keeps_one_group_and_bad_values_are_refused():
    model = timm.create_model("vit_t_rvsa", num_classes=2, img_size=64)
    groups = param_groups(model, 0.05)
    assert len(groups) == 1 and "lr_scale" not in groups[0]
    with pytest.raises(ConfigError, match="layer_decay"):
        OptimConfig(layer_decay=1.5)
    with pytest.raises(ConfigError, match="group_matcher"):
        param_groups(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.05, layer_decay=0.9)
