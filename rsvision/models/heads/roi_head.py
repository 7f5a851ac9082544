"""Oriented R-CNN RoI head: rotated RoIAlign on P2-P5, two shared FCs, class-agnostic deltas.

MMRotate 0.x semantics (``OrientedStandardRoIHead`` + ``RotatedSingleRoIExtractor`` +
``RotatedShared2FCBBoxHead``):

* level of a roi: ``floor(log2(sqrt(w*h) / 56 + 1e-6))`` clamped to the available levels, from the
  *rotated* size; RoIAlignRotated 7x7, 2x2 samples per bin, ``clockwise=True``, aligned.
* ``fc_cls`` has ``num_classes + 1`` outputs with background **last**; ``fc_reg`` 5 deltas for
  every class (:class:`DeltaXYWHAOBBoxCoder`, le90, stds (0.1, 0.1, 0.2, 0.2, 0.1)).
* test: softmax, candidates ``score > score_thr`` in (roi, class) order, decode with the centre
  clamped to the image, class-aware rotated NMS (IoU >= thr suppresses), at most ``max_per_img``.
* train: proposals assigned on rotated IoU (0.5 / 0.5, no low-quality matches), ground truth added
  as proposals, 512 sampled at a quarter positives, CE over all samples + SmoothL1 (beta 1) over
  positives, both divided by the number of samples.

A roi is ``(batch_idx, cx, cy, w, h, a)`` in input-image pixels (``rois_from_boxes``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rsvision.models.heads.assign import MaxIoUAssigner, RandomSampler
from rsvision.models.heads.rpn import smooth_l1
from rsvision.ops import DeltaXYWHAOBBoxCoder, multiclass_nms_rotated, rbbox_overlaps, roi_align_rotated

__all__ = [
    "DetectionConfig",
    "RotatedSingleRoIExtractor",
    "RotatedShared2FCBBoxHead",
    "OrientedRoIHead",
    "rois_from_boxes",
]


@dataclass
class DetectionConfig:
    """Post-processing of the RoI head (published Oriented R-CNN values)."""

    score_thr: float = 0.05
    iou_thr: float = 0.1
    max_per_img: int = 2000


def rois_from_boxes(boxes_list: Sequence[Tensor]) -> Tensor:
    """Per-image (K_i, >=5) boxes -> (sum K_i, 6) rois ``(batch_idx, cx, cy, w, h, a)``."""
    rois = []
    for i, b in enumerate(boxes_list):
        idx = b.new_full((b.shape[0], 1), float(i))
        rois.append(torch.cat([idx, b[:, :5]], dim=1))
    return torch.cat(rois, 0)


class RotatedSingleRoIExtractor(nn.Module):
    """Pool each rotated roi from one pyramid level chosen by its size (no parameters)."""

    def __init__(
        self,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        output_size: int = 7,
        sampling_ratio: int = 2,
        clockwise: bool = True,
        aligned: bool = True,
        finest_scale: float = 56.0,
    ):
        super().__init__()
        self.featmap_strides = list(featmap_strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.clockwise = clockwise
        self.aligned = aligned
        self.finest_scale = finest_scale

    @property
    def num_levels(self) -> int:
        return len(self.featmap_strides)

    def map_roi_levels(self, rois: Tensor) -> Tensor:
        """(N, 6) rois -> (N,) int64 level in ``[0, num_levels)``."""
        scale = torch.sqrt(rois[:, 3] * rois[:, 4])
        lvls = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return lvls.clamp(min=0, max=self.num_levels - 1).long()

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """``feats``: at least ``num_levels`` maps (B, C, H, W); rois (N, 6) -> (N, C, S, S)."""
        # Pool in (at least) float32: roi coordinates in half precision would be off by pixels.
        dtype = torch.promote_types(feats[0].dtype, torch.float32)
        feats = [f.to(dtype) for f in feats[: self.num_levels]]
        rois = rois.to(dtype)
        s = self.output_size
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], s, s))
        if rois.shape[0] == 0:
            return out
        lvls = self.map_roi_levels(rois)
        for i, (feat, stride) in enumerate(zip(feats, self.featmap_strides)):
            inds = torch.nonzero(lvls == i, as_tuple=False).flatten()
            if inds.numel() == 0:
                continue
            pooled = roi_align_rotated(
                feat,
                rois[inds],
                (s, s),
                1.0 / stride,
                self.sampling_ratio,
                aligned=self.aligned,
                clockwise=self.clockwise,
            )
            out.index_copy_(0, inds, pooled)  # in place: no second (N, C, S, S) copy per level
        return out


class RotatedShared2FCBBoxHead(nn.Module):
    """flatten -> ``shared_fcs`` (Linear + ReLU) x 2 -> ``fc_cls`` (C + 1) and ``fc_reg`` (5)."""

    def __init__(
        self, in_channels: int = 256, roi_feat_size: int = 7, fc_channels: int = 1024, num_classes: int = 15
    ):
        super().__init__()
        self.num_classes = num_classes
        flat = in_channels * roi_feat_size * roi_feat_size
        self.shared_fcs = nn.ModuleList([nn.Linear(flat, fc_channels), nn.Linear(fc_channels, fc_channels)])
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 5)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mmdet: xavier-uniform shared FCs, normal(0.01) classifier, normal(0.001) regressor.
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        x = roi_feats.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class OrientedRoIHead(nn.Module):
    """Second stage of Oriented R-CNN.

    Args:
        in_channels: FPN width. fc_channels: shared FC width. num_classes: foreground classes.
        featmap_strides, roi_size, sampling_ratio: RoIAlignRotated settings.
        bbox_coder: default :class:`DeltaXYWHAOBBoxCoder` (le90, edge swap, proj_xy).
        test_cfg: :class:`DetectionConfig`. assigner / sampler: published defaults when None.
    """

    def __init__(
        self,
        in_channels: int = 256,
        fc_channels: int = 1024,
        num_classes: int = 15,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        roi_size: int = 7,
        sampling_ratio: int = 2,
        bbox_coder: DeltaXYWHAOBBoxCoder | None = None,
        test_cfg: DetectionConfig | None = None,
        assigner: MaxIoUAssigner | None = None,
        sampler: RandomSampler | None = None,
        loss_bbox_beta: float = 1.0,
        version: str = "le90",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.version = version
        self.bbox_roi_extractor = RotatedSingleRoIExtractor(featmap_strides, roi_size, sampling_ratio)
        self.bbox_head = RotatedShared2FCBBoxHead(in_channels, roi_size, fc_channels, num_classes)
        self.bbox_coder = bbox_coder or DeltaXYWHAOBBoxCoder(angle_range=version)
        self.test_cfg = test_cfg or DetectionConfig()
        self.assigner = assigner or MaxIoUAssigner(0.5, 0.5, 0.5, match_low_quality=False)
        self.sampler = sampler or RandomSampler(512, 0.25, add_gt_as_proposals=True)
        self.loss_bbox_beta = loss_bbox_beta

    # -- forward ------------------------------------------------------------------------------
    def forward_rois(self, feats: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """rois (N, 6) -> raw ``cls_score`` (N, C + 1), background last, and ``bbox_pred`` (N, 5)."""
        return self.bbox_head(self.bbox_roi_extractor(feats, rois))

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_rois(feats, rois)

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def get_detections(
        self,
        rois: Tensor,
        cls_score: Tensor,
        bbox_pred: Tensor,
        image_sizes: Sequence[Sequence[int]],
        cfg: DetectionConfig | None = None,
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes" (K, 5), "scores" (K,), "labels" (K,)}``, score-descending.

        ``image_sizes``: per image the unpadded (H, W) used to clamp decoded centres; the number
        of images is ``len(image_sizes)``.
        """
        cfg = cfg or self.test_cfg
        scores_all = F.softmax(cls_score.float(), dim=-1)
        results = []
        for i, size in enumerate(image_sizes):
            m = rois[:, 0] == i
            h, w = int(size[0]), int(size[1])  # decoded centres are clamped to this image
            boxes = self.bbox_coder.decode(rois[m, 1:].float(), bbox_pred[m].float(), max_shape=(h, w))
            dets, labels = multiclass_nms_rotated(
                boxes, scores_all[m], cfg.score_thr, cfg.iou_thr, cfg.max_per_img
            )
            results.append({"boxes": dets[:, :5], "scores": dets[:, 5], "labels": labels})
        return results

    @torch.no_grad()
    def simple_test(
        self, feats: Sequence[Tensor], proposals: Sequence[Tensor], image_sizes: Sequence[Sequence[int]]
    ) -> list[dict[str, Tensor]]:
        """Proposals per image (K_i, >=5) -> detections per image (see :meth:`get_detections`)."""
        rois = rois_from_boxes([p.float() for p in proposals])
        cls_score, bbox_pred = self.forward_rois(feats, rois)
        return self.get_detections(rois, cls_score, bbox_pred, image_sizes)

    # -- training -----------------------------------------------------------------------------
    @torch.no_grad()
    def get_targets_single(self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """Sample rois from one image's proposals (K, >=5) plus its ground truth.

        Returns ``{"rois" (S, 5), "labels" (S,) with background = num_classes,
        "bbox_targets" (S, 5) float32 (zeros for negatives), "num_pos" int}``; positives first.
        """
        boxes = proposals[:, :5].float()
        gt = gt_boxes.to(boxes.device, torch.float32).reshape(-1, 5)
        gt_labels = gt_labels.to(boxes.device).long().reshape(-1)
        if len(gt) and len(boxes):
            overlaps = rbbox_overlaps(gt, boxes)
        else:
            overlaps = boxes.new_zeros((len(gt), len(boxes)))
        result = self.assigner.assign(overlaps, gt_labels)
        sampling = self.sampler.sample(result, boxes, gt, gt_labels)
        p, n = sampling.pos_inds.numel(), sampling.neg_inds.numel()
        labels = torch.full((p + n,), self.num_classes, dtype=torch.long, device=boxes.device)
        targets = boxes.new_zeros((p + n, 5))
        if p:
            labels[:p] = sampling.pos_gt_labels
            targets[:p] = self.bbox_coder.encode(sampling.pos_bboxes, sampling.pos_gt_bboxes)
        return {"rois": sampling.bboxes, "labels": labels, "bbox_targets": targets, "num_pos": p}

    def loss(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """``loss_cls`` (CE), ``loss_bbox`` (SmoothL1 over positives) and ``acc`` (fraction in [0, 1])."""
        targets = [
            self.get_targets_single(p.detach(), g, lab) for p, g, lab in zip(proposals, gt_boxes, gt_labels)
        ]
        rois = rois_from_boxes([t["rois"] for t in targets])
        labels = torch.cat([t["labels"] for t in targets])
        bbox_targets = torch.cat([t["bbox_targets"] for t in targets])
        cls_score, bbox_pred = self.forward_rois(feats, rois)
        cls_score, bbox_pred = cls_score.float(), bbox_pred.float()
        num = max(labels.numel(), 1)
        loss_cls = F.cross_entropy(cls_score, labels, reduction="sum") / num
        pos = labels < self.num_classes
        if pos.any():
            loss_bbox = smooth_l1(bbox_pred[pos], bbox_targets[pos], self.loss_bbox_beta).sum() / num
        else:
            loss_bbox = bbox_pred.sum() * 0.0
        acc = (cls_score.argmax(-1) == labels).float().mean() if labels.numel() else cls_score.new_zeros(())
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "acc": acc.detach()}
