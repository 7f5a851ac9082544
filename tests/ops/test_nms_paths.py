"""The block-sequential NMS (``_nms``) against the one-shot all-pairs path and truncation.

Both paths use the same IoU kernel, argument order and upper bound per pair, so the keep lists
must be identical on dense, sparse, per-class, NaN / inf and tied input, and ``max_num`` must
equal truncating the full result. Small block sizes are forced to exercise block growth,
shrinking and the ``max_num`` horizon.
"""
from __future__ import annotations

import math

import pytest
import torch

import rsvision.ops.nms as nms_mod
from rsvision.ops import batched_nms_rotated, multiclass_nms_rotated, nms_rotated
from rsvision.ops.nms import _nms, _nms_all_pairs


def _boxes(n, gen, spread, size=(5.0, 65.0), dtype=torch.float32):
    c = torch.rand(n, 2, generator=gen, dtype=torch.float64) * spread
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * (size[1] - size[0]) + size[0]
    a = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * math.pi
    return torch.cat([c, wh, a], 1).to(dtype)


def _clusters(n_obj, per_obj, gen, spread, dtype=torch.float32):
    base = _boxes(n_obj, gen, spread, (8.0, 60.0), torch.float64).repeat_interleave(per_obj, 0)
    sigma = torch.tensor([3.0, 3, 3, 3, 0.1], dtype=torch.float64)
    jit = torch.randn(base.shape, generator=gen, dtype=torch.float64) * sigma
    out = base + jit
    out[:, 2:4] = out[:, 2:4].abs() + 1
    return out.to(dtype)


@pytest.fixture(params=["default", "small_blocks"])
def blocks(request, monkeypatch):
    if request.param == "small_blocks":  # many blocks: growth, shrinking, horizon extension
        monkeypatch.setattr(nms_mod, "_BLOCK", 8)
        monkeypatch.setattr(nms_mod, "_WASTE", 64)
    return request.param


def _check(boxes, scores, thr, labels=None, limits=(1, 3, 17, 100)):
    full = _nms(boxes, scores, thr, labels)
    ref = _nms_all_pairs(boxes, scores, thr, labels)
    assert full.tolist() == ref.tolist()
    for k in limits:
        assert _nms(boxes, scores, thr, labels, k).tolist() == ref[:k].tolist()
    return full


@pytest.mark.parametrize("thr", [0.05, 0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_equals_all_pairs(blocks, thr, dtype):
    gen = torch.Generator().manual_seed(int(thr * 100))
    boxes = torch.cat([_boxes(300, gen, 128.0, dtype=dtype), _clusters(10, 30, gen, 200.0, dtype)])
    scores = torch.rand(len(boxes), generator=gen)
    keep = _check(boxes, scores, thr)
    assert 1 < len(keep) < len(boxes)


def test_sparse_equals_all_pairs(blocks):
    gen = torch.Generator().manual_seed(4)
    boxes = _clusters(1500, 2, gen, 6000.0)
    scores = torch.rand(len(boxes), generator=gen)
    _check(boxes, scores, 0.1, limits=(1, 500, 2999))
    labels = torch.randint(0, 5, (len(boxes),), generator=gen)
    _check(boxes, scores, 0.3, labels, limits=(10, 2000))


@pytest.mark.parametrize("thr", [0.1, 0.6])
def test_per_class_ties_nonfinite(blocks, thr):
    gen = torch.Generator().manual_seed(7)
    n = 600
    boxes = _boxes(n, gen, 150.0)
    boxes[::37, 0] = float("nan")
    boxes[5::53, 2] = float("inf")
    boxes[9::61, 4] = float("-inf")
    boxes[11::71, 2] = 0.0  # zero area: IoU 0, never suppresses
    scores = torch.randint(0, 6, (n,), generator=gen).float() / 5  # many ties
    labels = torch.randint(0, 4, (n,), generator=gen) * 1000 - 7  # arbitrary ids
    keep = _check(boxes, scores, thr, labels)
    bad = ~torch.isfinite(boxes).all(1)
    assert set(torch.nonzero(bad).squeeze(1).tolist()) <= set(keep.tolist())  # never suppressed
    assert batched_nms_rotated(boxes, scores, labels, thr).tolist() == keep.tolist()
    assert batched_nms_rotated(boxes, scores, labels, thr, max_num=9).tolist() == keep[:9].tolist()
    assert nms_rotated(boxes, scores, thr, max_num=9).tolist() == _nms_all_pairs(boxes, scores, thr, None)[:9].tolist()


def test_threshold_zero_and_empty():
    b = torch.tensor([[0.0, 0, 2, 2, 0], [1.0, 0, 2, 2, 0], [50.0, 50, 2, 2, 0]])
    s = torch.tensor([0.7, 0.8, 0.9])
    assert nms_rotated(b, s, 0.0, max_num=5).tolist() == [2]
    assert batched_nms_rotated(b, s, torch.tensor([0, 0, 1]), 0.0).tolist() == [2, 1]
    assert batched_nms_rotated(b, s, torch.tensor([0, 0, 1]), 0.0, max_num=1).tolist() == [2]
    assert nms_rotated(b[:0], s[:0], 0.5, max_num=3).shape == (0,)


def test_multiclass_max_num_is_truncation(blocks):
    """Oriented R-CNN's post-processing on dense, class-agnostic candidates."""
    gen = torch.Generator().manual_seed(9)
    n, c = 400, 6
    boxes = _boxes(n, gen, 256.0)
    scores = torch.softmax(torch.randn(n, c + 1, generator=gen) * 0.3, 1)
    full_d, full_l, full_i = multiclass_nms_rotated(boxes, scores, 0.05, 0.1, return_inds=True)
    assert len(full_d) > 60
    # the reference: all-pairs NMS on the same candidates
    cand = scores[:, :-1].reshape(-1) > 0.05
    inds = cand.nonzero().squeeze(1)
    ref = _nms_all_pairs(boxes[inds // c], scores[:, :-1].reshape(-1)[inds], 0.1, inds % c)
    assert full_i.tolist() == inds[ref].tolist()
    for k in (1, 25, 60, 10_000):
        d, lab, i = multiclass_nms_rotated(boxes, scores, 0.05, 0.1, max_num=k, return_inds=True)
        assert torch.equal(d, full_d[:k]) and torch.equal(lab, full_l[:k]) and torch.equal(i, full_i[:k])
    # per-class boxes (N, 5 * C)
    per = boxes.repeat(1, c) + torch.randn(n, 5 * c, generator=gen) * 0.5
    full = multiclass_nms_rotated(per, scores, 0.05, 0.3)[0]
    assert torch.equal(multiclass_nms_rotated(per, scores, 0.05, 0.3, max_num=40)[0], full[:40])


def test_far_apart_coordinates_and_search_fallback():
    """Huge coordinate ranges (many y strips x a wide x span) fall back to the plain search."""
    gen = torch.Generator().manual_seed(12)
    boxes = _clusters(200, 3, gen, 1.0, torch.float64)  # 200 clusters of 3, then spread over 5e7 px
    boxes[:, :2] += (torch.rand(200, 2, generator=gen, dtype=torch.float64) * 5e7).repeat_interleave(3, 0)
    scores = torch.rand(len(boxes), generator=gen)
    labels = torch.randint(0, 3, (len(boxes),), generator=gen)
    assert nms_mod._search_boxes(boxes, labels)[0] is boxes  # fallback taken
    assert len(_check(boxes, scores, 0.2, labels, limits=(5, 300))) < 500
    assert len(_check(boxes, scores, 0.2, None, limits=(5,))) < 400
