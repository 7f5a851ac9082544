"""Greedy rotated NMS with mmcv ``nms_rotated`` semantics, vectorised.

The IoUs of all possibly overlapping pairs (:func:`~rsvision.ops.iou.candidate_pairs`, then an
upper-bound filter) come from one batched call of the exact clipping kernel; the greedy pass then
only walks a sparse list of "i suppresses j" edges (``IoU >= threshold``, inclusive as mmcv), so
the cost is dominated by the vectorised IoU, not by Python. Results are indices into the input in decreasing score order, ties broken by input order
(stable sort); identical to mmcv's CPU kernel whenever no pairwise IoU sits at the threshold. A box
with NaN never suppresses and is never suppressed (its IoUs are NaN).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .iou import _finish, _half_extents, candidate_pairs, rotated_intersection_area

__all__ = ["nms_rotated", "batched_nms_rotated", "multiclass_nms_rotated"]


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None) -> Tensor:
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    if iou_threshold <= 0:  # every pair has IoU >= 0: only the best box (per class) survives
        if idxs is None:
            return order[:1]
        seen: dict = {}
        keep = [k for k, c in enumerate(idxs[order].tolist()) if seen.setdefault(c, k) == k]
        return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]
    lab = idxs[order] if idxs is not None else None
    i, j = candidate_pairs(b, None, lab, lab)  # unordered pairs, i < j (i ranks higher)
    if i.numel():
        area = b[:, 2] * b[:, 3]
        # exact IoU only where an upper bound (intersection <= overlap of the axis-aligned boxes and
        # <= the smaller area) can reach the threshold: neighbours that merely touch are skipped
        _, ex, ey = _half_extents(b)
        ox = (torch.minimum(b[i, 0] + ex[i], b[j, 0] + ex[j]) - torch.maximum(b[i, 0] - ex[i], b[j, 0] - ex[j]))
        oy = (torch.minimum(b[i, 1] + ey[i], b[j, 1] + ey[j]) - torch.maximum(b[i, 1] - ey[i], b[j, 1] - ey[j]))
        bound = torch.minimum(ox.clamp(min=0) * oy.clamp(min=0), torch.minimum(area[i], area[j]))
        ub = bound / (area[i] + area[j] - bound)
        maybe = ~(ub * (1 + 1e-4) + 1e-6 < iou_threshold)  # margin for float rounding; NaN stays in
        i, j = i[maybe], j[maybe]
        inter = rotated_intersection_area(b[i], b[j])
        iou = _finish(inter, area[i], area[j], "iou")
        hit = iou >= iou_threshold
        i, j = i[hit], j[hit]
    # greedy pass over the sparse suppression graph (i < j, sorted by i)
    i_np = i.cpu().numpy()
    j_np = j.cpu().numpy()
    sort = np.argsort(i_np, kind="stable")
    i_np, j_np = i_np[sort], j_np[sort]
    starts = np.searchsorted(i_np, np.arange(n + 1))
    removed = np.zeros(n, dtype=bool)
    keep = []
    for k in range(n):
        if removed[k]:
            continue
        keep.append(k)
        s, e = starts[k], starts[k + 1]
        if e > s:
            removed[j_np[s:e]] = True
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of rotated boxes (the ``torchvision.ops.nms`` interface).

    Args:
        boxes: ``(N, 5)`` boxes ``(cx, cy, w, h, a)``.
        scores: ``(N,)`` scores.
        iou_threshold: a box is suppressed by a higher-scoring kept box when ``IoU >= iou_threshold``.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, in decreasing score order.
    """
    return _nms(boxes, scores, float(iou_threshold), None)


def batched_nms_rotated(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-category NMS: boxes with different ``idxs`` never suppress each other.

    Equivalent to MMRotate's centre-shift trick, but exact (no float32 precision lost to huge
    offsets): the category test is part of the candidate-pair filter. Returns ``(K,)`` int64 indices
    in decreasing score order over all categories.
    """
    return _nms(boxes, scores, float(iou_threshold), idxs)


def multiclass_nms_rotated(
    multi_bboxes: Tensor,
    multi_scores: Tensor,
    score_thr: float,
    iou_thr: float,
    max_num: int = -1,
    score_factors: Tensor | None = None,
    return_inds: bool = False,
):
    """MMRotate's ``multiclass_nms_rotated``.

    Args:
        multi_bboxes: ``(N, 5)`` class-agnostic or ``(N, 5 * C)`` per-class boxes.
        multi_scores: ``(N, C + 1)`` scores, background in the **last** column (ignored).
        score_thr: keep (box, class) candidates with score ``> score_thr`` (strict).
        iou_thr: rotated NMS threshold (suppress at ``IoU >= iou_thr``), per class.
        max_num: keep at most this many detections (``-1``: all).
        score_factors: optional ``(N,)`` factors multiplied into the scores after thresholding.
        return_inds: also return the candidate index ``row * C + class`` of each detection.

    Returns:
        ``dets (K, 6)`` = ``(cx, cy, w, h, a, score)`` in decreasing score order, ``labels (K,)``
        (and ``inds (K,)`` when ``return_inds``).
    """
    num_classes = multi_scores.shape[1] - 1
    n = multi_scores.shape[0]
    if multi_bboxes.shape[1] > 5:
        bboxes = multi_bboxes.view(n, -1, 5)
    else:
        bboxes = multi_bboxes[:, None].expand(n, num_classes, 5)
    scores = multi_scores[:, :-1]
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
    bboxes = bboxes.reshape(-1, 5)
    scores = scores.reshape(-1)
    labels = labels.reshape(-1)
    valid = scores > score_thr
    if score_factors is not None:
        factors = score_factors.view(-1, 1).expand(n, num_classes).reshape(-1)
        scores = scores * factors
    inds = valid.nonzero(as_tuple=False).squeeze(1)
    bboxes, scores, labels = bboxes[inds], scores[inds], labels[inds]
    keep = batched_nms_rotated(bboxes, scores, labels, iou_thr)
    if max_num > 0:
        keep = keep[:max_num]
    dets = torch.cat([bboxes[keep], scores[keep, None]], dim=1)
    if return_inds:
        return dets, labels[keep], inds[keep]
    return dets, labels[keep]
