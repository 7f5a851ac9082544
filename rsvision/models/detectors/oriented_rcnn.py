"""Oriented R-CNN (Xie et al., ICCV 2021): backbone -> FPN -> oriented RPN -> rotated RoI head.

The detector only wires modules; it knows nothing of files, datasets or normalisation. Interface
(torchvision-detection style)::

    model = OrientedRCNN(backbone, neck, rpn_head, roi_head, class_names)
    losses = model(images, targets)          # train mode: dict of scalar tensors
    detections = model(images)               # eval mode: list of dicts per image

``images`` (B, C, H, W) are normalised floats padded to a multiple of 32; ``targets`` per image
``{"boxes": (N, 5) le90 (cx, cy, w, h, a) px, "labels": (N,) int64 in [0, num_classes)}``
(optionally ``"image_size": (h, w)``); detections per image ``{"boxes": (K, 5), "scores": (K,),
"labels": (K,)}`` in descending score order. ``image_sizes`` (per image unpadded (h, w)) restricts
training anchors to the image and clamps decoded centres; it defaults to the padded size.

Submodule names follow MMRotate (``backbone.``, ``neck.lateral_convs.{i}.conv``,
``rpn_head.rpn_conv``, ``roi_head.bbox_head.shared_fcs.{0,1}``, ...), so MMRotate 0.x checkpoints
load key for key; :meth:`OrientedRCNN.remap_state_dict` handles backbones wrapped by timm.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from rsvision.models.heads.roi_head import OrientedRoIHead
from rsvision.models.heads.rpn import OrientedRPNHead
from rsvision.models.necks.fpn import FPN

__all__ = ["OrientedRCNN", "backbone_channels", "backbone_forward"]


def _is_pyramid(backbone: nn.Module) -> bool:
    from rsvision.models.backbones._pyramid import PyramidBackbone

    return isinstance(backbone, PyramidBackbone)


def backbone_channels(backbone: nn.Module) -> list[int]:
    """Channels of every map a backbone returns (rsvision pyramid or timm ``features_only``)."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise TypeError(f"{type(backbone).__name__} has no feature_info; use a timm features_only model")
    if hasattr(info, "channels"):
        return list(info.channels())
    return [int(d["num_chs"]) for d in info]


def backbone_reductions(backbone: nn.Module) -> list[int]:
    info = backbone.feature_info
    if hasattr(info, "reduction"):
        return list(info.reduction())
    return [int(d["reduction"]) for d in info]


def backbone_forward(backbone: nn.Module, x: Tensor, indices: Sequence[int] | None = None) -> list[Tensor]:
    """Stage maps of ``backbone`` (only those at ``indices`` when given): ``forward_intermediates`` for
    rsvision pyramids (so the module keeps its official key names), ``forward`` for timm ``features_only``
    wrappers."""
    if _is_pyramid(backbone):
        out = list(backbone.forward_intermediates(x, intermediates_only=True))
    else:
        out = backbone(x)
        if not isinstance(out, (list, tuple)):
            raise TypeError(f"backbone {type(backbone).__name__} must return a list of feature maps")
        out = list(out)
    return [out[i] for i in indices] if indices is not None else out


def _normalise_key(key: str) -> str:
    # timm wrappers prefix ``model.`` (FeatureGetterNet) or flatten ``a.b`` into ``a_b`` (FeatureListNet).
    return re.sub(r"^model\.", "", key).replace("_", ".")


class OrientedRCNN(nn.Module):
    """Two-stage oriented detector.

    Args:
        backbone: rsvision pyramid backbone (LSKNet, HAKSNet) or any timm ``features_only`` model.
        neck: :class:`FPN` taking the selected backbone maps (strides 4/8/16/32).
        rpn_head: :class:`OrientedRPNHead`. roi_head: :class:`OrientedRoIHead`.
        class_names: foreground class names, index = label.
        angle_version: angle convention of all boxes (only ``le90`` is published).
        backbone_indices: which backbone maps feed the neck (default: all).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: FPN,
        rpn_head: OrientedRPNHead,
        roi_head: OrientedRoIHead,
        class_names: Sequence[str],
        angle_version: str = "le90",
        backbone_indices: Sequence[int] | None = None,
    ):
        super().__init__()
        if len(class_names) != roi_head.num_classes:
            raise ValueError(f"{len(class_names)} class names for {roi_head.num_classes} classes")
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.class_names = list(class_names)
        self.angle_version = angle_version
        self.backbone_indices = list(backbone_indices) if backbone_indices is not None else None

    @property
    def num_classes(self) -> int:
        return self.roi_head.num_classes

    # -- stages -------------------------------------------------------------------------------
    def extract_feat(self, images: Tensor) -> list[Tensor]:
        """Backbone + FPN: 5 maps (B, C, H/s, W/s) for s = 4, 8, 16, 32, 64."""
        return self.neck(backbone_forward(self.backbone, images, self.backbone_indices))

    @staticmethod
    def _image_sizes(images: Tensor, image_sizes, targets) -> list[tuple[int, int]]:
        b, _, h, w = images.shape
        if image_sizes is None and targets is not None and all("image_size" in t for t in targets):
            image_sizes = [t["image_size"] for t in targets]
        if image_sizes is None:
            return [(h, w)] * b
        if isinstance(image_sizes, Tensor):
            image_sizes = image_sizes.tolist()
        if len(image_sizes) != b:
            raise ValueError(f"{len(image_sizes)} image sizes for a batch of {b}")
        return [(int(s[0]), int(s[1])) for s in image_sizes]

    def forward(
        self,
        images: Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        image_sizes: Sequence[Sequence[int]] | Tensor | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode (``targets`` required), detections in eval mode."""
        sizes = self._image_sizes(images, image_sizes, targets)
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        return self.decode(self.extract_feat(images), sizes, targets if self.training else None)

    def decode(self, feats: list[Tensor], image_sizes: Sequence[Sequence[int]],
               targets: Sequence[dict[str, Tensor]] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """RPN + RoI head on FPN maps (:meth:`extract_feat`): losses with ``targets``, else detections.

        Separate so that multi-task pretraining can run the heads on features encoded once for
        several decoders; ``image_sizes`` are the unpadded (h, w) per image.
        """
        sizes = [(int(s[0]), int(s[1])) for s in image_sizes]
        cls_scores, bbox_preds = self.rpn_head(feats)
        if targets is not None:
            gt_boxes, gt_labels = self._clean_targets(targets, feats[0].device)
            losses = self.rpn_head.loss(cls_scores, bbox_preds, gt_boxes, sizes)
            proposals = self.rpn_head.get_proposals(
                [c.detach() for c in cls_scores], [b.detach() for b in bbox_preds], sizes
            )
            losses.update(self.roi_head.loss(feats, proposals, gt_boxes, gt_labels))
            return losses
        proposals = self.rpn_head.get_proposals(cls_scores, bbox_preds, sizes)
        return self.roi_head.simple_test(feats, proposals, sizes)

    def _clean_targets(self, targets, device) -> tuple[list[Tensor], list[Tensor]]:
        """Move targets to ``device`` and drop boxes with a non-positive or non-finite size
        (their log-size regression targets would be infinite); check the labels' range."""
        boxes_out, labels_out = [], []
        for t in targets:
            b = torch.as_tensor(t["boxes"], device=device).reshape(-1, 5).float()
            lab = torch.as_tensor(t["labels"], device=device).reshape(-1).long()
            if len(b) != len(lab):
                raise ValueError(f"{len(b)} boxes but {len(lab)} labels in a target")
            if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
                raise ValueError(f"labels must be in [0, {self.num_classes}), got {lab.unique().tolist()}")
            ok = torch.isfinite(b).all(1) & (b[:, 2] > 0) & (b[:, 3] > 0)
            boxes_out.append(b[ok])
            labels_out.append(lab[ok])
        return boxes_out, labels_out

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes=None) -> list[dict[str, Tensor]]:
        """Eval-mode forward regardless of the module's mode (restores it afterwards)."""
        was = self.training
        self.eval()
        try:
            return self.forward(images, image_sizes=image_sizes)
        finally:
            self.train(was)

    # -- checkpoints --------------------------------------------------------------------------
    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Map MMRotate / rsvision keys onto this model's (hook of ``rsvision.models.load_checkpoint``).

        MMRotate names match directly. Lightning's ``model.`` prefix is stripped, and
        ``backbone.*`` keys are matched to a timm-wrapped backbone (``backbone.model.*`` or
        flattened names) when the plain name does not exist. Unknown keys pass through unchanged.
        """
        own = set(self.state_dict())
        by_norm: dict[str, str | None] = {}
        for k in own:
            if k.startswith("backbone."):
                n = _normalise_key(k[len("backbone."):])
                by_norm[n] = None if n in by_norm else k  # None marks ambiguity
        out: dict[str, Tensor] = {}
        remapped: dict[str, str] = {}
        for k, v in state_dict.items():
            nk = k
            if nk not in own and nk.startswith("model.") and nk[len("model."):] in own:
                nk = nk[len("model."):]
            if nk not in own and nk.startswith("backbone."):
                cand = by_norm.get(_normalise_key(nk[len("backbone."):]))
                if cand is not None:
                    nk = cand
            if nk != k:
                remapped[k] = nk
            out[nk] = v
        return out, remapped

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, angle_version={self.angle_version!r}"

