"""Build :class:`OrientedRCNN` from plain dicts (registered as ``build_model`` type ``OrientedRCNN``).

Two forms are accepted:

* **rsvision form** (flat; every key optional, defaults = the published configuration)::

      {"type": "OrientedRCNN", "backbone": "lsknet_t", "num_classes": 15, "class_names": [...],
       "in_chans": 3, "fpn_channels": 256, "fc_channels": 1024, "angle_version": "le90",
       "backbone_kwargs": {...},            # passed to timm.create_model
       "rpn": {"nms_pre": 2000, "max_per_img": 2000, "iou_thr": 0.8, "min_bbox_size": 0},
       "rcnn": {"score_thr": 0.05, "iou_thr": 0.1, "max_per_img": 2000}}

  ``backbone`` is an rsvision backbone name (``lsknet_t/s``, ``haksnet_t/s``: the raw module,
  official key names) or any timm model name (built with ``features_only=True``; its stride
  4/8/16/32 maps are used).
* **MMRotate form**, as golden files store it: ``{"model": {"type": "OrientedRCNN", "backbone":
  {"type": "LSKNet", ...}, "neck": ..., "rpn_head": ..., "roi_head": ..., "train_cfg": ...,
  "test_cfg": ...}, "class_names": [...], "angle_version": "le90", ...}``.

The resolved rsvision-form config is attached to the model as ``model.config`` (what a
checkpoint's hyper-parameters should store to rebuild it).
"""
from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn

from rsvision.errors import ConfigError
from rsvision.models.detectors.oriented_rcnn import OrientedRCNN, backbone_channels, backbone_reductions
from rsvision.models.factory import register_builder
from rsvision.models.heads.anchors import AnchorGenerator
from rsvision.models.heads.assign import MaxIoUAssigner, RandomSampler
from rsvision.models.heads.roi_head import DetectionConfig, OrientedRoIHead
from rsvision.models.heads.rpn import OrientedRPNHead, ProposalConfig
from rsvision.models.necks.fpn import FPN
from rsvision.ops import DeltaXYWHAOBBoxCoder, MidpointOffsetCoder

__all__ = ["DEFAULT_CONFIG", "oriented_rcnn", "build_oriented_rcnn", "config_from_state_dict"]

DEFAULT_CONFIG: dict[str, Any] = {
    "type": "OrientedRCNN",
    "backbone": "lsknet_t",
    "backbone_kwargs": {},
    "in_chans": 3,
    "num_classes": 15,
    "class_names": None,
    "fpn_channels": 256,
    "fc_channels": 1024,
    "angle_version": "le90",
    # Published LSKNet detection setting; applied to rsvision backbones unless overridden.
    "backbone_drop_rate": 0.1,
    "backbone_drop_path_rate": 0.1,
    "anchor_scales": [8],
    "anchor_ratios": [0.5, 1.0, 2.0],
    "anchor_strides": [4, 8, 16, 32, 64],
    "rpn": {"nms_pre": 2000, "max_per_img": 2000, "iou_thr": 0.8, "min_bbox_size": 0.0},
    "rcnn": {"score_thr": 0.05, "iou_thr": 0.1, "max_per_img": 2000},
}


def _make_backbone(name: str, in_chans: int, kwargs: dict, drop: float, drop_path: float):
    """(backbone module, indices of its stride-4/8/16/32 maps or None for all)."""
    import timm

    from rsvision.models.backbones import variant_names  # importing registers the families with timm

    if name in variant_names():
        kw = {"drop_rate": drop, "drop_path_rate": drop_path, **kwargs}
        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kw), None
    try:
        bb = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)
    except Exception as exc:  # unknown name or unsupported features_only
        raise ConfigError(f"cannot build backbone {name!r} as a timm features_only model: {exc}") from exc
    red = backbone_reductions(bb)
    idx = []
    for s in (4, 8, 16, 32):
        if s not in red:
            raise ConfigError(f"backbone {name!r} has feature strides {red}; need 4, 8, 16 and 32")
        idx.append(red.index(s))
    return bb, (None if idx == list(range(len(red))) else idx)


def oriented_rcnn(**overrides: Any) -> OrientedRCNN:
    """Oriented R-CNN from rsvision-form keyword arguments (see module docstring)."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    for k, v in overrides.items():
        if k in ("rpn", "rcnn") and isinstance(v, dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    unknown = set(cfg) - set(DEFAULT_CONFIG) - {"img_norm_cfg", "bands", "model_name"}
    if unknown:
        raise ConfigError(f"unknown OrientedRCNN config keys: {sorted(unknown)}")
    names = cfg["class_names"]
    if names is None:
        names = [f"class_{i}" for i in range(int(cfg["num_classes"]))]
    names = list(names)
    cfg["class_names"], cfg["num_classes"] = names, len(names)
    version = cfg["angle_version"]
    backbone, indices = _make_backbone(
        cfg["backbone"], int(cfg["in_chans"]), dict(cfg["backbone_kwargs"]),
        cfg["backbone_drop_rate"], cfg["backbone_drop_path_rate"],
    )
    chans = backbone_channels(backbone)
    chans = [chans[i] for i in indices] if indices is not None else chans
    fpn_c, fc_c = int(cfg["fpn_channels"]), int(cfg["fc_channels"])
    strides = list(cfg["anchor_strides"])
    neck = FPN(chans, fpn_c, num_outs=len(strides))
    rpn = OrientedRPNHead(
        fpn_c, fpn_c,
        anchor_generator=AnchorGenerator(strides, cfg["anchor_ratios"], cfg["anchor_scales"]),
        bbox_coder=MidpointOffsetCoder(angle_range=version),
        train_proposals=ProposalConfig(**cfg["rpn"]),
        test_proposals=ProposalConfig(**cfg["rpn"]),
        version=version,
    )
    roi = OrientedRoIHead(
        fpn_c, fc_c, len(names), featmap_strides=strides[:4],
        bbox_coder=DeltaXYWHAOBBoxCoder(angle_range=version),
        test_cfg=DetectionConfig(**cfg["rcnn"]),
        version=version,
    )
    model = OrientedRCNN(backbone, neck, rpn, roi, names, version, backbone_indices=indices)
    model.config = cfg
    return model


def _get(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _assigner(c: dict | None, default: MaxIoUAssigner) -> MaxIoUAssigner:
    if not c:
        return default
    return MaxIoUAssigner(
        c.get("pos_iou_thr", default.pos_iou_thr), c.get("neg_iou_thr", default.neg_iou_thr),
        c.get("min_pos_iou", default.min_pos_iou), c.get("match_low_quality", default.match_low_quality),
        c.get("gt_max_assign_all", True),
    )


def _sampler(c: dict | None, default: RandomSampler) -> RandomSampler:
    if not c:
        return default
    return RandomSampler(
        c.get("num", default.num), c.get("pos_fraction", default.pos_fraction),
        c.get("neg_pos_ub", -1), c.get("add_gt_as_proposals", default.add_gt_as_proposals),
    )


def _proposal_cfg(c: dict | None) -> ProposalConfig:
    c = c or {}
    return ProposalConfig(
        c.get("nms_pre", 2000), c.get("max_per_img", c.get("max_num", 2000)),
        _get(c, "nms", "iou_threshold", default=c.get("nms_thr", 0.8)), c.get("min_bbox_size", 0.0),
    )


def _coder_kwargs(c: dict | None) -> dict:
    c = dict(c or {})
    c.pop("type", None)
    return c


def _from_mmrotate(full: dict) -> OrientedRCNN:
    """The MMRotate 0.x ``OrientedRCNN`` config (as golden files store it) -> model."""
    m = full["model"]
    version = full.get("angle_version") or _get(m, "rpn_head", "version", default="le90")
    bcfg = dict(m.get("backbone", {}))
    btype = bcfg.pop("type", None)
    from rsvision.models.backbones import FAMILIES

    if btype not in FAMILIES:
        raise ConfigError(f"unsupported MMRotate backbone type {btype!r}; known: {sorted(FAMILIES)}")
    cls = FAMILIES[btype].cls
    kw = {k: bcfg[k] for k in ("embed_dims", "depths", "mlp_ratios", "drop_rate", "drop_path_rate") if k in bcfg}
    backbone = cls(num_classes=0, in_chans=int(full.get("in_chans", bcfg.get("in_chans", 3))), **kw)

    ncfg = m.get("neck", {})
    neck = FPN(ncfg.get("in_channels", backbone.embed_dims), ncfg.get("out_channels", 256), ncfg.get("num_outs", 5))

    rcfg = m.get("rpn_head", {})
    acfg = rcfg.get("anchor_generator", {})
    train, test = m.get("train_cfg") or {}, m.get("test_cfg") or {}
    rpn = OrientedRPNHead(
        rcfg.get("in_channels", neck.out_channels), rcfg.get("feat_channels"),
        anchor_generator=AnchorGenerator(
            acfg.get("strides", (4, 8, 16, 32, 64)), acfg.get("ratios", (0.5, 1.0, 2.0)), acfg.get("scales", (8,)),
            acfg.get("center_offset", 0.0),
        ),
        bbox_coder=MidpointOffsetCoder(**_coder_kwargs(rcfg.get("bbox_coder"))),
        train_proposals=_proposal_cfg(train.get("rpn_proposal")),
        test_proposals=_proposal_cfg(test.get("rpn")),
        assigner=_assigner(_get(train, "rpn", "assigner"), MaxIoUAssigner(0.7, 0.3, 0.3, True)),
        sampler=_sampler(_get(train, "rpn", "sampler"), RandomSampler(256, 0.5)),
        loss_bbox_beta=_get(rcfg, "loss_bbox", "beta", default=1.0 / 9.0),
        allowed_border=_get(train, "rpn", "allowed_border", default=0.0),
        version=version,
    )

    hcfg = _get(m, "roi_head", "bbox_head", default={})
    ecfg = _get(m, "roi_head", "bbox_roi_extractor", default={})
    layer = ecfg.get("roi_layer", {})
    if not hcfg.get("reg_class_agnostic", True):
        raise ConfigError("only class-agnostic box regression (reg_class_agnostic=True) is supported")
    rt = test.get("rcnn", {})
    roi = OrientedRoIHead(
        hcfg.get("in_channels", neck.out_channels), hcfg.get("fc_out_channels", 1024), hcfg.get("num_classes", 15),
        featmap_strides=ecfg.get("featmap_strides", (4, 8, 16, 32)),
        roi_size=layer.get("out_size", hcfg.get("roi_feat_size", 7)),
        sampling_ratio=layer.get("sample_num", 2),
        bbox_coder=DeltaXYWHAOBBoxCoder(**_coder_kwargs(hcfg.get("bbox_coder"))),
        test_cfg=DetectionConfig(
            rt.get("score_thr", 0.05), _get(rt, "nms", "iou_thr", default=0.1), rt.get("max_per_img", 2000)
        ),
        assigner=_assigner(_get(train, "rcnn", "assigner"), MaxIoUAssigner(0.5, 0.5, 0.5, False)),
        sampler=_sampler(_get(train, "rcnn", "sampler"), RandomSampler(512, 0.25, add_gt_as_proposals=True)),
        loss_bbox_beta=_get(hcfg, "loss_bbox", "beta", default=1.0),
        version=version,
    )
    if not layer.get("clockwise", True):
        roi.bbox_roi_extractor.clockwise = False
    names = full.get("class_names") or [f"class_{i}" for i in range(roi.num_classes)]
    model = OrientedRCNN(backbone, neck, rpn, roi, names, version)
    model.config = copy.deepcopy(full)
    return model


def config_from_state_dict(state_dict: dict, meta: dict | None = None) -> dict[str, Any]:
    """Infer the rsvision-form config of an MMRotate / rsvision Oriented R-CNN state dict.

    Widths, class count, backbone family (LSKNet or HAKSNet), its dims / depths / MLP ratios and
    input bands are read from tensor shapes; class names from ``meta["CLASSES"]`` when given.
    Lets ``build_model(config_from_state_dict(sd, meta))`` rebuild a published checkpoint
    (``{"meta", "state_dict"}``) without its MMRotate config file.
    """
    sd = dict(state_dict)
    for prefix in ("module.", "model."):  # DDP / Lightning wrappers
        if any(k.startswith(prefix + "backbone.") for k in sd):
            sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}

    def shape(key: str):
        if key not in sd:
            raise ConfigError(f"not an Oriented R-CNN state dict: missing {key!r}")
        return tuple(sd[key].shape)

    from rsvision.models.backbones import FAMILIES

    keys = list(sd)
    family = next((f for f in FAMILIES.values() if any(f.marker in k for k in keys)), None)
    if family is None:
        raise ConfigError(f"cannot recognise the backbone (expected {' or '.join(FAMILIES)} keys under 'backbone.')")
    dims = tuple(shape(f"backbone.patch_embed{i}.proj.weight")[0] for i in range(1, 5))
    depths = tuple(
        len({k.split(".")[2] for k in keys if k.startswith(f"backbone.block{i}.")}) for i in range(1, 5)
    )
    in_chans = shape("backbone.patch_embed1.proj.weight")[1]
    ratios = []
    for i, d in enumerate(dims, 1):
        k = f"backbone.block{i}.0.{family.mlp_key}"
        ratios.append(shape(k)[family.mlp_hidden_dim] / d if k in sd else (8, 8, 4, 4)[i - 1])
    num_classes = shape("roi_head.bbox_head.fc_cls.weight")[0] - 1
    # the registered variant with these widths and depths (else the first, with explicit kwargs)
    match = [(n, v) for n, v in family.variants.items() if (tuple(v["embed_dims"]), tuple(v["depths"])) == (dims, depths)]
    variant, exact = match[0] if match else (next(iter(family.variants)), None)
    names = list((meta or {}).get("CLASSES") or [])
    cfg: dict[str, Any] = {
        "type": "OrientedRCNN",
        "backbone": variant,
        "backbone_kwargs": {},
        "in_chans": in_chans,
        "num_classes": num_classes,
        "class_names": names if len(names) == num_classes else None,
        "fpn_channels": shape("neck.lateral_convs.0.conv.weight")[0],
        "fc_channels": shape("roi_head.bbox_head.shared_fcs.0.weight")[0],
    }
    if exact is None or tuple(ratios) != tuple(exact["mlp_ratios"]):
        cfg["backbone_kwargs"] = {"embed_dims": list(dims), "depths": list(depths), "mlp_ratios": ratios}
    if shape("roi_head.bbox_head.fc_reg.weight")[0] != 5:
        raise ConfigError("only class-agnostic box regression (5 deltas) is supported")
    return cfg


@register_builder("OrientedRCNN")
def build_oriented_rcnn(cfg: dict[str, Any]) -> nn.Module:
    """``rsvision.models.build_model`` entry point for both config forms."""
    if isinstance(cfg.get("model"), dict):
        return _from_mmrotate(cfg)
    cfg = dict(cfg)
    cfg.pop("type", None)
    return oriented_rcnn(**cfg)
