"""Mask R-CNN (He et al., ICCV 2017) over any rsvision or timm backbone, built from torchvision's parts.

Two modules:

* :class:`MaskRCNNDecoder` runs on **precomputed** backbone maps (strides 4 / 8 / 16 / 32), so a
  multi-task model can encode a batch once and feed several decoders (MTP)::

      dec = MaskRCNNDecoder(in_channels=[32, 64, 160, 256], num_classes=15)
      losses = dec(features, image_sizes, targets)      # train mode: dict of scalar losses
      dets = dec(features, image_sizes)                 # eval mode: list of per-image dicts

  It holds rsvision's :class:`~rsvision.models.necks.fpn.FPN` (P2-P6), torchvision's
  ``RegionProposalNetwork`` (``RPNHead``, anchors 8x the stride, 3 ratios) and ``RoIHeads``
  (``MultiScaleRoIAlign`` 7x7 / 14x14, ``TwoMLPHead``, ``MaskRCNNHeads``).
* :class:`MaskRCNN` = backbone + decoder, built by :func:`mask_rcnn` / ``build_model({"type": "MaskRCNN",
  ...})`` with the same backbone construction as the Oriented R-CNN builder.

Targets per image: ``{"masks": (M, H, W) bool / uint8 in image pixels, "labels": (M,) int64 in
[0, num_classes)}`` (``"mask_labels"`` is used instead of ``"labels"`` when present, as multi-task
samples carry both). Boxes are always derived from the masks (horizontal, pixel extents: a one-pixel
mask is a 1x1 box), so boxes and masks cannot disagree; empty masks are dropped. Detections per image:
``{"boxes": (K, 4) x1 y1 x2 y2, "labels": (K,) in [0, num_classes), "scores": (K,), "masks": (K, H, W)
bool}`` at the unpadded image size, best first. Labels are shifted by one internally (torchvision's
class 0 is background).

**Class-dependent layers** are two clearly named submodules: ``decoder.box_predictor`` (the class
scores ``cls_score`` and per-class box deltas ``bbox_pred``) and ``decoder.mask_predictor`` (its
``mask_fcn_logits`` 1x1 conv, one logit map per class; its ``conv5_mask`` deconv is class-free). To keep
one set per dataset, build them with :meth:`MaskRCNNDecoder.make_dataset_layer` and assign them
(``decoder.box_predictor = mine``; ``decoder.mask_predictor.mask_fcn_logits = my_conv``) before the
forward; :meth:`MaskRCNNDecoder.dataset_slots` names the (parent, attribute) pairs for such swapping.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from rsvision.errors import ConfigError
from rsvision.models.factory import register_builder
from rsvision.models.necks.fpn import FPN

__all__ = ["MaskRCNNDecoder", "MaskRCNN", "mask_rcnn", "build_mask_rcnn", "mtp_instance_decoder",
           "masks_to_boxes", "DEFAULT_CONFIG"]

_LEVELS = ("0", "1", "2", "3", "pool")


def masks_to_boxes(masks: Tensor) -> Tensor:
    """(M, H, W) masks -> (M, 4) float boxes ``x1 y1 x2 y2`` covering the masks' pixels (x2 = last column + 1).

    Empty masks give zero-size boxes at the origin (callers drop them)."""
    m = masks.bool()
    if m.numel() == 0:
        return torch.zeros((m.shape[0], 4), dtype=torch.float32, device=m.device)
    rows, cols = m.any(2), m.any(1)  # (M, H), (M, W)
    h, w = m.shape[1:]
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    big = max(h, w) + 1
    y1 = torch.where(rows, ar_h, big).amin(1)
    y2 = torch.where(rows, ar_h, -1).amax(1) + 1
    x1 = torch.where(cols, ar_w, big).amin(1)
    x2 = torch.where(cols, ar_w, -1).amax(1) + 1
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    return torch.where(rows.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def _anchor_generator_cls():
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    class FixedStrideAnchors(AnchorGenerator):
        """torchvision's generator with the pyramid's strides given, not inferred from the padded
        image size (which decoders on precomputed features do not have; odd sizes would round)."""

        def __init__(self, strides: Sequence[int], sizes, ratios):
            super().__init__(sizes, ratios)
            self.strides = [int(s) for s in strides]

        def forward(self, image_list, feature_maps: list[Tensor]) -> list[Tensor]:
            grid_sizes = [f.shape[-2:] for f in feature_maps]
            dtype, device = feature_maps[0].dtype, feature_maps[0].device
            strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
            self.set_cell_anchors(dtype, device)
            anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
            return [anchors for _ in image_list.image_sizes]

    return FixedStrideAnchors


class MaskRCNNDecoder(nn.Module):
    """FPN + RPN + box / mask RoI heads on backbone maps (see the module docstring for the interface).

    Args:
        in_channels: channels of the four backbone maps (strides ``strides``), finest first.
        num_classes: foreground classes (labels ``0 .. num_classes - 1``).
        fpn_channels: FPN width (256 published); ``representation_size``: the box head's two FCs (1024);
            ``mask_channels`` x ``mask_layers``: the mask head's 3x3 convs (256 x 4).
        anchor_scale: anchor size in units of the level's stride (8: 32 px at stride 4 ... 512 at 64).
        rpn_*, box_*: torchvision's ``RegionProposalNetwork`` / ``RoIHeads`` settings ((train, test)
            pairs for the proposal counts); ``mask_thresh``: probability above which a pixel is in a mask.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, fpn_channels: int = 256,
                 representation_size: int = 1024, mask_channels: int = 256, mask_layers: int = 4,
                 strides: Sequence[int] = (4, 8, 16, 32), anchor_scale: float = 8.0,
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 rpn_pre_nms_top_n: Sequence[int] = (2000, 1000), rpn_post_nms_top_n: Sequence[int] = (2000, 1000),
                 rpn_nms_thresh: float = 0.7, rpn_batch_size_per_image: int = 256,
                 box_batch_size_per_image: int = 512, box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5,
                 box_detections_per_img: int = 100, mask_thresh: float = 0.5):
        super().__init__()
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
        from torchvision.ops import MultiScaleRoIAlign
        from torchvision.ops.poolers import initLevelMapper

        if len(in_channels) != len(strides):
            raise ConfigError(f"MaskRCNNDecoder: {len(in_channels)} input maps for strides {list(strides)}")
        if num_classes < 1:
            raise ConfigError(f"MaskRCNNDecoder needs num_classes >= 1, got {num_classes}")
        self.in_channels, self.strides = list(in_channels), [int(s) for s in strides]
        self.num_classes, self.mask_thresh = int(num_classes), float(mask_thresh)
        c = int(fpn_channels)
        self.neck = FPN(self.in_channels, c, num_outs=len(strides) + 1)  # + P6 for the RPN only
        level_strides = [*self.strides, self.strides[-1] * 2]
        sizes = tuple((float(anchor_scale * s),) for s in level_strides)
        anchors = _anchor_generator_cls()(level_strides, sizes, (tuple(aspect_ratios),) * len(sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(c, anchors.num_anchors_per_location()[0]), 0.7, 0.3, rpn_batch_size_per_image, 0.5,
            dict(training=int(rpn_pre_nms_top_n[0]), testing=int(rpn_pre_nms_top_n[1])),
            dict(training=int(rpn_post_nms_top_n[0]), testing=int(rpn_post_nms_top_n[1])), rpn_nms_thresh,
        )
        names = list(_LEVELS[: len(strides)])
        box_pool = MultiScaleRoIAlign(names, 7, 2)
        mask_pool = MultiScaleRoIAlign(names, 14, 2)
        for pool in (box_pool, mask_pool):  # fixed scales: inferring them from a small first image rounds wrongly
            pool.scales = [1.0 / s for s in self.strides]
            k = [int(torch.tensor(float(s)).log2().round()) for s in (self.strides[0], self.strides[-1])]
            pool.map_levels = initLevelMapper(k[0], k[1], canonical_scale=224, canonical_level=4)
        layers = (int(mask_channels),) * int(mask_layers)
        self.roi_heads = RoIHeads(
            box_pool, TwoMLPHead(c * 7 * 7, representation_size),
            FastRCNNPredictor(representation_size, self.num_classes + 1),
            0.5, 0.5, box_batch_size_per_image, 0.25, None, box_score_thresh, box_nms_thresh, box_detections_per_img,
            mask_roi_pool=mask_pool, mask_head=MaskRCNNHeads(c, layers, 1),
            mask_predictor=MaskRCNNPredictor(layers[-1], layers[-1], self.num_classes + 1),
        )

    # -- class-dependent layers -------------------------------------------------------------------
    @property
    def box_predictor(self) -> nn.Module:
        """``FastRCNNPredictor``: ``cls_score`` (num_classes + 1) and ``bbox_pred`` (4 per class + bg)."""
        return self.roi_heads.box_predictor

    @property
    def mask_predictor(self) -> nn.Module:
        """``MaskRCNNPredictor``: ``conv5_mask`` (class-free 2x deconv) and ``mask_fcn_logits`` (per class)."""
        return self.roi_heads.mask_predictor

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("box_predictor", "mask_predictor") and "roi_heads" in self._modules:
            setattr(self.roi_heads, name, value)  # one home for the layer, so no duplicate state-dict keys
            return
        super().__setattr__(name, value)

    def dataset_slots(self) -> dict[str, tuple[nn.Module, str]]:
        """The class-dependent layers as ``{slot: (parent module, attribute)}``: the whole box predictor
        (``fc_cls`` / ``fc_reg`` of mmdet) and the mask logits conv."""
        return {"box_predictor": (self.roi_heads, "box_predictor"),
                "mask_logits": (self.roi_heads.mask_predictor, "mask_fcn_logits")}

    def make_dataset_layer(self, slot: str, layer: nn.Module | None, num_classes: int) -> nn.Module:
        """A fresh layer for ``slot`` sized for ``num_classes`` foreground classes, initialised as
        torchvision initialises it (``layer``, the decoder's current one, is only read for its width)."""
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

        if slot == "box_predictor":
            width = (layer or self.roi_heads.box_predictor).cls_score.in_features
            return FastRCNNPredictor(width, int(num_classes) + 1)
        if slot == "mask_logits":
            width = (layer or self.roi_heads.mask_predictor.mask_fcn_logits).in_channels
            conv = nn.Conv2d(width, int(num_classes) + 1, 1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            return conv
        raise KeyError(f"unknown slot {slot!r}; known: {list(self.dataset_slots())}")

    def set_num_classes(self, num_classes: int) -> None:
        """Record the class count of the layers swapped in (label checks use it; shapes come from the layers)."""
        self.num_classes = int(num_classes)

    # -- forward ----------------------------------------------------------------------------------
    def _targets(self, targets: Sequence[Mapping[str, Any]], device: torch.device) -> list[dict[str, Tensor]]:
        out = []
        for t in targets:
            if "masks" not in t:
                raise ValueError("Mask R-CNN targets need 'masks' (M, H, W) and 'labels' (M,)")
            masks = torch.as_tensor(t["masks"], device=device)
            labels = torch.as_tensor(t["mask_labels"] if "mask_labels" in t else t["labels"], device=device)
            masks, labels = masks.reshape(-1, *masks.shape[-2:]).to(torch.uint8), labels.reshape(-1).long()
            if len(masks) != len(labels):
                raise ValueError(f"{len(masks)} masks but {len(labels)} labels in a target")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"labels must be in [0, {self.num_classes}), got {labels.unique().tolist()}")
            boxes = masks_to_boxes(masks)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out.append({"boxes": boxes[keep], "labels": labels[keep] + 1, "masks": masks[keep]})
        return out

    def _run(self, features: Sequence[Tensor], image_sizes, targets):
        from torchvision.models.detection.image_list import ImageList

        if len(features) != len(self.strides):
            raise ValueError(f"MaskRCNNDecoder expects {len(self.strides)} maps, got {len(features)}")
        sizes = [(int(s[0]), int(s[1])) for s in image_sizes]
        if len(sizes) != features[0].shape[0]:
            raise ValueError(f"{len(sizes)} image sizes for a batch of {features[0].shape[0]}")
        feats = OrderedDict(zip(_LEVELS, self.neck(list(features))))
        f0 = features[0]
        images = ImageList(f0.new_empty((f0.shape[0], 0, f0.shape[2] * self.strides[0], f0.shape[3] * self.strides[0])),
                           sizes)
        proposals, rpn_losses = self.rpn(images, feats, targets)
        dets, roi_losses = self.roi_heads(feats, proposals, sizes, targets)
        return dets, {**rpn_losses, **roi_losses}, sizes

    def losses(self, features: Sequence[Tensor], targets: Sequence[Mapping[str, Any]],
               image_sizes: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        """Training losses whatever the module's mode (validation losses too): ``loss_objectness``,
        ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``, ``loss_mask``."""
        was = self.rpn.training, self.roi_heads.training
        self.rpn.train()
        self.roi_heads.train()
        try:
            return self._run(features, image_sizes, self._targets(targets, features[0].device))[1]
        finally:
            self.rpn.train(was[0])
            self.roi_heads.train(was[1])

    def detect(self, features: Sequence[Tensor], image_sizes: Sequence[Sequence[int]]) -> list[dict[str, Tensor]]:
        """Detections with pasted full-size masks (eval mode of the heads, whatever the module's mode)."""
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        was = self.rpn.training, self.roi_heads.training
        self.rpn.eval()
        self.roi_heads.eval()
        try:
            dets, _, sizes = self._run(features, image_sizes, None)
        finally:
            self.rpn.train(was[0])
            self.roi_heads.train(was[1])
        out = []
        for d, (h, w) in zip(dets, sizes):
            probs = paste_masks_in_image(d["masks"], d["boxes"], (h, w))[:, 0] if len(d["boxes"]) else \
                d["boxes"].new_zeros((0, h, w))
            out.append({"boxes": d["boxes"], "labels": d["labels"] - 1, "scores": d["scores"],
                        "masks": probs > self.mask_thresh})
        return out

    def forward(self, features: Sequence[Tensor], image_sizes: Sequence[Sequence[int]],
                targets: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode (``targets`` required), detections in eval mode."""
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return self.losses(features, targets, image_sizes)
        return self.detect(features, image_sizes)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, strides={self.strides}"


def mtp_instance_decoder(in_channels: Sequence[int], **cfg: Any) -> MaskRCNNDecoder:
    """The decoder multi-task pretraining shares across datasets (its per-dataset layers swapped in)."""
    return MaskRCNNDecoder(list(in_channels), num_classes=int(cfg.pop("num_classes", 1)), **cfg)


class MaskRCNN(nn.Module):
    """Backbone + :class:`MaskRCNNDecoder`. ``images`` (B, C, H, W) normalised, padded to a multiple of 32;
    ``image_sizes`` the unpadded (h, w) (default: the padded size)."""

    def __init__(self, backbone: nn.Module, decoder: MaskRCNNDecoder, class_names: Sequence[str],
                 backbone_indices: Sequence[int] | None = None):
        super().__init__()
        if len(class_names) != decoder.num_classes:
            raise ValueError(f"{len(class_names)} class names for {decoder.num_classes} classes")
        self.backbone = backbone
        self.decoder = decoder
        self.class_names = list(class_names)
        self.backbone_indices = list(backbone_indices) if backbone_indices is not None else None

    @property
    def num_classes(self) -> int:
        return self.decoder.num_classes

    def extract_feat(self, images: Tensor) -> list[Tensor]:
        """The backbone's stride 4 / 8 / 16 / 32 maps (the decoder's input)."""
        from rsvision.models.detectors.oriented_rcnn import backbone_forward

        return backbone_forward(self.backbone, images, self.backbone_indices)

    def forward(self, images: Tensor, targets: Sequence[Mapping[str, Any]] | None = None,
                image_sizes: Sequence[Sequence[int]] | None = None):
        sizes = image_sizes if image_sizes is not None else [tuple(images.shape[-2:])] * images.shape[0]
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        return self.decoder(self.extract_feat(images), sizes, targets if self.training else None)

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes=None) -> list[dict[str, Tensor]]:
        """Eval-mode forward regardless of the module's mode (restores it afterwards)."""
        was = self.training
        self.eval()
        try:
            return self.forward(images, image_sizes=image_sizes)
        finally:
            self.train(was)

    def remap_state_dict(self, state_dict):
        """As :meth:`OrientedRCNN.remap_state_dict`: Lightning's ``model.`` stripped, ``backbone.*``
        matched onto a timm-wrapped backbone (hook of ``rsvision.models.load_checkpoint``)."""
        from rsvision.models.detectors.oriented_rcnn import OrientedRCNN

        return OrientedRCNN.remap_state_dict(self, state_dict)


DEFAULT_CONFIG: dict[str, Any] = {
    "type": "MaskRCNN",
    "backbone": "lsknet_t",
    "backbone_kwargs": {},
    "in_chans": 3,
    "num_classes": 15,
    "class_names": None,
    "backbone_drop_rate": 0.1,
    "backbone_drop_path_rate": 0.1,
    "decoder": {},  # MaskRCNNDecoder keyword arguments (fpn_channels, representation_size, ...)
}


def mask_rcnn(**overrides: Any) -> MaskRCNN:
    """Mask R-CNN from plain keyword arguments (``DEFAULT_CONFIG``'s keys); the resolved config is
    ``model.config``. ``backbone``: an rsvision backbone name or any timm ``features_only`` model."""
    from rsvision.models.detectors.builder import _make_backbone
    from rsvision.models.detectors.oriented_rcnn import backbone_channels

    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg.update(copy.deepcopy(overrides))
    unknown = set(cfg) - set(DEFAULT_CONFIG) - {"bands", "model_name"}
    if unknown:
        raise ConfigError(f"unknown MaskRCNN config keys: {sorted(unknown)}")
    names = list(cfg["class_names"] or [f"class_{i}" for i in range(int(cfg["num_classes"]))])
    cfg["class_names"], cfg["num_classes"] = names, len(names)
    backbone, indices = _make_backbone(cfg["backbone"], int(cfg["in_chans"]), dict(cfg["backbone_kwargs"]),
                                       cfg["backbone_drop_rate"], cfg["backbone_drop_path_rate"])
    chans = backbone_channels(backbone)
    chans = [chans[i] for i in indices] if indices is not None else chans
    try:
        decoder = MaskRCNNDecoder(chans, len(names), **dict(cfg["decoder"]))
    except TypeError as exc:
        raise ConfigError(f"model decoder settings: {exc}") from exc
    model = MaskRCNN(backbone, decoder, names, indices)
    model.config = cfg
    return model


@register_builder("MaskRCNN")
def build_mask_rcnn(cfg: dict[str, Any]) -> nn.Module:
    """``rsvision.models.build_model`` entry point."""
    cfg = dict(cfg)
    cfg.pop("type", None)
    return mask_rcnn(**cfg)
