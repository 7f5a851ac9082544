"""Oriented R-CNN against MMRotate 0.3.4, stage by stage (``../shared/golden/oriented_rcnn_golden.pt``).

Each stage runs on the golden inputs of that stage, with the tolerances of the golden README
("How to compare, and tolerances"); the end-to-end test runs image -> detections.
"""
from __future__ import annotations

import pytest
import torch

import rsvision.models.detectors  # noqa: F401  (registers the OrientedRCNN builder)
from rsvision.models import build_model, load_checkpoint
from rsvision.ops import obb2poly
from tests.conftest import shared_path



@pytest.fixture(scope="module")
def golden():
    return torch.load(shared_path("golden", "oriented_rcnn_golden.pt"), weights_only=True)


@pytest.fixture(scope="module")
def model(golden):
    m = build_model(golden["config"])
    report = load_checkpoint(m, shared_path("golden", "oriented_rcnn_golden.pt"))
    assert not report.missing and not report.unexpected, report.summary()
    return m.eval()


@pytest.fixture(scope="module")
def fpn_outs(golden, model):
    with torch.no_grad():
        return model.extract_feat(golden["input"]["img"])


@pytest.fixture(scope="module")
def image_size(golden):
    return [tuple(golden["input"]["img_meta"]["img_shape"][:2])]


def _poly_dist(a, b):
    """L-inf distance between two polygons' vertex sets, over the four cyclic start vertices."""
    pa, pb = obb2poly(a[None].double())[0].view(4, 2), obb2poly(b[None].double())[0].view(4, 2)
    return min((pa - pb.roll(k, 0)).abs().max().item() for k in range(4))


def _match_proposals(ref, got, tol_xywh, tol_a, tol_s):
    """Compare (K, 6) proposal sets: nearest (cx, cy, w, h, a) within 0.5 px, one to one."""
    assert got.shape == ref.shape
    d = torch.cdist(ref[:, :5].double(), got[:, :5].double(), p=float("inf"))
    dist, j = d.min(1)
    for r in torch.nonzero(dist > 0.5).flatten().tolist():
        # a near-square proposal may come back as (h, w, a +- pi/2): the same rectangle
        pd = [_poly_dist(ref[r, :5], got[k, :5]) for k in range(len(got))]
        k = min(range(len(pd)), key=pd.__getitem__)
        assert pd[k] < tol_xywh, f"golden proposal {r} has no match"
        assert abs(ref[r, 5] - got[k, 5]) < tol_s
        j[r], dist[r] = k, 0.0
    assert j.unique().numel() == len(j), "two golden proposals matched the same one"
    ok = dist <= 0.5
    diff = (ref[ok] - got[j[ok]]).abs().max(0).values
    assert diff[:4].max() < tol_xywh, diff
    assert diff[4] < tol_a, diff
    assert diff[5] < tol_s, diff
    return diff


def _compare_detections(golden_dets, dets, tol_xywh, tol_a, tol_s):
    counts = [int((dets["labels"] == c).sum()) for c in range(len(golden_dets))]
    assert counts == [len(d) for d in golden_dets]
    worst = torch.zeros(6, dtype=torch.float64)
    for c, ref in enumerate(golden_dets):
        if not len(ref):
            continue
        m = dets["labels"] == c
        got = torch.cat([dets["boxes"][m], dets["scores"][m, None]], 1)
        got = got[got[:, 5].argsort(descending=True)]
        ref = ref[ref[:, 5].argsort(descending=True)]
        worst = torch.maximum(worst, (got - ref).abs().max(0).values.double())
    assert worst[:4].max() < tol_xywh, worst
    assert worst[4] < tol_a, worst
    assert worst[5] < tol_s, worst
    return worst


def test_build_from_stored_config(golden, model):
    assert model.class_names == golden["meta"]["CLASSES"]
    assert model.angle_version == "le90"
    assert model.roi_head.bbox_head.fc_cls.out_features == 16
    assert model.roi_head.bbox_head.fc_reg.out_features == 5
    assert model.neck.out_channels == 32


def test_fpn(golden, fpn_outs):
    assert len(fpn_outs) == 5
    for o, ref in zip(fpn_outs, golden["fpn_outs"]):
        assert o.shape == ref.shape
        torch.testing.assert_close(o, ref, atol=1e-4, rtol=0)


def test_rpn_raw_and_anchors(golden, model):
    with torch.no_grad():
        cls, reg = model.rpn_head(golden["fpn_outs"])
    for o, ref in zip(cls, golden["rpn"]["cls_scores"]):
        torch.testing.assert_close(o, ref, atol=1e-4, rtol=0)
    for o, ref in zip(reg, golden["rpn"]["bbox_preds"]):
        torch.testing.assert_close(o, ref, atol=1e-4, rtol=0)
    anchors = model.rpn_head.get_anchors(golden["rpn"]["cls_scores"])
    for a, ref in zip(anchors, golden["rpn"]["anchors"]):
        torch.testing.assert_close(a, ref, atol=1e-4, rtol=0)


def test_proposals_from_golden_rpn_outputs(golden, model, image_size):
    rpn = golden["rpn"]
    props = model.rpn_head.get_proposals(rpn["cls_scores"], rpn["bbox_preds"], image_size)
    assert len(props) == 1
    _match_proposals(rpn["proposals"], props[0], 2e-3, 1e-4, 1e-5)
    # descending score order, as MMRotate returns them
    assert torch.all(props[0][1:, 5] <= props[0][:-1, 5])


def test_roi_levels_and_features(golden, model):
    roi = golden["roi"]
    ext = model.roi_head.bbox_roi_extractor
    assert torch.equal(ext.map_roi_levels(roi["rois"]), roi["levels"])
    idx = roi["roi_feats_index"]
    with torch.no_grad():
        feats = ext(golden["fpn_outs"], roi["rois"][idx])
    torch.testing.assert_close(feats, roi["roi_feats"], atol=2e-4, rtol=0)


def test_roi_head_outputs(golden, model):
    roi = golden["roi"]
    with torch.no_grad():
        cls_score, bbox_pred = model.roi_head.forward_rois(golden["fpn_outs"], roi["rois"])
    torch.testing.assert_close(cls_score, roi["cls_score"], atol=1e-3, rtol=0)
    torch.testing.assert_close(bbox_pred, roi["bbox_pred"], atol=1e-4, rtol=0)
    torch.testing.assert_close(cls_score.softmax(-1), roi["cls_score"].softmax(-1), atol=2e-5, rtol=0)


def test_decode_and_detections_from_golden_roi_outputs(golden, model, image_size):
    roi = golden["roi"]
    dec = model.roi_head.bbox_coder.decode(roi["rois"][:, 1:], roi["bbox_pred"], max_shape=image_size[0])
    torch.testing.assert_close(dec, roi["decoded_bboxes"], atol=1e-3, rtol=0)
    dets = model.roi_head.get_detections(roi["rois"], roi["cls_score"], roi["bbox_pred"], image_size)
    assert len(dets) == 1
    _compare_detections(golden["detections"], dets[0], 1e-3, 1e-4, 1e-4)


def test_end_to_end(golden, model, fpn_outs, image_size):
    img = golden["input"]["img"]
    with torch.no_grad():
        cls, reg = model.rpn_head(fpn_outs)
        props = model.rpn_head.get_proposals(cls, reg, image_size)
        dets = model(img, image_sizes=image_size)
    # The reference's own float noise on proposals reaches ~1e-2 px (README sensitivity runs).
    _match_proposals(golden["rpn"]["proposals"], props[0], 2e-2, 2e-4, 1e-3)
    assert len(dets) == 1 and set(dets[0]) == {"boxes", "scores", "labels"}
    _compare_detections(golden["detections"], dets[0], 2e-2, 2e-4, 1e-3)


def test_rebuild_from_checkpoint_alone(golden, model, fpn_outs):
    """An MMRotate ``{"meta", "state_dict"}`` checkpoint is enough to rebuild the detector."""
    from rsvision.models.detectors import config_from_state_dict

    cfg = config_from_state_dict(golden["state_dict"], golden["meta"])
    assert cfg["backbone"] == "lsknet_t" and cfg["fpn_channels"] == 32 and cfg["fc_channels"] == 64
    rebuilt = build_model(cfg)
    report = load_checkpoint(rebuilt, {"meta": golden["meta"], "state_dict": golden["state_dict"]})
    assert report.ok, report.summary()
    assert rebuilt.class_names == golden["meta"]["CLASSES"]
    with torch.no_grad():
        outs = rebuilt.eval().extract_feat(golden["input"]["img"])
    for a, b in zip(outs, fpn_outs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_mmrotate_keys_load_into_timm_wrapped_backbone(golden, model, fpn_outs):
    """``remap_state_dict`` maps ``backbone.*`` onto a timm ``features_only`` wrapper (``model.`` prefix)."""
    import timm

    from rsvision.models.detectors import OrientedRCNN

    wrapped = timm.create_model("lsknet_t", features_only=True)
    det = OrientedRCNN(wrapped, model.neck, model.rpn_head, model.roi_head, model.class_names)
    report = load_checkpoint(det, shared_path("golden", "oriented_rcnn_golden.pt"))
    assert report.ok, report.summary()
    assert report.remapped["backbone.patch_embed1.proj.weight"] == "backbone.model.patch_embed1.proj.weight"
    with torch.no_grad():
        outs = det.eval().extract_feat(golden["input"]["img"])
    for a, b in zip(outs, fpn_outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_end_to_end_fast_path(golden, model, image_size):
    """``optimize_for_inference`` (the default of every predict / eval command) gives the golden
    detections within the end-to-end tolerances."""
    from rsvision.models.fast import optimize_for_inference

    fast = optimize_for_inference(model)
    with torch.no_grad():
        dets = fast(golden["input"]["img"], image_sizes=image_size)
    _compare_detections(golden["detections"], dets[0], 2e-2, 2e-4, 1e-3)
