"""ViT-RVSA inside rsvision's decoders: UperNet segmentor, Oriented R-CNN, timm classifier.

Tiny widths (the golden file's 96-wide, 6-block layout) and small images; each test runs a forward
(and a backward where training matters) and loads the golden backbone weights through the
decoder's own wrapper, as ``--pretrained`` does.
"""
from __future__ import annotations

import timm
import torch

import rsvision.models  # noqa: F401  (registers vit_*_rvsa with timm)
from rsvision.models import build_model, load_checkpoint
from rsvision.models.segmentation import Segmentor
from tests.conftest import shared_path


def _golden_weights():
    g = torch.load(shared_path("golden", "mtp_vit_rvsa_golden.pt"), weights_only=True)
    return g["state_dict"]  # 224-size, float16: resized and converted on load


def test_upernet_segmentor_trains_and_loads_the_encoder():
    torch.manual_seed(0)
    seg = Segmentor("vit_t_rvsa", num_classes=3, channels=16, backbone_kwargs={"img_size": 64})
    assert seg.encoder.strides == [4, 8, 16, 32] and seg.encoder.channels == [96] * 4
    x = torch.randn(2, 3, 64, 64)
    logits = seg(x)
    assert logits.shape == (2, 3, 64, 64)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 64, 64))).backward()
    # the window regressors learn: their gradient flows through grid_sample's coordinates
    g = seg.encoder.body.model.blocks[0].attn.sampling_offsets[2].weight.grad
    assert g is not None and g.abs().sum() > 0
    report = seg.encoder.load_pretrained({"state_dict": _golden_weights()})
    assert not report.missing and len(report.loaded) == 129, report.summary()
    assert any("pos_embed" in a for a in report.adapted)  # 224 -> 64: resized


def test_oriented_rcnn_over_vit_rvsa():
    torch.manual_seed(0)
    det = build_model({"type": "OrientedRCNN", "backbone": "vit_t_rvsa", "backbone_kwargs": {"img_size": 64},
                       "num_classes": 2, "fpn_channels": 16, "fc_channels": 32,
                       "rpn": {"nms_pre": 50, "max_per_img": 20}, "rcnn": {"max_per_img": 10}})
    x = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[30.0, 30.0, 20.0, 10.0, 0.3]]), "labels": torch.tensor([1])}] * 2
    det.train()
    losses = det(x, targets)
    loss = sum(v for k, v in losses.items() if k.startswith("loss"))
    assert torch.isfinite(loss)
    loss.backward()
    det.eval()
    with torch.no_grad():
        out = det(x)
    assert len(out) == 2 and set(out[0]) >= {"boxes", "scores", "labels"}
    report = load_checkpoint(det, {"state_dict": {"backbone." + k: v for k, v in _golden_weights().items()}})
    assert len(report.loaded) == 129 and all(k.startswith(("neck.", "rpn_head.", "roi_head.")) for k in report.missing)


def test_classifier_head():
    torch.manual_seed(0)
    clf = timm.create_model("vit_t_rvsa", num_classes=5, img_size=64)
    x = torch.randn(2, 3, 64, 64)
    assert clf(x).shape == (2, 5)
    assert clf.forward_head(clf.forward_features(x), pre_logits=True).shape == (2, 96)
    report = load_checkpoint(clf, _golden_weights())
    assert report.missing == ["head.bias", "head.weight"], report.summary()  # backbone-only file: head reported
    clf.reset_classifier(7)
    assert clf(x).shape == (2, 7)
