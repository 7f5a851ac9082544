"""Every entry of ../shared/golden/rotated_ops_golden.pt (MMRotate 0.3.4 / mmcv 1.7.2 outputs)."""
from __future__ import annotations

import pytest
import torch

from rsvision.ops import (
    DeltaXYWHAOBBoxCoder,
    MidpointOffsetCoder,
    RoIAlignRotated,
    box_iou_rotated,
    hbb2obb,
    nms_rotated,
    norm_angle,
    obb2hbb,
    obb2poly,
    obb2xyxy,
    poly2obb,
    roi_align_rotated,
)
from tests.conftest import shared_path

VERSIONS = ("le90", "le135", "oc")


@pytest.fixture(scope="module")
def golden():
    return torch.load(shared_path("golden", "rotated_ops_golden.pt"), weights_only=True)


def close(actual, expected, atol):
    expected = expected.to(actual.dtype)
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert actual.shape == expected.shape
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


@pytest.mark.parametrize("version", VERSIONS)
def test_norm_angle(golden, version):
    g = golden["norm_angle"]
    close(norm_angle(g["angle"], version), g[version], 1e-5)
    # the range ends exactly as the reference (floor-mod): compare bitwise
    assert torch.equal(norm_angle(g["angle"], version), g[version])


@pytest.mark.parametrize("version", VERSIONS)
def test_obb2poly(golden, version):
    g = golden[f"obb2poly_{version}"]
    close(obb2poly(g["obb"], version), g["poly"], 1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_poly2obb(golden, version):
    g = golden[f"poly2obb_{version}"]
    out = poly2obb(g["poly"], version)
    close(out, g["obb"], 1e-5)
    # range-end and square rows are reproduced too (not just modulo pi/2)
    for mask in (g["angle_at_range_end"], g["edge1_equals_edge2"]):
        close(out[mask], g["obb"][mask], 1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_hbb_conversions(golden, version):
    h = golden["hbb"]
    close(obb2xyxy(h[f"obb2xyxy_{version}"]["obb"], version), h[f"obb2xyxy_{version}"]["xyxy"], 1e-5)
    close(obb2hbb(h[f"obb2hbb_{version}"]["obb"], version), h[f"obb2hbb_{version}"]["hbb"], 1e-5)
    close(hbb2obb(h[f"hbb2obb_{version}"]["xyxy"], version), h[f"hbb2obb_{version}"]["obb"], 1e-5)


def test_delta_xywha_coder(golden):
    g = golden["delta_xywha_obb_coder"]
    kw = g["kwargs"]
    coder = DeltaXYWHAOBBoxCoder(**kw)
    enc = coder.encode(g["proposals"], g["gt"])
    assert enc.dtype == torch.float32  # the reference casts to float32
    close(enc, g["encoded"], 1e-4)
    close(coder.encode_exact(g["proposals"], g["gt"]), g["encoded_f64_nocast"], 1e-5)
    max_shape = tuple(g["decode_kwargs"]["max_shape"])
    clip = g["decode_kwargs"]["wh_ratio_clip"]
    close(coder.decode(g["proposals"], g["deltas"], max_shape, clip), g["decoded"], 1e-5)
    close(coder.decode(g["proposals"], g["deltas"], None, clip), g["decoded_no_max_shape"], 1e-5)
    close(
        coder.decode(g["proposals"], g["encoded_f64_nocast"], max_shape, clip), g["decoded_of_encoded_f64"], 1e-5
    )
    close(g["decoded_of_encoded_f64"], g["gt"], 1e-5)


def test_midpoint_offset_coder(golden):
    g = golden["midpoint_offset_coder"]
    coder = MidpointOffsetCoder(**g["kwargs"])
    enc = coder.encode(g["anchors"], g["gt"])
    assert enc.dtype == torch.float32
    close(enc, g["encoded"], 1e-4)
    close(coder.encode_exact(g["anchors"], g["gt"]), g["encoded_f64_nocast"], 1e-5)
    max_shape = tuple(g["decode_kwargs"]["max_shape"])
    clip = g["decode_kwargs"]["wh_ratio_clip"]
    dec = coder.decode(g["anchors"], g["deltas"], max_shape, clip)
    close(dec, g["decoded"], 1e-5)
    close(coder.decode(g["anchors"], g["deltas"], None, clip), g["decoded"], 1e-5)  # max_shape ignored
    close(coder.decode(g["anchors"], g["encoded_f64_nocast"], None, clip), g["decoded_of_encoded_f64"], 1e-5)
    # square rows: angle only defined modulo pi/2 -> also equal as polygons (already equal above)
    sq = g["decoded_is_square"]
    assert sq.any()
    poly_a = obb2poly(dec[sq]).view(-1, 4, 2)
    poly_b = obb2poly(g["decoded"][sq]).view(-1, 4, 2)
    assert torch.cdist(poly_a, poly_b).amin(-1).max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "name,clockwise,sr", [("cw_sr2", True, 2), ("ccw_sr2", False, 2), ("cw_sr0", True, 0)]
)
def test_roi_align_rotated(golden, name, clockwise, sr, dtype):
    g = golden["roi_align_rotated"]
    st = g["settings"]
    feats = g["features"].to(dtype).clone().requires_grad_(True)
    out = roi_align_rotated(feats, g["rois"], tuple(st["output_size"]), st["spatial_scale"], sr, st["aligned"], clockwise)
    close(out, g[f"out_{name}"], 1e-4)
    out.backward(g["grad_output"].to(dtype))
    close(feats.grad, g[f"grad_input_{name}"], 1e-4)
    module = RoIAlignRotated(tuple(st["output_size"]), st["spatial_scale"], sr, st["aligned"], clockwise)
    close(module(feats.detach(), g["rois"]), g[f"out_{name}"], 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_rotated(golden, dtype):
    g = golden["box_iou_rotated"]
    b1, b2 = g["boxes1"].to(dtype), g["boxes2"].to(dtype)
    for mode in ("iou", "iof"):
        close(box_iou_rotated(b1, b2, mode), g[mode], 1e-4)
        close(box_iou_rotated(b1, b2, mode, aligned=True), g[f"{mode}_aligned"], 1e-4)
        # clockwise=False reads the angles with the opposite sign (mmcv flips them)
        flip = b1.new_tensor([1, 1, 1, 1, -1])
        close(box_iou_rotated(b1 * flip, b2 * flip, mode, clockwise=False), g[mode], 1e-4)
    if dtype == torch.float64:
        close(box_iou_rotated(b1, b2, aligned=True), g["iou_aligned_shapely_f64"], 1e-5)


@pytest.mark.parametrize("thr", ["0.1", "0.5"])
def test_nms_rotated(golden, thr):
    g = golden["nms_rotated"]
    keep = nms_rotated(g["boxes"], g["scores"], float(thr))
    assert keep.dtype == torch.int64
    assert torch.equal(keep, g[f"keep_thr_{thr}"])
    assert torch.equal(nms_rotated(g["boxes"].double(), g["scores"], float(thr)), g[f"keep_thr_{thr}"])
