"""Box assignment and sampling for two-stage detectors (mmdet 2.x semantics).

Assigners take a precomputed overlap matrix, so the same code serves the RPN (horizontal IoU of
anchors against the ground truth's horizontal boxes) and the RoI head (rotated IoU).

Assignment encoding (``AssignResult.gt_inds``, one entry per candidate box):
``-1`` ignored, ``0`` negative (background), ``k > 0`` positive, matched to ground truth ``k - 1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AssignResult", "MaxIoUAssigner", "SamplingResult", "RandomSampler"]


@dataclass
class AssignResult:
    """Result of an assignment over N candidates and G ground-truth boxes.

    ``gt_inds`` (N,) int64: -1 ignore / 0 negative / k>0 matched to gt k-1. ``max_overlaps`` (N,)
    float: best IoU of each candidate. ``labels`` (N,) int64: the matched gt label or -1.
    """

    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor

    def add_gt_(self, gt_labels: Tensor) -> None:
        """Prepend the ground truth itself as positive candidates (``add_gt_as_proposals``)."""
        n = len(gt_labels)
        self_inds = torch.arange(1, n + 1, dtype=torch.long, device=gt_labels.device)
        self.gt_inds = torch.cat([self_inds, self.gt_inds])
        self.max_overlaps = torch.cat([self.max_overlaps.new_ones(n), self.max_overlaps])
        self.labels = torch.cat([gt_labels.long(), self.labels])


class MaxIoUAssigner:
    """Assign each candidate to the ground truth it overlaps most (mmdet ``MaxIoUAssigner``).

    1. Every candidate starts ignored (-1). 2. Max IoU in ``[0, neg_iou_thr)`` -> negative.
    3. Max IoU ``>= pos_iou_thr`` -> positive to its argmax gt. 4. With ``match_low_quality``,
    every gt whose best IoU is ``>= min_pos_iou`` also claims *all* candidates reaching that best
    IoU (``gt_max_assign_all``), overriding steps 2-3 in gt order; that way every gt gets at least
    one anchor even when no anchor reaches ``pos_iou_thr``.
    """

    def __init__(
        self,
        pos_iou_thr: float,
        neg_iou_thr: float,
        min_pos_iou: float = 0.0,
        match_low_quality: bool = True,
        gt_max_assign_all: bool = True,
    ):
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality
        self.gt_max_assign_all = gt_max_assign_all

    def assign(self, overlaps: Tensor, gt_labels: Tensor | None = None) -> AssignResult:
        """Assign from ``overlaps`` (G, N): IoU of each of G ground truths with N candidates."""
        num_gts, num_boxes = overlaps.shape
        device = overlaps.device
        gt_inds = overlaps.new_full((num_boxes,), -1, dtype=torch.long)
        labels = overlaps.new_full((num_boxes,), -1, dtype=torch.long)
        if num_gts == 0 or num_boxes == 0:
            max_overlaps = overlaps.new_zeros((num_boxes,))
            if num_gts == 0:
                gt_inds.zero_()
            return AssignResult(num_gts, gt_inds, max_overlaps, labels)

        max_overlaps, argmax = overlaps.max(dim=0)
        gt_max, _ = overlaps.max(dim=1)
        gt_inds[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0
        pos = max_overlaps >= self.pos_iou_thr
        gt_inds[pos] = argmax[pos] + 1
        if self.match_low_quality:
            for i in range(num_gts):
                if gt_max[i] >= self.min_pos_iou:
                    if self.gt_max_assign_all:
                        gt_inds[overlaps[i] == gt_max[i]] = i + 1
                    else:
                        gt_inds[overlaps[i].argmax()] = i + 1
        if gt_labels is not None:
            p = gt_inds > 0
            labels[p] = gt_labels.to(device).long()[gt_inds[p] - 1]
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)


@dataclass
class SamplingResult:
    """Indices (into the candidate list, *after* any prepended ground truth) of the sampled boxes.

    ``pos_assigned_gt_inds`` (P,) gives the 0-based gt of each positive; ``pos_is_gt`` (P,) bool
    marks positives that are ground-truth boxes added as proposals.
    """

    pos_inds: Tensor
    neg_inds: Tensor
    pos_bboxes: Tensor
    neg_bboxes: Tensor
    pos_gt_bboxes: Tensor
    pos_gt_labels: Tensor | None
    pos_assigned_gt_inds: Tensor
    pos_is_gt: Tensor

    @property
    def bboxes(self) -> Tensor:
        return torch.cat([self.pos_bboxes, self.neg_bboxes])


class RandomSampler:
    """Sample ``num`` candidates, at most ``num * pos_fraction`` positives, the rest negatives.

    Positives and negatives are drawn uniformly without replacement (torch's global RNG, so
    ``lightning.seed_everything`` makes it reproducible). ``neg_pos_ub >= 0`` caps negatives at
    ``neg_pos_ub * max(1, num_pos)``. With ``add_gt_as_proposals`` the ground-truth boxes are
    prepended to the candidates as positives first (mmdet ``RandomSampler`` / ``RRandomSampler``).
    """

    def __init__(
        self, num: int, pos_fraction: float, neg_pos_ub: int = -1, add_gt_as_proposals: bool = False
    ):
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = add_gt_as_proposals

    @staticmethod
    def _choose(inds: Tensor, k: int) -> Tensor:
        if inds.numel() <= k:
            return inds
        perm = torch.randperm(inds.numel())[:k].to(inds.device)
        return inds[perm]

    def sample(
        self,
        assign_result: AssignResult,
        bboxes: Tensor,
        gt_bboxes: Tensor,
        gt_labels: Tensor | None = None,
    ) -> SamplingResult:
        """Sample from ``bboxes`` (N, D) given their assignment against ``gt_bboxes`` (G, D)."""
        bboxes = bboxes[:, : gt_bboxes.shape[1]] if gt_bboxes.dim() == 2 else bboxes
        gt_flags = bboxes.new_zeros((bboxes.shape[0],), dtype=torch.bool)
        if self.add_gt_as_proposals and len(gt_bboxes) > 0:
            if gt_labels is None:
                raise ValueError("gt_labels are needed to add the ground truth as proposals")
            bboxes = torch.cat([gt_bboxes.to(bboxes.dtype), bboxes])
            assign_result.add_gt_(gt_labels)
            gt_flags = torch.cat([gt_flags.new_ones(len(gt_bboxes)), gt_flags])

        num_pos_expected = int(self.num * self.pos_fraction)
        pos_inds = torch.nonzero(assign_result.gt_inds > 0, as_tuple=False).flatten()
        pos_inds = self._choose(pos_inds, num_pos_expected)
        num_neg_expected = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_neg_expected = min(num_neg_expected, int(self.neg_pos_ub * max(1, pos_inds.numel())))
        neg_inds = torch.nonzero(assign_result.gt_inds == 0, as_tuple=False).flatten()
        neg_inds = self._choose(neg_inds, num_neg_expected)

        assigned = assign_result.gt_inds[pos_inds] - 1
        if gt_bboxes.numel() == 0:
            pos_gt = gt_bboxes.new_zeros((0, gt_bboxes.shape[-1]))
        else:
            pos_gt = gt_bboxes[assigned]
        pos_labels = assign_result.labels[pos_inds] if gt_labels is not None else None
        return SamplingResult(
            pos_inds=pos_inds,
            neg_inds=neg_inds,
            pos_bboxes=bboxes[pos_inds],
            neg_bboxes=bboxes[neg_inds],
            pos_gt_bboxes=pos_gt,
            pos_gt_labels=pos_labels,
            pos_assigned_gt_inds=assigned,
            pos_is_gt=gt_flags[pos_inds],
        )
