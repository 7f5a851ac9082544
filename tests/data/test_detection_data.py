"""Rotated-detection data: synthetic generator, augmentations (box/pixel agreement), dataset, collate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from rsvision.data import det_transforms as T
from rsvision.data.detection import collate_detection, pad_to_multiple
from rsvision.data.synthetic.objects import CLASSES, RECT_CLASSES, make_image, objects_to_polys
from rsvision.ops import obb2poly


def _mask_of(boxes: torch.Tensor, H: int, W: int) -> np.ndarray:
    img = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(img)
    for p in obb2poly(boxes.double(), "le90").numpy():
        d.polygon([(p[2 * k], p[2 * k + 1]) for k in range(4)], fill=255)
    return np.asarray(img) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _sample(H=96, W=128):
    boxes = torch.tensor([[40.0, 30.0, 50.0, 14.0, 0.4], [90.0, 64.0, 30.0, 20.0, -1.2]])
    img = torch.from_numpy(_mask_of(boxes, H, W).astype(np.float32) * 255)[None].repeat(3, 1, 1)
    return {"image": img, "boxes": boxes, "labels": torch.tensor([0, 1]), "difficult": torch.tensor([0, 0])}


@pytest.mark.parametrize("fn", [T.hflip, T.vflip, T.dflip, lambda s: T.rotate(s, 90.0), lambda s: T.rotate(s, 37.0),
                                lambda s: T.rotate(s, -123.0), lambda s: T.rotate(s, 180.0)])
def test_transforms_move_boxes_with_pixels(fn):
    s = fn(_sample(96, 96) if fn.__name__ == "<lambda>" else _sample())
    H, W = s["image"].shape[-2:]
    assert s["boxes"].shape == (2, 5)
    a = s["boxes"][:, 4]
    assert bool(((a >= -math.pi / 2) & (a < math.pi / 2)).all())  # le90 range kept
    assert bool((s["boxes"][:, 2] >= s["boxes"][:, 3]).all())
    pix = s["image"][0].numpy() > 127
    assert _iou(pix, _mask_of(s["boxes"], H, W)) > 0.85


def test_rotation_drops_boxes_leaving_the_image_and_rect_classes_get_right_angles():
    s = _sample(96, 96)
    s["boxes"][0, :2] = torch.tensor([3.0, 3.0])  # a corner box leaves the canvas when turned 45 degrees
    out = T.rotate(s, 45.0)
    assert len(out["boxes"]) == len(out["labels"]) == len(out["difficult"]) == 1
    rot = T.RandomRotate(p=1.0, rect_labels=[1])
    torch.manual_seed(0)
    for _ in range(10):
        o = rot(_sample(96, 96))
        # both boxes' angles change by a multiple of 90 degrees
        d = (o["boxes"][:, 4] - _sample(96, 96)["boxes"][:, 4]) / (math.pi / 2)
        assert torch.allclose(d, d.round(), atol=1e-5)


def test_random_flip_probabilities():
    torch.manual_seed(0)
    f = T.RandomFlip()
    s = _sample()
    n_same = sum(torch.equal(f(s)["image"], s["image"]) for _ in range(400))
    assert 60 < n_same < 140  # 25 % unflipped


def test_normalize_and_band_mismatch():
    s = _sample()
    out = T.Normalize([10, 20, 30], [2, 2, 2])(s)
    assert torch.allclose(out["image"][1, 0, 0], torch.tensor((0 - 20) / 2.0))
    from rsvision.errors import BandMismatchError

    with pytest.raises(BandMismatchError):
        T.Normalize([0] * 4, [1] * 4)(s)


def test_resize_scales_boxes():
    s = T.Resize(48)(_sample())
    assert s["image"].shape[-2:] == (36, 48)
    assert torch.allclose(s["boxes"][0, :4], torch.tensor([15.0, 11.25, 18.75, 5.25]))


def test_synthetic_labels_cover_the_drawn_objects():
    img, objs = make_image(256, 256, seed=3, num_objects=10)
    assert 5 <= len(objs) <= 10 and {o.name for o in objs} <= set(CLASSES)
    polys = objects_to_polys(objs)
    assert polys.shape == (len(objs), 8)
    assert polys.min() >= 0 and polys.max() <= 256
    for o in objs:
        if o.name in RECT_CLASSES:
            assert o.angle == 0.0 and o.w == o.h
        assert o.w >= o.h
    # objects differ from the background: each box's pixels deviate from the image median
    med = np.median(img.reshape(-1, 3), 0)
    boxes = torch.tensor([o.obb() for o in objs])
    for i in range(len(objs)):
        m = _mask_of(boxes[i : i + 1], 256, 256)
        assert np.abs(img[m].astype(float) - med).mean() > 25
    img2, objs2 = make_image(256, 256, seed=3, num_objects=10)
    assert np.array_equal(img, img2) and objs == objs2


def test_collate_pads_to_32():
    a = {"image": torch.ones(3, 50, 70), "boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long), "name": "a"}
    b = {"image": torch.ones(3, 64, 33), "boxes": torch.ones(2, 5), "labels": torch.ones(2, dtype=torch.long), "name": "b"}
    images, targets, metas = collate_detection([a, b])
    assert images.shape == (2, 3, 64, 96)
    assert images[0, :, 50:].abs().sum() == 0 and images[1, :, :, 33:].abs().sum() == 0
    assert targets[1]["boxes"].shape == (2, 5) and targets[0]["labels"].dtype == torch.int64
    assert targets[0]["image_size"] == (50, 70)
    assert metas[0]["shape"] == (50, 70) and metas[1]["name"] == "b"
    assert pad_to_multiple([torch.zeros(1, 32, 32)]).shape == (1, 1, 32, 32)


def test_dataset_over_dota_folder_and_empty_flag(tmp_path):
    from rsvision.data.detection import DetectionDataset, find_ann_dir
    from rsvision.data.dota.labels import write_label_txt
    from rsvision.data.synthetic.objects import make_dota_dataset

    root = make_dota_dataset(tmp_path / "d", 3, 96, seed=0, num_objects=3)
    names = sorted(p.stem for p in (root / "images").glob("*.png"))
    write_label_txt(root / "labelTxt" / f"{names[0]}.txt", [], [])  # an image without objects
    assert find_ann_dir(root) == root / "labelTxt"
    ds = DetectionDataset(root / "images", root / "labelTxt", list(CLASSES))
    assert len(ds) == 2
    assert len(DetectionDataset(root / "images", root / "labelTxt", list(CLASSES), keep_empty=True)) == 3
    s = ds[0]
    assert s["image"].shape == (3, 96, 96) and s["image"].dtype == torch.float32
    assert s["boxes"].shape[1] == 5 and len(s["boxes"]) == len(s["labels"]) == len(s["difficult"])
    # boxes read back from labelTxt equal the generated objects (le90, via poly2obb)
    from rsvision.data.synthetic.objects import make_image

    seed = int(np.random.SeedSequence([0, 1]).generate_state(1)[0])
    _, objs = make_image(96, 96, seed, 3)
    ref = torch.tensor([o.obb() for o in objs], dtype=torch.float32)
    got = ds[0]["boxes"]
    assert torch.allclose(got[:, :4], ref[:, :4], atol=1e-3)
    assert torch.allclose(torch.cos(2 * got[:, 4]), torch.cos(2 * ref[:, 4]), atol=1e-4)
    # a class subset drops the other objects
    only_tanks = DetectionDataset(root / "images", root / "labelTxt", ["tank"], keep_empty=True)
    assert sum(len(it[2]) for it in only_tanks.items) == int(sum((it[2] == 2).sum() for it in ds.items))


def test_dataset_over_real_dota_and_dior(shared):
    from rsvision.data.detection import DetectionDataset
    from rsvision.data.dota.labels import class_names

    dota = shared("data", "dota")
    ds = DetectionDataset(dota / "images", dota / "labelTxt", list(class_names("dota1.0")), names=["P1888"])
    s = ds[0]
    assert s["image"].shape == (3, 557, 712) and len(s["boxes"]) > 10
    assert bool((s["boxes"][:, 2] >= s["boxes"][:, 3]).all())
    dior = shared("data", "dior_r")
    dd = DetectionDataset(dior / "JPEGImages-trainval", dior / "Annotations" / "Oriented Bounding Boxes",
                          list(class_names("dior")), fmt="dior")
    b = dd[0]["boxes"]
    assert dd[0]["labels"].tolist() == [class_names("dior").index("golffield")]
    assert torch.allclose(b[0], torch.tensor([408.5, 454.5, 551.0, 435.0, 0.0]), atol=1e-3)
