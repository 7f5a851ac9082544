"""Rotated IoU against shapely: hypothesis properties and adversarial hand cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rsvision.ops import box_iou_rotated, rbbox_overlaps, rotated_intersection_area
from tests.ops._rotated_reference import CI, shapely_iou, shapely_iou_matrix

PI = math.pi

coord = st.floats(0, 1024, allow_nan=False, width=32)
size = st.floats(0.5, 400, allow_nan=False, width=32)
angle = st.floats(-4, 4, allow_nan=False, width=32)  # beyond +-pi on purpose


@st.composite
def box_pair(draw):
    """Two boxes, the second near the first so that most pairs overlap."""
    cx, cy = draw(coord), draw(coord)
    w, h, a = draw(size), draw(size), draw(angle)
    r = 0.5 * math.hypot(w, h)
    dx = draw(st.floats(-1.25, 1.25, width=32)) * r
    dy = draw(st.floats(-1.25, 1.25, width=32)) * r
    w2, h2, a2 = draw(size), draw(size), draw(angle)
    return [cx, cy, w, h, a], [cx + dx, cy + dy, w2, h2, a2]


@settings(max_examples=150, deadline=None, derandomize=CI)
@given(box_pair(), st.sampled_from(["iou", "iof"]))
def test_iou_matches_shapely_float64(pair, mode):
    b1, b2 = (torch.tensor([b], dtype=torch.float64) for b in pair)
    ref = shapely_iou(b1[0].tolist(), b2[0].tolist(), mode)
    assert abs(box_iou_rotated(b1, b2, mode).item() - ref) <= 1e-5
    assert abs(box_iou_rotated(b1, b2, mode, aligned=True).item() - ref) <= 1e-5


@settings(max_examples=150, deadline=None, derandomize=CI)
@given(box_pair())
def test_iou_matches_shapely_float32(pair):
    b1, b2 = (torch.tensor([b], dtype=torch.float32) for b in pair)
    # the reference sees exactly the float32 values
    ref = shapely_iou(b1[0].double().tolist(), b2[0].double().tolist())
    assert abs(box_iou_rotated(b1, b2).item() - ref) <= 1e-4


@settings(max_examples=60, deadline=None, derandomize=CI)
@given(box_pair())
def test_iou_symmetric_and_bounded(pair):
    b1, b2 = (torch.tensor([b], dtype=torch.float64) for b in pair)
    iou12 = box_iou_rotated(b1, b2).item()
    assert abs(iou12 - box_iou_rotated(b2, b1).item()) < 1e-9
    assert 0.0 <= iou12 <= 1.0 + 1e-9
    # invariant to pi rotations and to the (w, h, a) <-> (h, w, a + pi/2) rewrite
    b1b = b1.clone()
    b1b[0, 2], b1b[0, 3], b1b[0, 4] = b1[0, 3], b1[0, 2], b1[0, 4] + PI / 2
    assert abs(box_iou_rotated(b1b, b2).item() - iou12) < 1e-7
    b1b[0, 4] += PI
    assert abs(box_iou_rotated(b1b, b2).item() - iou12) < 1e-7


def _random_boxes(n, gen, spread=300.0):
    c = torch.rand(n, 2, generator=gen, dtype=torch.float64) * spread
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 80 + 1
    a = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * 2 * PI
    return torch.cat([c, wh, a], 1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_matrix_matches_shapely_loop(dtype, tol):
    gen = torch.Generator().manual_seed(3)
    b1, b2 = _random_boxes(40, gen), _random_boxes(30, gen)
    b1, b2 = b1.to(dtype), b2.to(dtype)
    for mode in ("iou", "iof"):
        ref = shapely_iou_matrix(b1.double().tolist(), b2.double().tolist(), mode)
        out = box_iou_rotated(b1, b2, mode)
        assert out.dtype == dtype and out.shape == (40, 30)
        assert np.abs(out.double().numpy() - ref).max() <= tol
        assert (ref > 0).sum() > 20  # the case has real overlaps


S = 40.0
HAND_CASES = [
    # (box1, box2, expected IoU)
    ([10, 10, 4, 2, 0.3], [10, 10, 4, 2, 0.3], 1.0),  # identical
    ([10, 10, 4, 2, -PI / 2], [10, 10, 4, 2, -PI / 2], 1.0),
    ([10, 10, 4, 2, 0.0], [10, 10, 2, 4, -PI / 2], 1.0),  # same rectangle, other form
    ([10, 10, 4, 2, 0.4], [10, 10, 4, 2, 0.4 - PI], 1.0),
    ([10, 10, 4, 2, PI / 2], [10, 10, 4, 2, -PI / 2], 1.0),
    ([0, 0, 10, 10, 0], [0, 0, 2, 2, 0.7], 0.04),  # contained
    ([0, 0, 2, 2, 0], [2, 0, 2, 2, 0], 0.0),  # touching edge
    ([0, 0, 2, 2, 0], [2, 2, 2, 2, 0], 0.0),  # touching corner
    ([0, 0, 2, 2, PI / 4], [2 * math.sqrt(2), 0, 2, 2, PI / 4], 0.0),  # rotated touching corner
    ([0, 0, 2, 2, 0], [1, 0, 2, 2, 0], 1 / 3),  # half overlap
    ([0, 0, 0.01, 0.01, 0.2], [0, 0, 0.01, 0.01, 0.2], 1.0),  # tiny
    ([0, 0, 0.0, 5, 0.2], [0, 0, 3, 5, 0.2], 0.0),  # zero width -> 0 (mmcv)
    ([500, 500, 800, 2, 0.0], [500, 500, 800, 2, 1e-4], None),  # huge aspect ratio, tiny angle
    ([500, 500, 800, 2, 0.0], [500, 500, 800, 2, PI / 2], None),  # crossing needles
    ([500, 500, 800, 2, 0.3], [500, 500.5, 800, 2, 0.3], None),  # parallel shift
    ([0, 0, 2, 2, 0], [0, 0, 2, 2, PI / 4], None),  # square vs diamond
    ([0, 0, 2, 2, 0], [1e4, 1e4, 2, 2, 0], 0.0),  # far apart
    ([S, S, 1000, 1000, 0.1], [S + 3, S, 1000, 1000, 0.1], None),  # large boxes
    # near-coincident edges: float noise makes vertices alternate sides of a clip line (regression:
    # a fixed n + 1 slot budget dropped a real corner and returned 1/3)
    ([0.0, 546.0, 292.09375, 1.0, 0.229], [0.0, 546.0, 292.09375, 1.0000000000000902, 0.22900000000000031], 1.0),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
@pytest.mark.parametrize("case", range(len(HAND_CASES)))
def test_hand_cases(case, dtype, tol):
    a, b, expected = HAND_CASES[case]
    b1, b2 = torch.tensor([a], dtype=dtype), torch.tensor([b], dtype=dtype)
    ref = shapely_iou(b1[0].double().tolist(), b2[0].double().tolist())
    if expected is not None:
        assert abs(ref - expected) < 1e-6 or expected == 0.0  # sanity of the case itself
        ref = expected
    out = box_iou_rotated(b1, b2)
    assert abs(out.item() - ref) <= tol
    assert abs(box_iou_rotated(b2, b1, aligned=True).item() - ref) <= tol
    if expected == 0.0 and case != 11:
        assert out.item() == pytest.approx(0.0, abs=1e-6)


def test_shapes_nan_and_empty():
    b = torch.tensor([[0.0, 0, 2, 2, 0], [float("nan"), 0, 2, 2, 0]])
    out = box_iou_rotated(b, b)
    assert out[0, 0] == pytest.approx(1.0)
    assert out[1].isnan().all() and out[:, 1].isnan().all()
    assert box_iou_rotated(b[:0], b).shape == (0, 2)
    assert box_iou_rotated(b[:0], b[:0], aligned=True).shape == (0,)
    assert rotated_intersection_area(b[:0], b[:0]).shape == (0,)
    with pytest.raises(ValueError):
        box_iou_rotated(b, b[:1], aligned=True)
    with pytest.raises(ValueError):
        box_iou_rotated(b, b, mode="giou")


def test_rbbox_overlaps_clamps_degenerate_sizes():
    small = torch.tensor([[5.0, 5, 0.0, 0.0, 0]])
    big = torch.tensor([[5.0, 5, 10, 10, 0]])
    assert box_iou_rotated(small, big).item() == 0.0  # reference-exact kernel
    assert rbbox_overlaps(small, big, mode="iof").item() == pytest.approx(1.0)  # clamped to 1e-3 box
    assert rbbox_overlaps(big, big, is_aligned=True).item() == pytest.approx(1.0)
    assert rbbox_overlaps(big[:0], big).shape == (0, 1)


def test_large_sparse_matrix_equals_dense_pairs():
    """The circumscribed-circle prefilter never drops an overlapping pair."""
    gen = torch.Generator().manual_seed(7)
    b1, b2 = _random_boxes(120, gen, spread=400), _random_boxes(100, gen, spread=400)
    out = box_iou_rotated(b1, b2)
    i, j = torch.meshgrid(torch.arange(120), torch.arange(100), indexing="ij")
    dense = box_iou_rotated(b1[i.flatten()], b2[j.flatten()], aligned=True).view(120, 100)
    assert torch.equal(out, dense)
    assert (out > 0).sum() > 100


def test_cuda_if_available():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    gen = torch.Generator().manual_seed(1)
    b1, b2 = _random_boxes(50, gen), _random_boxes(60, gen)
    cpu = box_iou_rotated(b1, b2)
    assert torch.allclose(box_iou_rotated(b1.cuda(), b2.cuda()).cpu(), cpu, atol=1e-9)
