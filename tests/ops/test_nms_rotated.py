"""Rotated NMS against a textbook greedy loop with shapely IoU."""
from __future__ import annotations

import math

import pytest
import torch

from rsvision.ops import batched_nms_rotated, box_iou_rotated, multiclass_nms_rotated, nms_rotated
from tests.ops._rotated_reference import greedy_nms


def _clustered(n_obj, per_obj, gen, dtype=torch.float64):
    centres = torch.rand(n_obj, 2, generator=gen, dtype=dtype) * 400
    wh = torch.rand(n_obj, 2, generator=gen, dtype=dtype) * 40 + 5
    a = (torch.rand(n_obj, 1, generator=gen, dtype=dtype) - 0.5) * math.pi
    base = torch.cat([centres, wh, a], 1).repeat_interleave(per_obj, 0)
    jitter = torch.randn(base.shape, generator=gen, dtype=dtype) * torch.tensor([2, 2, 2, 2, 0.1], dtype=dtype)
    boxes = base + jitter
    boxes[:, 2:4] = boxes[:, 2:4].abs() + 1
    scores = torch.rand(len(boxes), generator=gen, dtype=dtype)
    return boxes, scores


@pytest.mark.parametrize("thr", [0.05, 0.3, 0.7])
def test_matches_greedy_shapely_loop(thr):
    gen = torch.Generator().manual_seed(11)
    boxes, scores = _clustered(12, 6, gen)
    keep = nms_rotated(boxes, scores, thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == greedy_nms(boxes.tolist(), scores.tolist(), thr)
    # decreasing scores, kept boxes pairwise below the threshold
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])
    iou = box_iou_rotated(boxes[keep], boxes[keep])
    iou.fill_diagonal_(0)
    assert iou.max() < thr


def test_batched_matches_per_class_loop():
    gen = torch.Generator().manual_seed(5)
    boxes, scores = _clustered(8, 5, gen)
    labels = torch.randint(0, 3, (len(boxes),), generator=gen)
    keep = batched_nms_rotated(boxes, scores, labels, 0.2)
    assert keep.tolist() == greedy_nms(boxes.tolist(), scores.tolist(), 0.2, labels.tolist())
    # identical boxes in different classes both survive
    b = torch.tensor([[10.0, 10, 5, 3, 0.2]] * 2)
    s = torch.tensor([0.9, 0.8])
    assert batched_nms_rotated(b, s, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms_rotated(b, s, torch.tensor([1, 1]), 0.5).tolist() == [0]


def test_threshold_inclusive_and_edge_cases():
    b = torch.tensor([[0.0, 0, 2, 2, 0], [1.0, 0, 2, 2, 0], [50.0, 50, 2, 2, 0]], dtype=torch.float64)
    s = torch.tensor([0.9, 0.8, 0.7])
    # IoU of the first two is exactly 1/3: suppressed at thr == IoU (inclusive, as mmcv)
    assert nms_rotated(b, s, 1 / 3).tolist() == [0, 2]
    assert nms_rotated(b, s, 0.34).tolist() == [0, 1, 2]
    # thr 0: IoU >= 0 always holds, only the best box survives (mmcv behaviour)
    assert nms_rotated(b, s, 0.0).tolist() == [0]
    assert batched_nms_rotated(b, s, torch.tensor([0, 0, 1]), 0.0).tolist() == [0, 2]
    assert nms_rotated(b[:0], s[:0], 0.5).shape == (0,)
    # ties in score: input order (stable)
    assert nms_rotated(b, torch.ones(3), 0.9).tolist() == [0, 1, 2]
    # a NaN box neither suppresses nor is suppressed
    nan = torch.cat([b, torch.tensor([[float("nan"), 0, 2, 2, 0]], dtype=b.dtype)])
    assert nms_rotated(nan, torch.tensor([0.9, 0.8, 0.7, 0.95]), 0.3).tolist() == [3, 0, 2]


def test_multiclass_nms_rotated():
    boxes = torch.tensor([[10.0, 10, 8, 4, 0.1], [10.5, 10, 8, 4, 0.1], [100.0, 100, 8, 4, 0.1]])
    scores = torch.tensor([[0.9, 0.02, 0.08], [0.8, 0.7, 0.2], [0.04, 0.6, 0.36]])  # 2 classes + bg
    dets, labels, inds = multiclass_nms_rotated(boxes, scores, 0.05, 0.1, return_inds=True)
    assert labels.tolist() == [0, 1, 1]
    assert torch.allclose(dets[:, 5], torch.tensor([0.9, 0.7, 0.6]))
    assert inds.tolist() == [0, 3, 5]
    assert torch.equal(dets[:, :5], boxes[[0, 1, 2]])
    dets, labels = multiclass_nms_rotated(boxes, scores, 0.05, 0.1, max_num=2)
    assert len(dets) == 2
    dets, labels = multiclass_nms_rotated(boxes, scores, 0.95, 0.1)
    assert dets.shape == (0, 6) and labels.shape == (0,)
