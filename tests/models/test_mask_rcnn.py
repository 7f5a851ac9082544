"""The Mask R-CNN decoder on precomputed features, and the backbone + decoder model."""
import pytest
import torch

from rsvision.models import build_model, load_checkpoint
from rsvision.models.detectors.mask_rcnn import MaskRCNNDecoder, masks_to_boxes, mtp_instance_decoder

CH = [8, 16, 24, 32]
TINY = {"fpn_channels": 16, "representation_size": 32, "mask_channels": 16, "mask_layers": 2}


def _feats(b=2, size=64):
    return [torch.randn(b, c, size // s, size // s) for c, s in zip(CH, (4, 8, 16, 32))]


def _targets():
    m = torch.zeros(2, 64, 64, dtype=torch.uint8)
    m[0, 5:20, 5:30] = 1
    m[1, 30:60, 40:50] = 1
    return [{"masks": m, "labels": torch.tensor([0, 1])},
            {"masks": m[:0], "labels": torch.zeros(0, dtype=torch.long)}]  # an image without objects


def test_masks_to_boxes_pixel_extents():
    m = torch.zeros(3, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    m[1, 7, 11] = True
    assert masks_to_boxes(m).tolist() == [[3, 2, 9, 5], [11, 7, 12, 8], [0, 0, 0, 0]]


def test_decoder_losses_gradients_and_detections():
    torch.manual_seed(0)
    dec = MaskRCNNDecoder(CH, 2, **TINY).train()
    feats = [f.requires_grad_() for f in _feats()]
    losses = dec(feats, [(64, 64), (60, 64)], _targets())
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss_mask"].backward()
    for p in dec.mask_predictor.parameters():  # the mask loss reaches the mask predictor and the features
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert feats[0].grad is not None and feats[0].grad.abs().sum() > 0
    dets = dec.eval()(_feats(), [(64, 64), (60, 64)])
    assert len(dets) == 2
    for d, (h, w) in zip(dets, [(64, 64), (60, 64)]):
        k = len(d["boxes"])
        assert d["boxes"].shape == (k, 4) and d["scores"].shape == (k,) and d["masks"].shape == (k, h, w)
        assert d["masks"].dtype == torch.bool and (d["labels"] >= 0).all() and (d["labels"] < 2).all()


def test_decoder_labels_checked():
    dec = MaskRCNNDecoder(CH, 2, **TINY).train()
    t = _targets()
    t[0]["labels"] = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="labels must be in"):
        dec(_feats(), [(64, 64)] * 2, t)


def test_per_dataset_layers_swap_in():
    dec = mtp_instance_decoder(CH, **TINY)
    slots = dec.dataset_slots()
    assert set(slots) == {"box_predictor", "mask_logits"}
    mine = {k: dec.make_dataset_layer(k, getattr(*slots[k]), 5) for k in slots}
    assert mine["box_predictor"].cls_score.out_features == 6 and mine["mask_logits"].out_channels == 6
    for k, (parent, attr) in slots.items():
        setattr(parent, attr, mine[k])
    dec.set_num_classes(5)
    t = _targets()
    t[0]["mask_labels"] = torch.tensor([4, 3])  # multi-task samples: mask_labels win over labels
    losses = dec.train()(_feats(), [(64, 64)] * 2, t)
    sum(losses.values()).backward()
    assert mine["mask_logits"].weight.grad.abs().sum() > 0 and mine["box_predictor"].cls_score.weight.grad is not None
    other = dec.make_dataset_layer("box_predictor", None, 3)
    dec.box_predictor = other  # assignment goes to roi_heads: one home, no duplicate keys
    assert dec.roi_heads.box_predictor is other and "box_predictor.cls_score.weight" not in dec.state_dict()


def test_model_rsvision_and_timm_backbones(tmp_path):
    torch.manual_seed(0)
    cfg = {"type": "MaskRCNN", "backbone": "lsknet_t", "class_names": ["a", "b"], "decoder": TINY,
           "backbone_kwargs": {"embed_dims": CH, "depths": [1, 1, 1, 1]}}
    net = build_model(cfg).train()
    losses = net(torch.randn(2, 3, 64, 64), _targets())
    assert torch.isfinite(sum(losses.values()))
    out = net.predict(torch.randn(1, 3, 64, 64), image_sizes=[(50, 60)])
    assert out[0]["masks"].shape[1:] == (50, 60)
    torch.save(net.backbone.state_dict(), tmp_path / "encoder.pth")  # an encoder checkpoint loads into the model
    report = load_checkpoint(build_model(cfg), tmp_path / "encoder.pth")
    assert not [k for k in report.missing if k.startswith("backbone.")]
    timm_net = build_model({"type": "MaskRCNN", "backbone": "resnet18", "num_classes": 1, "decoder": TINY})
    assert timm_net.backbone_indices == [1, 2, 3, 4]
    assert len(timm_net.eval()(torch.randn(1, 3, 64, 64))) == 1
