"""Oriented RPN head (Xie et al., "Oriented R-CNN", ICCV 2021), MMRotate 0.x semantics.

A 3x3 conv + ReLU shared over the pyramid levels, then per anchor one sigmoid objectness logit
(``rpn_cls``) and six midpoint-offset deltas (``rpn_reg``, anchor-major: channel ``a*6 + k``).
Proposals: per level the top ``nms_pre`` scores, decode with :class:`MidpointOffsetCoder`,
*horizontal* NMS of the proposals' bounding boxes with the level as the class (no suppression
across levels; IoU strictly greater than the threshold suppresses, offset-0 areas, which is what
``torchvision.ops.batched_nms`` computes), then the best ``max_per_img`` over all levels.
Training: anchors fully inside the image are assigned on horizontal IoU with the ground truth's
horizontal boxes (0.7 / 0.3, low-quality matches), 256 sampled at half positives, sigmoid BCE +
SmoothL1 (beta 1/9) over the midpoint-offset targets, both averaged over the sampled anchors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from rsvision.models.heads.anchors import AnchorGenerator
from rsvision.models.heads.assign import MaxIoUAssigner, RandomSampler
from rsvision.ops import MidpointOffsetCoder, obb2xyxy

__all__ = ["ProposalConfig", "OrientedRPNHead", "smooth_l1"]


@dataclass
class ProposalConfig:
    """How proposals are selected (published Oriented R-CNN values; train and test are equal)."""

    nms_pre: int = 2000
    max_per_img: int = 2000
    iou_thr: float = 0.8
    min_bbox_size: float = 0.0


def smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Element-wise SmoothL1 (mmdet form: ``0.5 d^2 / beta`` below ``beta``, ``|d| - beta/2`` above)."""
    d = torch.abs(pred - target)
    if beta <= 0:
        return d
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def _as_sizes(image_sizes, n: int) -> list[tuple[int, int]]:
    if len(image_sizes) != n:
        raise ValueError(f"got {len(image_sizes)} image sizes for {n} images")
    return [(int(s[0]), int(s[1])) for s in image_sizes]


class OrientedRPNHead(nn.Module):
    """Oriented RPN.

    Args:
        in_channels: FPN width. feat_channels: width of the shared 3x3 conv (equal in the paper).
        anchor_generator: anchors (default: scale 8, ratios 0.5/1/2, strides 4..64).
        bbox_coder: midpoint-offset coder (default stds (1, 1, 1, 1, 0.5, 0.5), le90).
        train_proposals / test_proposals: :class:`ProposalConfig` for training / inference.
        assigner, sampler: training target selection (published defaults when None).
        loss_bbox_beta: SmoothL1 beta (1/9). allowed_border: anchors may stick out this many px.
    """

    def __init__(
        self,
        in_channels: int = 256,
        feat_channels: int | None = None,
        anchor_generator: AnchorGenerator | None = None,
        bbox_coder: MidpointOffsetCoder | None = None,
        train_proposals: ProposalConfig | None = None,
        test_proposals: ProposalConfig | None = None,
        assigner: MaxIoUAssigner | None = None,
        sampler: RandomSampler | None = None,
        loss_bbox_beta: float = 1.0 / 9.0,
        allowed_border: float = 0.0,
        version: str = "le90",
    ):
        super().__init__()
        feat_channels = feat_channels or in_channels
        self.version = version
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.bbox_coder = bbox_coder or MidpointOffsetCoder(angle_range=version)
        self.train_proposals = train_proposals or ProposalConfig()
        self.test_proposals = test_proposals or ProposalConfig()
        self.assigner = assigner or MaxIoUAssigner(0.7, 0.3, 0.3, match_low_quality=True)
        self.sampler = sampler or RandomSampler(256, 0.5, add_gt_as_proposals=False)
        self.loss_bbox_beta = loss_bbox_beta
        self.allowed_border = allowed_border
        a = self.anchor_generator.num_base_anchors
        self.num_anchors = a
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, a, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, a * 6, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    # -- raw outputs --------------------------------------------------------------------------
    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, 6A, H, W)."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            cls_scores.append(self.rpn_cls(x))
            bbox_preds.append(self.rpn_reg(x))
        return cls_scores, bbox_preds

    def get_anchors(self, cls_scores: Sequence[Tensor]) -> list[Tensor]:
        """Anchors (H*W*A, 4) per level, matching the maps' sizes, in float32."""
        sizes = [c.shape[-2:] for c in cls_scores]
        return self.anchor_generator.grid_anchors(sizes, torch.float32, cls_scores[0].device)

    # -- proposals ----------------------------------------------------------------------------
    @torch.no_grad()
    def get_proposals(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        image_sizes: Sequence[Sequence[int]] | None = None,
        cfg: ProposalConfig | None = None,
    ) -> list[Tensor]:
        """Proposals per image: list of (K, 6) float32 ``(cx, cy, w, h, a, score)``, score-descending.

        ``image_sizes`` is accepted for API symmetry: the midpoint-offset decoder ignores it, as the
        reference does, so proposals may extend past the image.
        """
        cfg = cfg or (self.train_proposals if self.training else self.test_proposals)
        anchors = self.get_anchors(cls_scores)
        num_images = cls_scores[0].shape[0]
        return [
            self._proposals_single(
                [c[i].float() for c in cls_scores], [b[i].float() for b in bbox_preds], anchors, cfg
            )
            for i in range(num_images)
        ]

    def _proposals_single(self, cls_scores, bbox_preds, anchors, cfg: ProposalConfig) -> Tensor:
        scores_all, deltas_all, anchors_all, levels = [], [], [], []
        for lvl, (cls, reg, anc) in enumerate(zip(cls_scores, bbox_preds, anchors)):
            scores = cls.permute(1, 2, 0).reshape(-1).sigmoid()
            deltas = reg.permute(1, 2, 0).reshape(-1, 6)
            if 0 < cfg.nms_pre < scores.numel():
                scores, order = scores.sort(descending=True)
                order, scores = order[: cfg.nms_pre], scores[: cfg.nms_pre]
                deltas, anc = deltas[order], anc[order]
            scores_all.append(scores)
            deltas_all.append(deltas)
            anchors_all.append(anc)
            levels.append(torch.full_like(scores, lvl, dtype=torch.long))
        scores = torch.cat(scores_all)
        proposals = self.bbox_coder.decode(torch.cat(anchors_all), torch.cat(deltas_all))
        levels = torch.cat(levels)
        if cfg.min_bbox_size > 0:
            valid = (proposals[:, 2] > cfg.min_bbox_size) & (proposals[:, 3] > cfg.min_bbox_size)
            proposals, scores, levels = proposals[valid], scores[valid], levels[valid]
        if proposals.numel() == 0:
            return proposals.new_zeros((0, 6))
        keep = batched_nms(obb2xyxy(proposals, self.version), scores, levels, cfg.iou_thr)
        keep = keep[: cfg.max_per_img] if cfg.max_per_img > 0 else keep
        return torch.cat([proposals[keep], scores[keep, None]], dim=1)

    # -- training -----------------------------------------------------------------------------
    def loss(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        image_sizes: Sequence[Sequence[int]],
    ) -> dict[str, Tensor]:
        """``loss_rpn_cls`` (BCE) and ``loss_rpn_bbox`` (SmoothL1), averaged over sampled anchors.

        ``gt_boxes``: per image (G, 5) rotated boxes (``version`` convention) in pixels.
        ``image_sizes``: per image the unpadded (H, W); anchors reaching outside it are not used.
        """
        num_images = cls_scores[0].shape[0]
        sizes = _as_sizes(image_sizes, num_images)
        anchors = torch.cat(self.get_anchors(cls_scores))
        logits = torch.cat([c.permute(0, 2, 3, 1).reshape(num_images, -1) for c in cls_scores], 1)
        deltas = torch.cat([b.permute(0, 2, 3, 1).reshape(num_images, -1, 6) for b in bbox_preds], 1)
        cls_terms, reg_terms = [], []
        num_samples = 0
        for i in range(num_images):
            t = self.get_targets_single(anchors, gt_boxes[i], sizes[i])
            inds = torch.cat([t["pos_inds"], t["neg_inds"]])
            target = torch.cat([torch.ones_like(t["pos_inds"]), torch.zeros_like(t["neg_inds"])])
            cls_terms.append(
                F.binary_cross_entropy_with_logits(
                    logits[i, inds].float(), target.float(), reduction="sum"
                )
            )
            if t["pos_inds"].numel():
                pred = deltas[i, t["pos_inds"]].float()
                reg_terms.append(smooth_l1(pred, t["bbox_targets"], self.loss_bbox_beta).sum())
            num_samples += max(t["pos_inds"].numel(), 1) + max(t["neg_inds"].numel(), 1)
        zero = deltas.sum() * 0.0
        loss_cls = sum(cls_terms, zero) / num_samples
        loss_bbox = sum(reg_terms, zero) / num_samples
        return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}

    @torch.no_grad()
    def get_targets_single(
        self, anchors: Tensor, gt_boxes: Tensor, image_size: Sequence[int]
    ) -> dict[str, Tensor]:
        """Sampled positive / negative anchor indices (into ``anchors``) and the positives' targets.

        Returns ``{"pos_inds", "neg_inds", "bbox_targets" (P, 6) float32, "pos_gt_inds"}``.
        """
        h, w = image_size
        b = self.allowed_border
        inside = (
            (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < w + b) & (anchors[:, 3] < h + b)
        )
        inside_inds = torch.nonzero(inside, as_tuple=False).flatten()
        anc = anchors[inside_inds]
        gt = gt_boxes.to(anchors.device, torch.float32).reshape(-1, 5)
        overlaps = box_iou(obb2xyxy(gt, self.version), anc) if len(gt) else anc.new_zeros((0, len(anc)))
        result = self.assigner.assign(overlaps)
        sampling = self.sampler.sample(result, anc, gt)
        targets = (
            self.bbox_coder.encode(sampling.pos_bboxes, sampling.pos_gt_bboxes)
            if sampling.pos_inds.numel()
            else anc.new_zeros((0, 6))
        )
        return {
            "pos_inds": inside_inds[sampling.pos_inds],
            "neg_inds": inside_inds[sampling.neg_inds],
            "bbox_targets": targets,
            "pos_gt_inds": sampling.pos_assigned_gt_inds,
        }
