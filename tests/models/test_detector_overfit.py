"""Oriented R-CNN learns: a tiny synthetic set (4 images, 3 classes, rotated objects) is fitted to
mAP@0.5 > 0.9 on itself. Runs the whole training path (anchor assignment, sampling, both losses,
proposals during training) with a timm ``features_only`` backbone at tiny widths.

The synthetic objects are small (vehicles ~25 x 12 px), so the anchors use scale 4 instead of the
published 8 (whose smallest anchor, 32 px, overlaps them below the RPN's 0.3 low-quality IoU).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rsvision.data.synthetic.objects import CLASSES, make_image
from rsvision.models.detectors import oriented_rcnn
from rsvision.models.heads import RandomSampler
from rsvision.ops import rbbox_overlaps


def _voc07_ap(dets, gts, label, iou_thr=0.5):
    """11-point VOC07 AP of one class; dets/gts per image."""
    npos = sum(int((g["labels"] == label).sum()) for g in gts)
    cand = []
    for i, d in enumerate(dets):
        m = d["labels"] == label
        cand += [(float(s), i, b) for s, b in zip(d["scores"][m], d["boxes"][m])]
    cand.sort(key=lambda c: -c[0])
    used, tp = set(), []
    for _, i, b in cand:
        g = gts[i]["boxes"][gts[i]["labels"] == label]
        if len(g) == 0:
            tp.append(0)
            continue
        iou = rbbox_overlaps(b[None], g)[0]
        j = int(iou.argmax())
        hit = bool(iou[j] >= iou_thr) and (i, j) not in used
        used.add((i, j)) if hit else None
        tp.append(int(hit))
    if not npos:
        return None
    ctp = np.cumsum(tp) if tp else np.zeros(0)
    rec = ctp / npos
    prec = ctp / np.arange(1, len(tp) + 1) if tp else np.zeros(0)
    return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in np.arange(0, 1.1, 0.1)]))


@pytest.fixture
def one_thread():
    # Two threads on an oversubscribed 2-core runner are several times slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_overfit_tiny_synthetic_set(one_thread):
    torch.manual_seed(0)
    images, targets = [], []
    for seed in range(4):
        img, objs = make_image(160, 160, seed, num_objects=(3, 4))
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0)
        targets.append({
            "boxes": torch.tensor([o.obb() for o in objs], dtype=torch.float32),
            "labels": torch.tensor([CLASSES.index(o.name) for o in objs]),
        })
    assert {int(v) for t in targets for v in t["labels"]} == {0, 1, 2}
    x = torch.stack(images)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)

    model = oriented_rcnn(
        backbone="test_resnet", class_names=list(CLASSES), fpn_channels=32, fc_channels=64,
        anchor_scales=[4], rpn={"nms_pre": 1000, "max_per_img": 300},
    )
    model.roi_head.sampler = RandomSampler(64, 0.25, add_gt_as_proposals=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[100], gamma=0.1)
    model.train()
    for _ in range(120):
        losses = model(x, targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        opt.step()
        sched.step()
    assert losses["acc"] > 0.9, losses

    model.eval()
    with torch.no_grad():
        dets = model(x)
    aps = [_voc07_ap(dets, targets, c) for c in range(len(CLASSES))]
    print(f"overfit: mAP {np.mean(aps):.3f}, AP {dict(zip(CLASSES, aps))}, final losses "
          f"{ {k: round(float(v.detach()), 4) for k, v in losses.items()} }")
    assert np.mean(aps) > 0.9, aps
