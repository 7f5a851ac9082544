"""Segmentation: metrics by hand, sliding windows vs whole image, learning synthetic scenes, CLI, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
import rasterio
import torch
from rasterio.transform import from_origin
from typer.testing import CliRunner

from rsvision.data.synthetic.segmentation import SEG_CLASSES, make_segmentation_sample, write_segmentation_folder
from rsvision.errors import BandMismatchError
from rsvision.models.segmentation import Segmentor
from rsvision.tasks.metrics import confusion_matrix, segmentation_metrics
from rsvision.data.sources import RasterSource
from rsvision.tasks.sliding import blend_weights, iter_blended_strips, sliding_window_inference



# --- metrics ------------------------------------------------------------------------------------
def test_segmentation_metrics_by_hand():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 4, ignore_index=255)
    # rows = reference: class 0 -> pred {0,1,0}: TP=2, FN=1; class 1: TP=2; class 2: TP=1, FN=1 (pred 0)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = segmentation_metrics(cm, ["a", "b", "c", "d"])
    # class a: TP 2, FP 1 (a c-pixel predicted a), FN 1 -> IoU 2/4, F1 4/6
    assert m["IoU"]["a"] == pytest.approx(0.5) and m["F1"]["a"] == pytest.approx(4 / 6)
    assert m["IoU"]["b"] == pytest.approx(2 / 3) and m["F1"]["b"] == pytest.approx(0.8)
    assert m["IoU"]["c"] == pytest.approx(0.5) and m["F1"]["c"] == pytest.approx(2 / 3)
    assert m["IoU"]["d"] is None and m["F1"]["d"] is None  # absent everywhere: not averaged
    assert m["mIoU"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert m["mF1"] == pytest.approx((4 / 6 + 0.8 + 2 / 3) / 3)
    assert m["OA"] == pytest.approx(5 / 7)
    assert m["task"] == "segment" and m["classes"] == ["a", "b", "c", "d"]


def test_confusion_matrix_rejects_bad_predictions():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([5]), np.array([0]), 3)


# --- sliding windows ------------------------------------------------------------------------------
def test_sliding_equals_whole_image_when_it_fits():
    torch.manual_seed(0)
    m = Segmentor("test_convnext", num_classes=3, channels=16).eval()
    img = torch.randn(3, 96, 80)
    with torch.no_grad():
        whole = m(img[None]).softmax(1)[0].numpy()
    for size in (96, 128):  # exactly the image, and larger than it
        out = sliding_window_inference(m, img, size, 16, 3)
        np.testing.assert_allclose(out, whole, atol=1e-5)


def test_sliding_blends_overlaps_and_streams_every_row_once():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1)  # pixel-wise model: any tiling must reproduce the whole image
    img = torch.randn(3, 150, 170)
    with torch.no_grad():
        whole = conv(img[None]).softmax(1)[0].numpy()
    rows = []
    for y0, strip in iter_blended_strips(conv, img, 64, 24, 4, batch_size=3):
        rows.extend(range(y0, y0 + strip.shape[1]))
        np.testing.assert_allclose(strip, whole[:, y0 : y0 + strip.shape[1]], atol=1e-5)
    assert rows == list(range(150))
    # flip TTA of a flip-equivariant model changes nothing
    np.testing.assert_allclose(sliding_window_inference(conv, img, 64, 24, 4, tta=True), whole, atol=1e-5)


def test_blend_weights_peak_in_centre_and_stay_positive():
    w = blend_weights(8, 6)
    assert w.min() > 0 and w[3:5, 2:4].min() == w.max() and w[0, 0] < w[4, 3]


def test_raster_source_reads_windows_lazily(tmp_path):
    img, _ = make_segmentation_sample((70, 90), bands=5, seed=1)
    p = tmp_path / "ms.tif"
    with rasterio.open(p, "w", driver="GTiff", width=90, height=70, count=5, dtype="uint8") as d:
        d.write(img)
    conv = torch.nn.Conv2d(5, 2, 1)
    a = sliding_window_inference(conv, RasterSource(p), 32, 8, 2)
    b = sliding_window_inference(conv, img.astype(np.float32), 32, 8, 2)
    np.testing.assert_allclose(a, b, atol=1e-6)


# --- training, CLI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One CLI training run on synthetic scenes shared by the tests below (~5 s on one thread)."""
    from rsvision.cli import app

    d = tmp_path_factory.mktemp("seg")
    data = write_segmentation_folder(d / "data", n=12, size=64, zero_is_ignore=True)
    cfg = d / "seg.yaml"
    cfg.write_text(
        "data: {mask: {classes: [background, building, road, water], reduce_zero_label: true}, "
        "img_size: 64, batch_size: 4, samples_per_image: 2}\n"
        "model: {name: test_convnext, decoder: upernet, channels: 32}\n"
        "optim: {lr: 0.003}\n"
        "trainer: {threads: 1, progress: none}\n"
    )
    torch.set_num_threads(1)
    r = CliRunner().invoke(app, ["segment", "train", "--config", str(cfg), "--data", str(data), "--epochs", "8",
                                 "--out", str(d / "run")])
    assert r.exit_code == 0, r.output
    return d, data


def test_small_model_learns_synthetic_scenes(trained):
    from rsvision.cli import app

    d, data = trained
    for f in ("best.ckpt", "last.ckpt", "config.yaml", "metrics.csv"):
        assert (d / "run" / f).exists()
    resolved = yaml.safe_load((d / "run" / "config.yaml").read_text())["data"]
    assert resolved["classes"] == list(SEG_CLASSES) and resolved["mean"] and resolved["std"]
    holdout = write_segmentation_folder(d / "holdout", n=3, size=96, seed=100, zero_is_ignore=True)
    r = CliRunner().invoke(app, ["segment", "eval", "--checkpoint", str(d / "run" / "best.ckpt"), "--data",
                                 str(holdout), "--json", str(d / "m.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((d / "m.json").read_text())
    assert set(m) >= {"task", "mIoU", "IoU", "F1", "mF1", "OA", "classes"} and m["task"] == "segment"
    assert m["classes"] == list(SEG_CLASSES)
    assert all(0 <= v <= 1 for v in m["IoU"].values() if v is not None)
    assert m["mIoU"] > 0.45 and m["OA"] > 0.8  # all-background would be mIoU ~0.16


def test_checkpoint_is_self_describing(trained):
    d, _ = trained
    hp = torch.load(d / "run" / "best.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["task"] == "segment" and hp["classes"] == list(SEG_CLASSES)
    assert len(hp["mean"]) == len(hp["std"]) == 3 and hp["model"]["backbone"] == "test_convnext"
    assert hp["extra"]["mask"]["reduce_zero_label"] is True


def test_predict_writes_georeferenced_mask_and_overlay(trained, tmp_path):
    from rsvision.cli import app

    d, _ = trained
    img, _ = make_segmentation_sample((150, 130), 3, seed=7)
    src = tmp_path / "scene.tif"
    tr = from_origin(500000, 5000000, 0.5, 0.5)
    with rasterio.open(src, "w", driver="GTiff", width=130, height=150, count=3, dtype="uint8",
                       crs="EPSG:32632", transform=tr) as ds:
        ds.write(img)
    out = tmp_path / "pred"
    r = CliRunner().invoke(app, ["segment", "predict", "--checkpoint", str(d / "run" / "best.ckpt"), str(src),
                                 "--out", str(out), "--tta"])
    assert r.exit_code == 0, r.output
    assert (out / "scene_overlay.png").exists()
    with rasterio.open(out / "scene_mask.tif") as m:
        assert m.crs.to_epsg() == 32632 and m.transform == tr and m.count == 1
        assert m.profile["compress"] == "deflate" and m.profile["tiled"]
        assert m.read(1).max() < len(SEG_CLASSES)

    bad = tmp_path / "five.tif"  # (a 4-band uint8 GeoTIFF is RGBA: its alpha is a mask, not a band)
    with rasterio.open(bad, "w", driver="GTiff", width=40, height=40, count=5, dtype="uint8") as ds:
        ds.write(np.zeros((5, 40, 40), np.uint8))
    from rsvision.tasks import load_task, predict

    with pytest.raises(BandMismatchError, match="5 bands"):
        list(predict(load_task(d / "run" / "best.ckpt"), [bad], tmp_path / "x"))


def test_shipped_configs_parse():
    from pathlib import Path

    from rsvision.config import load_config
    from rsvision.tasks.change import ChangeConfig
    from rsvision.tasks.segmentation import SegmentConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    seg, change = sorted(root.glob("seg_*.yaml")), sorted(root.glob("change_*.yaml"))
    assert seg and change
    for p in seg:
        cfg = load_config(p, SegmentConfig)
        assert cfg.trainer.monitor == "val/mIoU" and cfg.model.decoder in ("upernet", "semantic_fpn")
    for p in change:
        cfg = load_config(p, ChangeConfig)
        assert cfg.trainer.monitor == "val/F1" and cfg.model.fusion in ("diff", "concat")


def test_pretrained_backbone_is_loaded(tmp_path):
    """--pretrained: a timm-style backbone state dict lands in the encoder (head reported missing)."""
    import timm

    from rsvision.tasks.segmentation import SegmentationTask

    torch.manual_seed(1)
    backbone = timm.create_model("test_convnext", pretrained=False, num_classes=0)
    torch.save(backbone.state_dict(), tmp_path / "bb.pth")
    task = SegmentationTask(model={"backbone": "test_convnext", "channels": 16},
                            data={"classes": ["a", "b"], "mean": [0.0] * 3, "std": [1.0] * 3})
    task.load_pretrained(str(tmp_path / "bb.pth"))
    enc = task.model.encoder.body.state_dict()
    src = {k.replace(".", "_"): v for k, v in backbone.state_dict().items()}
    matched = [k for k, v in enc.items() if torch.equal(src[k.replace(".", "_")], v)]
    assert len(matched) == len(enc)


def test_raster_source_masks_nodata_and_alpha(tmp_path):
    from rsvision.data.tiling import Window

    arr = np.full((3, 20, 30), 50, np.uint8)
    arr[:, :5, :] = 0
    p = tmp_path / "nd.tif"
    with rasterio.open(p, "w", driver="GTiff", width=30, height=20, count=3, dtype="uint8", nodata=0) as d:
        d.write(arr)
    src = RasterSource(p)
    valid = src.valid(Window(0, 0, 30, 20))
    assert not valid[:5].any() and valid[5:].all()
    rgba = tmp_path / "rgba.tif"
    with rasterio.open(rgba, "w", driver="GTiff", width=30, height=20, count=4, dtype="uint8", photometric="RGB",
                       alpha="YES") as d:
        d.write(np.concatenate([arr, np.where(arr[:1] > 0, 255, 0).astype(np.uint8)]))
    src = RasterSource(rgba)
    assert src.count == 3 and not src.valid(Window(0, 0, 30, 20))[:5].any()


def test_bad_checkpoints_raise_checkpoint_error(trained, tmp_path):
    from rsvision.errors import CheckpointError
    from rsvision.tasks import load_task

    d, _ = trained
    ckpt = torch.load(d / "run" / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    torch.save(ckpt, tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_task(tmp_path / "broken.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="hyper_parameters"):
        load_task(tmp_path / "plain.ckpt")


def test_overlay_rgb_bands(trained, tmp_path):
    """``overlay(rgb=...)`` picks display bands; ``--rgb`` reaches it and is validated against the model."""
    from PIL import Image

    from rsvision.cli import app
    from rsvision.viz.masks import overlay

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (5, 20, 30)).astype(np.float32)
    mask = np.full((20, 30), 255, np.uint8)  # all ignored: the overlay is the stretched image itself
    pal = [[255, 0, 0]]
    assert np.array_equal(overlay(img, mask, pal, rgb=[4, 2, 0]), overlay(img[[4, 2, 0]], mask, pal))
    assert not np.array_equal(overlay(img, mask, pal, rgb=[4, 2, 0]), overlay(img, mask, pal))
    with pytest.raises(ValueError, match="rgb bands"):
        overlay(img, mask, pal, rgb=[5, 1, 0])

    d, _ = trained
    src = tmp_path / "scene.png"
    Image.fromarray(make_segmentation_sample((64, 64), 3, seed=3)[0].transpose(1, 2, 0)).save(src)
    ck = str(d / "run" / "best.ckpt")
    pngs = []
    for i, arg in enumerate(([], ["--rgb", "3,2,1"])):
        r = CliRunner().invoke(app, ["segment", "predict", "--checkpoint", ck, str(src), "--out", str(tmp_path / f"p{i}"), *arg])
        assert r.exit_code == 0, r.output
        pngs.append(np.asarray(Image.open(tmp_path / f"p{i}" / "scene_overlay.png")))
    assert not np.array_equal(pngs[0], pngs[1])
    for bad in ("4,3,2", "1,2"):
        r = CliRunner().invoke(app, ["segment", "predict", "--checkpoint", ck, str(src), "--out", str(tmp_path / "x"), "--rgb", bad])
        assert r.exit_code != 0 and "--rgb" in r.output


def test_train_writes_splits_and_eval_split_scores_only_that_split(trained, tmp_path):
    """``splits.json`` lists the 12 images as 9 train + 3 val (val_fraction 0.25); ``eval --split val``
    scores exactly those 3 (checked against an eval over a folder holding only them)."""
    import shutil

    from rsvision.cli import app
    from rsvision.tasks import evaluate, load_task

    d, data = trained
    rec = json.loads((d / "run" / "splits.json").read_text())
    assert rec["mode"] == "files" and len(rec["train"]) == 9 and len(rec["val"]) == 3
    assert not set(rec["train"]) & set(rec["val"])
    task = load_task(d / "run" / "best.ckpt")
    ds = task.eval_dataset(data, split="val")
    assert sorted(str(p.resolve()) for p, _ in ds.pairs) == sorted(rec["val"])
    only = tmp_path / "val_only"
    for sub in ("images", "masks"):
        (only / sub).mkdir(parents=True)
    for p, m in ds.pairs:
        shutil.copy(p, only / "images" / p.name)
        shutil.copy(m, only / "masks" / m.name)
    r = CliRunner().invoke(app, ["segment", "eval", "--checkpoint", str(d / "run" / "best.ckpt"), "--data",
                                 str(data), "--split", "val", "--json", str(tmp_path / "val.json")])
    assert r.exit_code == 0, r.output
    m_split = json.loads((tmp_path / "val.json").read_text())
    m_only = evaluate(task, task.eval_dataset(only))
    assert m_split["split"] == "val" and m_split["mIoU"] == pytest.approx(m_only["mIoU"], abs=1e-12)
    assert sorted(r["image"] for r in m_split["per_image"]) == sorted(str(p) for p, _ in ds.pairs)
    first = task.eval_dataset(only)
    first.pairs = first.pairs[:1]  # one image: its record's IoU is the eval's IoU
    one = evaluate(task, first)
    rec = one["per_image"][0]
    assert rec["id"] == first.pairs[0][0].stem and set(rec["IoU"]) == set(one["IoU"])
    assert all(v == one["IoU"][c] if v is None else v == pytest.approx(one["IoU"][c], abs=1e-12)
               for c, v in rec["IoU"].items())
    r = CliRunner().invoke(app, ["segment", "eval", "--checkpoint", str(d / "run" / "best.ckpt"), "--data",
                                 str(only), "--split", "train"])
    assert r.exit_code != 0 and "no input of the 'train' split" in str(r.exception)


def test_mask_pictures_are_readable_and_vectors_match_the_mask(trained, tmp_path):
    """Plain images: a palette PNG (values = class indices, colours = the checkpoint palette), an overlay
    with a legend panel; --vector geojson: polygons whose area per class equals the mask's pixel count."""
    import geopandas as gpd
    from PIL import Image

    from rsvision.cli import app
    from rsvision.tasks import load_task

    d, _ = trained
    img, _ = make_segmentation_sample((70, 90), 3, seed=11)
    Image.fromarray(img.transpose(1, 2, 0)).save(tmp_path / "plain.png")
    out = tmp_path / "pred"
    r = CliRunner().invoke(app, ["segment", "predict", "--checkpoint", str(d / "run" / "best.ckpt"),
                                 str(tmp_path / "plain.png"), "--out", str(out), "--vector", "geojson"])
    assert r.exit_code == 0, r.output
    task = load_task(d / "run" / "best.ckpt")
    m = Image.open(out / "plain_mask.png")
    assert m.mode == "P"
    pal = np.asarray(m.getpalette()[: 3 * len(task.classes)]).reshape(-1, 3)
    np.testing.assert_array_equal(pal, np.asarray(task.palette))
    labels = np.asarray(m)
    assert labels.max() < len(task.classes)
    over = Image.open(out / "plain_overlay.png")
    assert over.width > 90 and over.height >= 70  # the legend panel is beside the picture
    g = gpd.read_file(out / "plain_mask.geojson")
    for cls, area in g.groupby("class").geometry.apply(lambda s: s.area.sum()).items():
        assert area == pytest.approx((labels == task.classes.index(cls)).sum())
    assert set(g["class"]) == {task.classes[v] for v in np.unique(labels)}
