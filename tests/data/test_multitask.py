"""Multi-task labels: polygon fill against shapely, the DOTA converter, crops and flips, the readers on real data."""
from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch

from rsvision.data.multitask import (
    IGNORE_INDEX, MultiTaskDataset, RawSample, collate_multitask, dataset_batch_sizes, make_sample, polygon_to_mask,
    polygons_to_labels,
)
from rsvision.data.multitask_readers import open_reader
from rsvision.errors import ConfigError, DataError
from tests.conftest import shared_path


def _centres_inside(poly, h, w):
    yy, xx = np.mgrid[:h, :w]
    return shapely.contains_xy(shapely.Polygon(np.reshape(poly, (-1, 2))), xx + 0.5, yy + 0.5)


@pytest.mark.parametrize("poly", [
    [10.3, 5.2, 40.7, 12.1, 33.2, 44.9, 4.1, 30.0],  # a rotated quadrilateral
    [5.2, 5.1, 50.3, 5.1, 50.3, 40.2, 30.1, 20.4, 5.2, 40.2],  # non-convex, five corners (no centre on an edge)
    [-8.5, -3.0, 20.0, -3.0, 20.0, 70.0, -8.5, 70.0],  # partly outside the image
])
def test_polygon_fill_is_the_set_of_pixel_centres_inside(poly):
    m = polygon_to_mask(poly, 48, 60)
    np.testing.assert_array_equal(m, _centres_inside(poly, 48, 60))
    g = shapely.intersection(shapely.Polygon(np.reshape(poly, (-1, 2))), shapely.box(0, 0, 60, 48))
    assert abs(m.sum() - g.area) <= 0.5 * g.length + 1  # the area, up to the boundary pixels


def test_axis_aligned_rectangle_fills_exactly():
    m = polygon_to_mask([10, 4, 30, 4, 30, 9, 10, 9], 20, 40)
    assert m.sum() == 20 * 5 and m[4:9, 10:30].all()


def test_converter_paints_small_objects_over_large_and_boxes_match_the_dota_reader(tmp_path):
    from rsvision.data.detection import DetectionDataset
    from rsvision.data.dota.labels import write_label_txt

    big = [4.0, 4.0, 60.0, 4.0, 60.0, 40.0, 4.0, 40.0]  # class 0 (large, "harbor")
    small = [20.0, 10.0, 36.0, 10.0, 36.0, 18.0, 20.0, 18.0]  # class 1 on top of it ("ship")
    thin = [50.0, 50.0, 60.0, 50.0, 60.0, 51.0, 50.0, 51.0]  # 1 px wide: no box, still painted
    polys = np.array([small, big, thin])
    out = polygons_to_labels(polys, [1, 0, 1], 64, 64)
    sem = out["semantic"]
    assert sem[14, 28] == 2 and sem[30, 10] == 1 and sem[0, 0] == 0 and sem[50, 55] == 2  # label + 1
    assert (sem == 2).sum() == 16 * 8 + 10 and (sem == 1).sum() == 56 * 36 - 16 * 8
    # instance = filled polygon (whole, even under another object); thin object dropped as from the boxes
    assert out["masks"].shape == (2, 64, 64) and out["mask_labels"].tolist() == [1, 0] == out["labels"].tolist()
    assert out["masks"][1].sum() == pytest.approx(shapely.Polygon(np.reshape(big, (4, 2))).area)
    # boxes are the detection dataset's (DOTA parser + poly2obb + MIN_BOX_SIZE)
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labelTxt").mkdir()
    write_label_txt(tmp_path / "labelTxt" / "a.txt", polys, ["ship", "harbor", "ship"])
    det = DetectionDataset(tmp_path / "images", tmp_path / "labelTxt", ["harbor", "ship"])[0]
    torch.testing.assert_close(torch.from_numpy(out["boxes"]), det["boxes"], rtol=0, atol=0)
    assert det["labels"].tolist() == out["labels"].tolist()


def test_crop_keeps_objects_by_iof_and_paints_every_touching_one():
    inside = [10.0, 10.0, 30.0, 10.0, 30.0, 20.0, 10.0, 20.0]
    half = [55.0, 30.0, 75.0, 30.0, 75.0, 40.0, 55.0, 40.0]  # half in the 64-wide window
    raw = RawSample(np.zeros((3, 80, 80), np.uint8), np.array([inside, half]), np.array([0, 1]))
    s = make_sample(raw, 0, 0, 64, 64)
    assert s["labels"].tolist() == [0] and s["masks"].shape == (1, 64, 64)
    assert (s["semantic"] == 2).sum() == 9 * 10  # the cut object is still painted (columns 55..63)
    f = make_sample(raw, 0, 0, 64, 64, hflip=True, vflip=True)
    np.testing.assert_array_equal(f["semantic"], s["semantic"][::-1, ::-1])
    np.testing.assert_array_equal(f["masks"], s["masks"][:, ::-1, ::-1])
    np.testing.assert_allclose(f["boxes"][:, :2], 64 - s["boxes"][:, :2])
    # a window past the image: padded with ignore (given semantic) / background (painted) and zeros
    raw.semantic = np.ones((80, 80), np.int64)
    p = make_sample(raw, 40, 40, 64, 64)
    assert (p["semantic"][40:] == IGNORE_INDEX).all() and (p["image"][:, 40:] == 0).all()


def test_keyed_crops_repeat_and_batch_sizes():
    raw = RawSample(np.random.default_rng(0).integers(0, 255, (3, 100, 100)).astype(np.uint8))

    class One:
        classes = ["a"]

        def __len__(self):
            return 1

        def load(self, i):
            return raw

    ds = MultiTaskDataset(One(), 32, seed=3)
    a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(0, 2)]
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    batch = collate_multitask([a, c])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["targets"][0]["image_size"] == (32, 32)
    assert dataset_batch_sizes({"a": 100, "b": 300}, 8, "avg") == {"a": 4, "b": 4}
    assert dataset_batch_sizes({"a": 100, "b": 300}, 8, "ratio") == {"a": 2, "b": 6}
    assert dataset_batch_sizes({"a": 1, "b": 1000}, 4, "ratio") == {"a": 1, "b": 3}
    with pytest.raises(ValueError, match="batch_mode"):
        dataset_batch_sizes({"a": 1}, 4, "sum")
    rep = MultiTaskDataset(One(), 32, seed=3, repeat=3)  # 3 crops of the one image per epoch
    assert len(rep) == 3 and torch.equal(rep[(0, 1)]["image"], a["image"])
    crops = [rep[(i, 1)]["image"] for i in range(3)]
    assert not torch.equal(crops[0], crops[1]) and not torch.equal(crops[1], crops[2])
    with pytest.raises(ConfigError, match="repeat"):
        MultiTaskDataset(One(), 32, repeat=0)


def test_samrs_layout_reads_as_the_dota_layout_and_rle_masks(tmp_path):
    import json

    from pycocotools import mask as mask_utils

    from rsvision.data.synthetic.multitask import write_multitask_dataset

    write_multitask_dataset(tmp_path / "s", 2, 96, seed=1, layout="samrs")
    write_multitask_dataset(tmp_path / "d", 2, 96, seed=1, layout="dota")
    rs = open_reader({"format": "samrs", "root": str(tmp_path / "s"), "ann_file": "instances.json"})
    rd = open_reader({"format": "dota", "root": str(tmp_path / "d"), "classes": rs.classes})
    for i in range(2):
        a, b = MultiTaskDataset(rs, 96, train=False)[i], MultiTaskDataset(rd, 96, train=False)[i]
        for k in ("image", "semantic", "masks", "mask_labels", "boxes", "labels"):
            assert torch.equal(a[k], b[k]), k
    # an RLE segmentation decodes to the same mask as its polygon
    coco = json.loads((tmp_path / "s" / "instances.json").read_text())
    ann = coco["annotations"][0]
    m = rs._mask(ann["segmentation"], 96, 96)
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    np.testing.assert_array_equal(rs._mask(rle, 96, 96), m)


def test_bad_input_names_the_file_or_option(tmp_path):
    with pytest.raises(ConfigError, match="unknown multi-task data format 'coco'"):
        open_reader({"format": "coco", "root": str(tmp_path)})
    with pytest.raises(DataError, match="missing"):
        open_reader({"format": "dota", "root": str(tmp_path / "missing")})
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(DataError, match="a.json"):
        open_reader({"format": "samrs", "root": str(tmp_path), "ann_file": "a.json"})


# --- the real test bed ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,parts", [("dota", ("data", "dota")), ("dior", ("data", "dior_r"))])
def test_real_polygon_sets_become_multitask_data(fmt, parts):
    from rsvision.data.detection import DetectionDataset, _dirs

    root = shared_path(*parts)
    r = open_reader({"format": fmt, "root": str(root)})
    det = DetectionDataset(*_dirs(root, fmt), r.classes, fmt, keep_empty=True)
    i = next(j for j in range(len(r)) if len(det.items[j][1]) > 3) if len(r) > 1 else 0
    raw = r.load(i)
    h, w = raw.image.shape[-2:]
    s = make_sample(raw, 0, 0, w, h)  # the whole image: every object is kept
    np.testing.assert_array_equal(s["boxes"], det.items[i][1])
    np.testing.assert_array_equal(s["labels"], det.items[i][2])
    assert len(s["masks"]) == len(s["boxes"]) > 0
    inst = s["masks"].any(0)
    assert (s["semantic"][inst] > 0).all() and s["semantic"].max() <= len(r.classes)
    for m, lab in zip(s["masks"], s["mask_labels"]):
        assert m.sum() > 0 and ((s["semantic"][m] == lab + 1).mean() > 0.5 or m.sum() < 30)


def test_real_isaid_instances_are_regions_of_its_semantic_mask():
    r = open_reader({"format": "isaid", "root": str(shared_path("data", "seg", "isaid"))})
    assert len(r) == 3 and r.classes[7:9] == ["large_vehicle", "small_vehicle"]
    s = MultiTaskDataset(r, 384, train=False)[0]
    sem, masks, labels, boxes = s["semantic"], s["masks"].bool(), s["mask_labels"], s["boxes"]
    assert len(masks) == len(boxes) > 5 and set(torch.unique(sem).tolist()) <= {0, 2, 8, 9}
    for m, lab, box in zip(masks, labels, boxes):
        assert (sem[m] == lab + 1).all()
        assert box[2] * box[3] >= m.sum() * 0.99  # the rotated rectangle covers its region
