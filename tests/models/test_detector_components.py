"""Oriented R-CNN components on hand-made cases: FPN, anchors, assignment, sampling, losses, API."""
from __future__ import annotations

import math

import pytest
import torch

import rsvision.models.detectors  # noqa: F401  (registers the OrientedRCNN builder)
from rsvision.errors import ConfigError
from rsvision.models import build_model
from rsvision.models.detectors import DEFAULT_CONFIG, OrientedRCNN, oriented_rcnn
from rsvision.models.heads import (
    AnchorGenerator,
    MaxIoUAssigner,
    OrientedRPNHead,
    OrientedRoIHead,
    RandomSampler,
    RotatedSingleRoIExtractor,
    rois_from_boxes,
)
from rsvision.models.heads.rpn import smooth_l1
from rsvision.models.necks import FPN



# -- FPN ------------------------------------------------------------------------------------
def test_fpn_shapes_odd_sizes_and_p6_maxpool():
    fpn = FPN([8, 16, 24, 32], out_channels=12, num_outs=5)
    xs = [torch.randn(2, c, s, s + 1) for c, s in zip([8, 16, 24, 32], [25, 13, 7, 4])]
    outs = fpn(xs)
    assert [tuple(o.shape) for o in outs] == [
        (2, 12, 25, 26), (2, 12, 13, 14), (2, 12, 7, 8), (2, 12, 4, 5), (2, 12, 2, 3)
    ]
    torch.testing.assert_close(outs[4], outs[3][:, :, ::2, ::2])
    assert set(dict(fpn.named_parameters())) >= {"lateral_convs.0.conv.weight", "fpn_convs.3.conv.bias"}


# -- anchors --------------------------------------------------------------------------------
def test_anchor_sizes_order_and_centre_offset_zero():
    gen = AnchorGenerator(strides=(4, 8), ratios=(0.5, 1.0, 2.0), scales=(8,))
    a0, a1 = gen.grid_anchors([(2, 3), (1, 2)])
    assert a0.shape == (2 * 3 * 3, 4) and a1.shape == (2 * 3, 4)
    r2 = math.sqrt(2.0)  # ratio 0.5: w = 32 * sqrt(2), h = 32 / sqrt(2), centred at the origin
    torch.testing.assert_close(a0[0], torch.tensor([-16 * r2, -8 * r2, 16 * r2, 8 * r2]), atol=1e-4, rtol=0)
    torch.testing.assert_close(a0[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    w, h = a0[2, 2] - a0[2, 0], a0[2, 3] - a0[2, 1]  # ratio 2 = h / w
    assert torch.isclose(h / w, torch.tensor(2.0)) and torch.isclose(w * h, torch.tensor(1024.0))
    # row (y * W + x) * A + a is centred at (x * stride, y * stride)
    row = (1 * 3 + 2) * 3 + 1
    centre = (a0[row, :2] + a0[row, 2:]) / 2
    torch.testing.assert_close(centre, torch.tensor([8.0, 4.0]))
    assert a1[3:6, 0].sub(a1[0:3, 0]).eq(8).all()


# -- assignment -----------------------------------------------------------------------------
def test_max_iou_assigner_thresholds_and_low_quality():
    # 2 gts x 5 candidates
    ov = torch.tensor([[0.80, 0.50, 0.20, 0.10, 0.00],
                       [0.75, 0.10, 0.25, 0.35, 0.00]])
    res = MaxIoUAssigner(0.7, 0.3, 0.3, match_low_quality=True).assign(ov, torch.tensor([4, 7]))
    # cand 0: max 0.8 -> gt0; cand 1: 0.5 in [0.3, 0.7) -> ignored; cand 2, 4: negative;
    # cand 3: below pos thr, but gt1's best (0.75 at cand 0)... cand 0 is gt1's best -> low quality
    # re-assigns cand 0 to gt1 (later gt wins), cand 3 stays ignored (0.35 in [0.3, 0.7)).
    assert res.gt_inds.tolist() == [2, -1, 0, -1, 0]
    assert res.labels.tolist() == [7, -1, -1, -1, -1]
    torch.testing.assert_close(res.max_overlaps, torch.tensor([0.8, 0.5, 0.25, 0.35, 0.0]))
    res = MaxIoUAssigner(0.7, 0.3, 0.3, match_low_quality=False).assign(ov)
    assert res.gt_inds.tolist() == [1, -1, 0, -1, 0]


def test_low_quality_match_gives_every_gt_its_best_candidates():
    ov = torch.tensor([[0.4, 0.4, 0.1], [0.0, 0.2, 0.1]])
    res = MaxIoUAssigner(0.7, 0.3, 0.3, match_low_quality=True).assign(ov)
    assert res.gt_inds.tolist() == [1, 1, 0]  # both ties of gt0; gt1's best 0.2 < min_pos_iou


def test_assigner_without_gt_or_boxes():
    res = MaxIoUAssigner(0.5, 0.5).assign(torch.zeros(0, 4))
    assert res.gt_inds.tolist() == [0, 0, 0, 0]
    res = MaxIoUAssigner(0.5, 0.5).assign(torch.zeros(3, 0))
    assert res.gt_inds.numel() == 0


# -- sampling -------------------------------------------------------------------------------
def test_random_sampler_fractions_and_gt_as_proposals():
    torch.manual_seed(0)
    gt_inds = torch.tensor([1] * 30 + [0] * 100 + [-1] * 10)
    from rsvision.models.heads.assign import AssignResult

    res = AssignResult(1, gt_inds.clone(), torch.rand(140), torch.where(gt_inds > 0, 3, -1))
    boxes = torch.rand(140, 5)
    gt = torch.tensor([[5.0, 5, 4, 2, 0]])
    s = RandomSampler(64, 0.25, add_gt_as_proposals=True).sample(res, boxes, gt, torch.tensor([3]))
    assert s.pos_inds.numel() == 16 and s.neg_inds.numel() == 48
    assert set(s.pos_inds.tolist()) <= set(range(0, 31))  # 1 prepended gt + 30 positives
    assert set(s.neg_inds.tolist()) <= set(range(31, 131))
    assert (s.pos_gt_labels == 3).all() and (s.pos_assigned_gt_inds == 0).all()
    torch.testing.assert_close(s.pos_gt_bboxes, gt.expand(16, 5))
    # few positives: all taken, the rest filled with negatives
    res = AssignResult(1, torch.tensor([1, 0, 0, 0, -1]), torch.rand(5), torch.full((5,), -1))
    s = RandomSampler(4, 0.5).sample(res, torch.rand(5, 4), torch.rand(1, 5))
    assert s.pos_inds.tolist() == [0] and sorted(s.neg_inds.tolist()) == [1, 2, 3]
    assert not s.pos_is_gt.any()


# -- losses ---------------------------------------------------------------------------------
def test_smooth_l1_hand_values():
    d = torch.tensor([0.0, 0.05, 1.0 / 9.0, 1.0])
    out = smooth_l1(d, torch.zeros(4), 1.0 / 9.0)
    expect = torch.tensor([0.0, 0.5 * 0.05**2 * 9, 0.5 / 9.0, 1.0 - 0.5 / 9.0])
    torch.testing.assert_close(out, expect)


def _rpn_with_one_anchor_level():
    head = OrientedRPNHead(4, 4, anchor_generator=AnchorGenerator(strides=(16,), ratios=(1.0,), scales=(2,)))
    head.sampler = RandomSampler(256, 0.5)
    return head


def test_rpn_loss_hand_case():
    """4x4 map, 32 px anchors at stride 16 on a 64x64 image: only the anchors fully inside count."""
    head = _rpn_with_one_anchor_level()
    cls = torch.zeros(1, 1, 4, 4)  # logit 0 everywhere -> BCE = log 2 per sampled anchor
    reg = torch.zeros(1, 6, 4, 4)
    gt = torch.tensor([[32.0, 32.0, 32.0, 32.0, 0.0]])  # exactly the anchor at cell (2, 2)
    t = head.get_targets_single(head.get_anchors(cls)[0], gt, (64, 64))
    # inside anchors: centres 16..32 (x2 = c + 16 < 64) -> cells 1..2 in x and y -> 4 anchors
    assert sorted(t["pos_inds"].tolist()) == [2 * 4 + 2]
    # cells (1, 2) and (2, 1) overlap it with IoU 1/3 (ignored, in [0.3, 0.7)); cell (1, 1): 1/7
    assert sorted(t["neg_inds"].tolist()) == [1 * 4 + 1]
    losses = head.loss([cls], [reg], [gt], [(64, 64)])
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(math.log(2.0)))
    # target of the exact anchor: dx = dy = dw = dh = 0; an axis-aligned box's top vertex is its
    # top-right corner, so da = db = 0.5 / std 0.5 = 1 -> SmoothL1(1, beta 1/9) = 1 - 1/18 each,
    # summed over the positive and divided by the 2 samples.
    torch.testing.assert_close(losses["loss_rpn_bbox"], torch.tensor(2 * (1 - 1 / 18) / 2))


def test_rpn_proposals_per_level_topk_and_horizontal_nms():
    head = OrientedRPNHead(4, 4)
    head.test_proposals.nms_pre = 5
    head.eval()
    feats = [torch.randn(1, 4, 16 // 2**i, 16 // 2**i) for i in range(5)]
    cls, reg = head(feats)
    props = head.get_proposals(cls, reg, [(64, 64)])
    assert len(props) == 1 and props[0].shape[1] == 6
    assert props[0].shape[0] <= 5 + 5 + 5 + 4 * 3 + 1 * 3  # per-level top 5 (smaller levels whole)
    assert torch.all(props[0][1:, 5] <= props[0][:-1, 5])


def test_roi_level_mapping_and_targets():
    ext = RotatedSingleRoIExtractor()
    rois = torch.tensor([[0, 50, 50, 111.9, 100, 0.3], [0, 50, 50, 112.1, 112.1, 0], [0, 9, 9, 500, 500, 1.0]])
    # sqrt(w*h): 105.8 -> P2, 112.1 -> P3, 500 -> P5 (clamped)
    assert ext.map_roi_levels(rois).tolist() == [0, 1, 3]
    head = OrientedRoIHead(in_channels=4, fc_channels=8, num_classes=3)
    head.sampler = RandomSampler(8, 0.25, add_gt_as_proposals=True)
    gt = torch.tensor([[40.0, 40.0, 30.0, 10.0, 0.2]])
    props = torch.tensor([[40.0, 40.0, 30.0, 10.0, 0.2, 0.9], [200.0, 200.0, 10.0, 5.0, 0.0, 0.8]])
    t = head.get_targets_single(props, gt, torch.tensor([2]))
    # gt added as a proposal + the identical proposal are positives (max 2 = 8 * 0.25), one negative
    assert t["num_pos"] == 2 and t["labels"].tolist() == [2, 2, 3]
    torch.testing.assert_close(t["bbox_targets"][:2], torch.zeros(2, 5), atol=1e-5, rtol=0)


def test_roi_loss_hand_case():
    head = OrientedRoIHead(in_channels=2, fc_channels=4, num_classes=2, roi_size=2)
    for p in head.parameters():
        torch.nn.init.zeros_(p)
    head.sampler = RandomSampler(4, 0.5, add_gt_as_proposals=True)
    feats = [torch.ones(1, 2, 16, 16) for _ in range(4)]
    gt = torch.tensor([[20.0, 20.0, 16.0, 8.0, 0.0]])
    props = torch.tensor([[40.0, 40.0, 10.0, 10.0, 0.0, 0.9]])
    losses = head.loss(feats, [props], [gt], [torch.tensor([1])])
    # zero weights: uniform softmax over 3 -> CE = log 3; zero deltas vs zero target (gt itself) -> 0
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(math.log(3.0)))
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(0.0))
    assert 0.0 <= losses["acc"].item() <= 1.0


def test_rois_from_boxes():
    rois = rois_from_boxes([torch.ones(2, 6), torch.zeros(0, 6), torch.full((1, 5), 2.0)])
    assert rois.shape == (3, 6) and rois[:, 0].tolist() == [0, 0, 2]


# -- detector API ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    # few proposals: an untrained head scores every class > 0.05, and dense rotated NMS is slow
    return oriented_rcnn(backbone="test_resnet", num_classes=3, fpn_channels=8, fc_channels=16, in_chans=5,
                         rpn={"max_per_img": 64})


def test_train_and_eval_api_any_bands(tiny):
    x = torch.randn(2, 5, 64, 96)
    targets = [
        {"boxes": torch.tensor([[30.0, 20.0, 24.0, 10.0, 0.4]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)},  # no objects
    ]
    tiny.train()
    losses = tiny(x, targets, image_sizes=[(64, 96), (60, 90)])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "acc"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert all(p.grad is not None for p in tiny.parameters() if p.requires_grad)
    tiny.eval()
    with torch.no_grad():
        out = tiny(x)
    assert len(out) == 2
    for d in out:
        assert d["boxes"].shape[1] == 5 and d["scores"].shape == d["labels"].shape == d["boxes"].shape[:1]
        assert torch.all(d["scores"][1:] <= d["scores"][:-1])
        assert d["labels"].dtype == torch.int64 and (d["labels"] < 3).all()
    with pytest.raises(ValueError):
        tiny.train()(x)


def test_builder_forms_and_defaults():
    assert DEFAULT_CONFIG["fpn_channels"] == 256 and DEFAULT_CONFIG["fc_channels"] == 1024
    m = build_model({"type": "OrientedRCNN", "backbone": "lsknet_t", "class_names": ["a", "b"],
                     "fpn_channels": 16, "fc_channels": 32, "in_chans": 4})
    assert isinstance(m, OrientedRCNN) and m.class_names == ["a", "b"] and m.num_classes == 2
    assert m.backbone.patch_embed1.proj.in_channels == 4
    assert "backbone.patch_embed1.proj.weight" in m.state_dict()  # official key names
    assert m.roi_head.bbox_head.fc_cls.out_features == 3 and m.neck.out_channels == 16
    assert m.rpn_head.test_proposals.iou_thr == 0.8 and m.roi_head.test_cfg.iou_thr == 0.1
    rebuilt = build_model(m.config)
    assert rebuilt.state_dict().keys() == m.state_dict().keys()
    with pytest.raises(ConfigError):
        build_model({"type": "OrientedRCNN", "backbone": "lsknet_t", "bogus": 1})
    with pytest.raises(ConfigError):
        build_model({"type": "OrientedRCNN", "backbone": "vit_tiny_patch16_224"})


def test_remap_state_dict_lightning_prefix(tiny):
    sd = {"model." + k: v for k, v in tiny.state_dict().items()}
    out, remapped = tiny.remap_state_dict(sd)
    assert set(out) == set(tiny.state_dict()) and len(remapped) == len(sd)


def test_bf16_autocast_train_and_eval(tiny):
    """Mixed precision: losses and outputs stay float32, rois are pooled in float32."""
    x = torch.randn(1, 5, 64, 64)
    targets = [{"boxes": torch.tensor([[30.0, 30.0, 20.0, 10.0, 0.3]]), "labels": torch.tensor([1])}]
    tiny.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = tiny(x, targets)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        sum(v for k, v in losses.items() if k.startswith("loss")).backward()
        tiny.eval()
        with torch.no_grad():
            out = tiny(x)
    assert out[0]["boxes"].dtype == torch.float32


def test_degenerate_targets_are_dropped_and_bad_labels_rejected(tiny):
    x = torch.randn(1, 5, 64, 64)
    tiny.train()
    bad = [{"boxes": torch.tensor([[30.0, 30.0, 20.0, 0.0, 0.3], [10.0, 10.0, float("nan"), 5.0, 0.0]]),
            "labels": torch.tensor([1, 2])}]
    losses = tiny(x, bad)
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError):
        tiny(x, [{"boxes": torch.tensor([[30.0, 30.0, 20.0, 10.0, 0.3]]), "labels": torch.tensor([3])}])


@pytest.mark.parametrize("backbone,kwargs", [
    ("haksnet_t", {}),
    ("lsknet_t", {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 2, 1], "mlp_ratios": [4, 4, 2, 2]}),
])
def test_config_from_state_dict_round_trip(backbone, kwargs):
    from rsvision.models.detectors import config_from_state_dict

    m = oriented_rcnn(backbone=backbone, num_classes=4, fpn_channels=16, fc_channels=32, in_chans=5,
                      backbone_kwargs=kwargs)
    sd = {"model." + k: v for k, v in m.state_dict().items()}  # Lightning layout
    cfg = config_from_state_dict(sd, {"CLASSES": ["a", "b", "c", "d"]})
    assert cfg["backbone"] == backbone and cfg["in_chans"] == 5 and cfg["class_names"] == ["a", "b", "c", "d"]
    assert (cfg["fpn_channels"], cfg["fc_channels"], cfg["num_classes"]) == (16, 32, 4)
    rebuilt = build_model(cfg)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
