"""Box conversions and coders: round trips, conventions, degenerate input, loop references."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rsvision.ops import (
    DeltaXYWHAOBBoxCoder,
    MidpointOffsetCoder,
    box_iou_rotated,
    hbb2obb,
    norm_angle,
    obb2hbb,
    obb2poly,
    obb2xyxy,
    poly2obb,
)
from tests.ops._rotated_reference import CI, corners, poly2obb_le90_row

PI = math.pi


@st.composite
def le90_boxes(draw, n=st.integers(1, 12)):
    k = draw(n)
    rows = []
    for _ in range(k):
        w = draw(st.floats(1, 500))
        h = draw(st.floats(1, 500))
        w, h = max(w, h), min(w, h)
        if w - h < 1e-6 * w:  # (near-)squares: the angle is only defined modulo pi/2
            w = h + 0.5
        a = draw(st.floats(-PI / 2, PI / 2, exclude_max=True))
        rows.append([draw(st.floats(0, 2000)), draw(st.floats(0, 2000)), w, h, a])
    return torch.tensor(rows, dtype=torch.float64)


@settings(max_examples=80, deadline=None, derandomize=CI)
@given(le90_boxes())
def test_poly_roundtrip_le90(boxes):
    back = poly2obb(obb2poly(boxes))
    assert torch.allclose(back[:, :4], boxes[:, :4], atol=1e-6)
    da = norm_angle(back[:, 4] - boxes[:, 4])
    assert da.abs().max() < 1e-7 or (da.abs() - PI).abs().max() < 1e-7


@settings(max_examples=60, deadline=None, derandomize=CI)
@given(le90_boxes(), st.sampled_from(["le90", "le135", "oc"]))
def test_conversions_preserve_the_rectangle(boxes, version):
    """Every convention describes the same rectangle (IoU 1 with the input)."""
    poly = obb2poly(boxes)
    other = poly2obb(poly, version)
    assert torch.allclose(box_iou_rotated(other, boxes, aligned=True), torch.ones(len(boxes), dtype=boxes.dtype), atol=1e-6)
    lo, hi = {"le90": (-PI / 2, PI / 2), "le135": (-PI / 4, 3 * PI / 4), "oc": (0.0, PI / 2)}[version]
    assert (other[:, 4] >= lo - 1e-12).all() and (other[:, 4] < hi).all()
    # the horizontal box contains every corner
    xyxy = obb2xyxy(boxes)
    assert (poly[:, 0::2] >= xyxy[:, :1] - 1e-6).all() and (poly[:, 0::2] <= xyxy[:, 2:3] + 1e-6).all()
    assert (poly[:, 1::2] >= xyxy[:, 1:2] - 1e-6).all() and (poly[:, 1::2] <= xyxy[:, 3:4] + 1e-6).all()


def test_loop_references():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(20, 5, generator=gen, dtype=torch.float64) * torch.tensor([900, 900, 300, 300, 6]) - torch.tensor(
        [0, 0, 0, 0, 3]
    )
    poly = obb2poly(boxes)
    for b, p in zip(boxes.tolist(), poly.tolist()):
        assert torch.allclose(torch.tensor(p, dtype=torch.float64), torch.tensor(corners(b), dtype=torch.float64).flatten())
    noisy = poly + torch.randn(poly.shape, generator=gen, dtype=torch.float64)
    fast = poly2obb(noisy)
    slow = torch.tensor([poly2obb_le90_row(p) for p in noisy.tolist()], dtype=torch.float64)
    assert torch.allclose(fast, slow, atol=1e-9)


def test_documented_conventions_and_degenerate_input():
    assert norm_angle(PI / 2) == pytest.approx(-PI / 2)  # floor-mod: high end -> low end
    assert float(norm_angle(torch.tensor(3 * PI / 4), "le135")) == pytest.approx(-PI / 4)
    assert norm_angle(5.0, "oc") == 5.0
    with pytest.raises(ValueError):
        obb2poly(torch.zeros(1, 5), "le45")
    square = torch.tensor([[0.0, 0, 4, 4, 0]], dtype=torch.float64)
    tall = torch.tensor([[0.0, 0, 2, 6]], dtype=torch.float64)
    assert hbb2obb(tall).tolist() == [[1.0, 3.0, 6.0, 2.0, -PI / 2]]
    assert hbb2obb(tall, "le135")[0, 4].item() == pytest.approx(PI / 2)
    assert obb2hbb(square)[0, 4].item() == 0.0  # w >= h branch wins for squares
    # degenerate polygons map deterministically (documented): only |p1p2| and |p2p3| count
    flat = torch.tensor([[0.0, 0, 4, 0, 4, 0, 0, 0]], dtype=torch.float64)
    assert poly2obb(flat)[0, 2:4].tolist() == [4.0, 0.0]
    zigzag = torch.tensor([[0.0, 0, 4, 0, 8, 0, 4, 0]], dtype=torch.float64)
    assert poly2obb(zigzag)[0, 2:4].tolist() == [4.0, 4.0]
    point = torch.full((1, 8), 3.0, dtype=torch.float64)
    assert poly2obb(point)[0].tolist() == [3.0, 3.0, 0.0, 0.0, 0.0]
    nan = torch.tensor([[float("nan"), 0, 2, 1, 0], [0, 0, 2, 1, 0]], dtype=torch.float64)
    assert obb2poly(nan)[0].isnan().any() and not obb2poly(nan)[1].isnan().any()
    assert obb2poly(torch.zeros(0, 5)).shape == (0, 8) and poly2obb(torch.zeros(0, 8)).shape == (0, 5)


@settings(max_examples=60, deadline=None, derandomize=CI)
@given(le90_boxes(), le90_boxes())
def test_delta_xywha_roundtrip(props, gts):
    n = min(len(props), len(gts))
    props, gts = props[:n], gts[:n]
    props[:, :2] = gts[:, :2] + (props[:, :2] - gts[:, :2]) * 0.01  # keep deltas inside the clamps
    props[:, 2:4] = gts[:, 2:4] * 1.2
    props[:, 4] = norm_angle(gts[:, 4] + 0.6 * (props[:, 4] / PI))  # within +-0.3 rad
    # every other proposal is the gt turned by ~90 degrees with w/h exchanged: the edge swap fires
    props[::2, 2:4] = props[::2, 2:4].flip(-1)
    props[::2, 4] = norm_angle(props[::2, 4] + PI / 2)
    coder = DeltaXYWHAOBBoxCoder()
    deltas = coder.encode_exact(props, gts)
    back = coder.decode(props, deltas)
    assert torch.allclose(box_iou_rotated(back, gts, aligned=True), torch.ones(n, dtype=gts.dtype), atol=1e-6)
    assert (back[:, 2] > back[:, 3]).all()  # edge swap: le90 form


@settings(max_examples=60, deadline=None, derandomize=CI)
@given(le90_boxes())
def test_midpoint_offset_roundtrip(gts):
    # away from the encoder's 0.1 px tie band (near-axis-aligned boxes do not round-trip, by design)
    poly = obb2poly(gts)
    ys = poly[:, 1::2].sort(1).values
    xs = poly[:, 0::2].sort(1).values
    gts = gts[(ys[:, 1] - ys[:, 0] > 0.2) & (xs[:, 3] - xs[:, 2] > 0.2)]
    if len(gts) == 0:
        return
    anchors = obb2xyxy(gts) + torch.tensor([3.0, -2.0, 5.0, 1.0], dtype=torch.float64)
    coder = MidpointOffsetCoder()
    back = coder.decode(anchors, coder.encode_exact(anchors, gts))
    assert torch.allclose(box_iou_rotated(back, gts, aligned=True), torch.ones(len(gts), dtype=gts.dtype), atol=1e-5)


def test_coder_shapes_and_float32_encode():
    coder = DeltaXYWHAOBBoxCoder()
    p = torch.tensor([[10.0, 10, 8, 4, 0.1]], dtype=torch.float64)
    assert coder.encode(p, p).dtype == torch.float32
    assert torch.allclose(coder.encode(p, p), torch.zeros(1, 5))
    # class-specific deltas (N, 5 * k) decode too
    assert coder.decode(p, torch.zeros(1, 10, dtype=torch.float64)).shape == (1, 10)
    with pytest.raises(ValueError):
        coder.encode(p, p[:, :4])
    with pytest.raises(ValueError):
        MidpointOffsetCoder().decode(torch.zeros(1, 4), torch.zeros(1, 5))


def test_coders_match_row_loops():
    from tests.ops._rotated_reference import midpoint_decode_row, xywha_decode_row, xywha_encode_row

    gen = torch.Generator().manual_seed(8)
    n = 64
    def boxes():
        wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 200 + 4
        wh = torch.stack([wh.amax(1), wh.amin(1)], 1)
        xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 1000
        a = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * PI
        return torch.cat([xy, wh, a], 1)

    props, gts = boxes(), boxes()
    coder = DeltaXYWHAOBBoxCoder()
    enc = coder.encode_exact(props, gts)
    ref = torch.tensor([xywha_encode_row(p, g) for p, g in zip(props.tolist(), gts.tolist())], dtype=torch.float64)
    assert torch.allclose(enc, ref, atol=1e-9)
    deltas = torch.randn(n, 5, generator=gen, dtype=torch.float64) * 3
    dec = coder.decode(props, deltas, max_shape=(700, 900))
    ref = torch.tensor([xywha_decode_row(p, d, (700, 900)) for p, d in zip(props.tolist(), deltas.tolist())],
                       dtype=torch.float64)
    assert torch.allclose(dec, ref, atol=1e-9)
    anchors = obb2xyxy(hbb2obb(torch.cat([props[:, :2] - 20, props[:, :2] + 30], 1)))
    deltas = torch.randn(n, 6, generator=gen, dtype=torch.float64) * 0.4
    dec = MidpointOffsetCoder().decode(anchors, deltas)
    ref = torch.tensor([midpoint_decode_row(a, d) for a, d in zip(anchors.tolist(), deltas.tolist())],
                       dtype=torch.float64)
    assert torch.allclose(dec, ref, atol=1e-9)
