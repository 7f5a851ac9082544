"""Instance segmentation: mask AP by hand, train -> eval -> predict (CLI and Python), GeoJSON in the raster's
CRS, clear errors, the mask loss falls, MTP's encoder loads with --pretrained, the shared iSAID / DOTA data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rsvision.cli import app
from rsvision.data.synthetic.multitask import write_multitask_dataset

CONFIG = "configs/instance_synthetic_tiny.yaml"
TINY_BACKBONE = "{embed_dims: [8, 16, 32, 64], depths: [1, 1, 1, 1]}"
TINY_DECODER = ("{fpn_channels: 16, representation_size: 32, mask_channels: 16, mask_layers: 1, anchor_scale: 4.0, "
                "rpn_pre_nms_top_n: [200, 200], rpn_post_nms_top_n: [100, 50], box_batch_size_per_image: 64}")
CLASSES = ["ship", "vehicle", "tank"]


def _tiny(*extra: str) -> list[str]:
    sets = [f"model.backbone_kwargs={TINY_BACKBONE}", f"model.decoder={TINY_DECODER}", "data.batch_size=4",
            "data.img_size=96", *extra]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_multitask_dataset(tmp_path_factory.mktemp("inst_data"), 10, 96, seed=3)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("inst_run") / "run"
    r = CliRunner().invoke(app, ["instance", "train", "--config", CONFIG, "--data", str(data), "--out", str(out),
                                 "--epochs", "2", "--seed", "1", *_tiny()])
    assert r.exit_code == 0, r.output[-3000:] + repr(r.exception)
    return out


# --- the metric ------------------------------------------------------------------------------------
def _box_mask(y0, y1, x0, x1, size=64):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_ap_by_hand():
    """ship: one perfect mask (AP 1 at every IoU); vehicle: IoU 270 / 400 = 0.675, a match at IoU 0.50 ... 0.65
    only (4 of the 10 thresholds: AP 0.4); tank: no ground truth, one false mask (null, not in the mean)."""
    from rsvision.tasks.instance import error_record, mask_ap_metric, mask_ap_results

    gt = torch.stack([_box_mask(2, 12, 2, 12), _box_mask(20, 30, 10, 50)])
    pred = torch.stack([_box_mask(2, 12, 2, 12), _box_mask(20, 30, 10, 37), _box_mask(40, 50, 40, 50)])
    inter = (pred[1] & gt[1]).sum().item()
    assert inter / (pred[1] | gt[1]).sum().item() == 0.675
    metric = mask_ap_metric(100)
    labels = torch.tensor([0, 1, 2])
    metric.update([{"masks": pred, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": labels}],
                  [{"masks": gt, "labels": torch.tensor([0, 1])}])
    res = mask_ap_results(metric.compute(), CLASSES, [1, 1, 0])
    assert res["task"] == "instance"
    assert res["AP"]["ship"] == pytest.approx(1.0) and res["AP"]["vehicle"] == pytest.approx(0.4)
    assert res["AP"]["tank"] is None
    assert res["mAP"] == pytest.approx(0.7) and res["mAP50"] == pytest.approx(1.0)
    rec = error_record("img.png", pred, labels, torch.tensor([0.9, 0.8, 0.7]), gt, torch.tensor([0, 1]), CLASSES)
    assert rec["FP"] == {"ship": 0, "vehicle": 0, "tank": 1} and rec["missed"] == {"ship": 0, "vehicle": 0, "tank": 0}
    rec = error_record("img.png", pred, labels, torch.tensor([0.9, 0.8, 0.7]), gt, torch.tensor([0, 1]), CLASSES,
                       iou_thr=0.7)  # vehicle's 0.675 no longer matches: one FP and one missed
    assert rec["errors"] == {"ship": 0, "vehicle": 2, "tank": 1}
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = mask_ap_results(mask_ap_metric().compute(), CLASSES, [0, 0, 0])
    assert empty["mAP"] is None and set(empty["AP"].values()) == {None}


# --- train -> eval -> predict ------------------------------------------------------------------------
def test_cli_train_eval_predict(run, data, tmp_path):
    names = {p.name for p in run.iterdir()}
    assert {"best.ckpt", "last.ckpt", "config.yaml", "metrics.csv", "splits.json", "curves.png"} <= names, names
    ck = torch.load(run / "best.ckpt", weights_only=True)
    hp = ck["hyper_parameters"]
    assert hp["task"] == "instance" and hp["classes"] == CLASSES and hp["bands"] == [0, 1, 2]
    assert len(hp["mean"]) == 3 and hp["model"]["type"] == "MaskRCNN" and hp["format"] == "dota"
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["val"]) == 2 and len(splits["train"]) == 8  # val_fraction 0.25 of 10
    js = tmp_path / "m.json"
    r = CliRunner().invoke(app, ["instance", "eval", "--checkpoint", str(run / "best.ckpt"), "--data", str(data),
                                 "--split", "val", "--json", str(js)])
    assert r.exit_code == 0, r.output[-3000:] + repr(r.exception)
    m = json.loads(js.read_text())
    assert m["task"] == "instance" and set(m["AP"]) == set(CLASSES) and m["images"] == 2
    for k in ("mAP", "mAP50"):
        assert m[k] is None or 0.0 <= m[k] <= 1.0
    assert sorted(Path(p["image"]).name for p in m["per_image"]) == sorted(Path(p).name for p in splits["val"])
    assert all(set(p) >= {"image", "id", "errors", "FP", "missed"} for p in m["per_image"])
    out = tmp_path / "pred"
    img = sorted((data / "images").iterdir())[0]
    args = ["instance", "predict", "--checkpoint", str(run / "best.ckpt"), str(img), "--out", str(out),
            "--score-thr", "0.0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output[-3000:] + repr(r.exception)
    assert {p.name for p in out.iterdir()} >= {f"{img.stem}_instances.png", f"{img.stem}_instances.json"}
    assert not (out / f"{img.stem}.geojson").exists()  # a plain PNG: pixel outlines only
    doc = json.loads((out / f"{img.stem}_instances.json").read_text())
    assert doc["width"] == 96 and doc["classes"] == CLASSES
    for inst in doc["instances"]:
        assert inst["class"] in CLASSES and inst["geometry"]["type"] in ("Polygon", "MultiPolygon")
    r = CliRunner().invoke(app, args)  # the same --out again: refused, nothing clobbered
    assert r.exit_code != 0 and "already holds results" in str(r.exception)


def test_python_api(run, data, tmp_path):
    from rsvision.tasks import evaluate, load_task, predict

    task = load_task(run / "best.ckpt")
    assert task.name == "instance"
    m = evaluate(task, data, split="val")
    assert m["task"] == "instance" and m["images"] == 2
    img = np.asarray(task.hparams.mean, np.float32)[:, None, None] * np.ones((3, 150, 170), np.float32)
    res = list(predict(task, [img], tmp_path / "arr", window=96, overlap=24, score_thr=0.0))
    det = res[0]["instances"]
    assert (det.height, det.width) == (150, 170) and det.stats["windows"] == 6  # rows 0 / 54, columns 0 / 72 / 74
    assert det.full_masks().shape == (len(det), 150, 170)


class _Oracle(torch.nn.Module):
    """A perfect "detector" of bright objects: one instance per connected region of band 0 > 0.5."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None, image_sizes=None):
        from scipy import ndimage

        from rsvision.models.detectors.mask_rcnn import masks_to_boxes

        outs = []
        for img, (h, w) in zip(images, image_sizes):
            lab, n = ndimage.label(img[0, :h, :w].numpy() > 0.5)
            masks = torch.from_numpy(np.stack([lab == i + 1 for i in range(n)]).reshape(n, h, w))
            outs.append({"boxes": masks_to_boxes(masks), "labels": torch.zeros(n, dtype=torch.long),
                         "scores": torch.full((n,), 0.9), "masks": masks})
        return outs


def test_whole_scene_merge_keeps_each_object_once():
    """Windows of 64 px overlapping by 32 on a 96 x 96 scene: a small object cut by window 0's right border
    is dropped there (window 1 holds it whole); an object wider than the overlap is kept where it is whole."""
    from rsvision.tasks.instance_scene import predict_instances

    scene = np.zeros((1, 96, 96), np.float32)
    scene[0, 10:20, 58:70] = 1.0  # crosses x = 64 (window 0's border), inside window 1 ([32, 96))
    scene[0, 70:80, 20:60] = 1.0  # 40 px wide: whole only in window 0, cut at x = 32 in window 1
    det = predict_instances(_Oracle(), scene, [0.0], [1.0], ["thing"], window=64, overlap=32)
    assert det.stats["windows"] == 4 and det.stats["cut_by_window"] == 2 and len(det) == 2
    full = det.full_masks().any(0).numpy()
    np.testing.assert_array_equal(full, scene[0] > 0.5)
    assert sorted(det.boxes.tolist()) == [[20.0, 70.0, 60.0, 80.0], [58.0, 10.0, 70.0, 20.0]]


def test_geojson_in_the_rasters_crs(run, data, tmp_path):
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    from rsvision.tasks.instance_scene import SceneInstances, write_instance_outputs

    tif = tmp_path / "scene.tif"
    arr = np.asarray(Image.open(sorted((data / "images").iterdir())[1])).transpose(2, 0, 1)[:3]
    transform = from_origin(500000.0, 4100000.0, 0.5, 0.5)
    with rasterio.open(tif, "w", driver="GTiff", height=96, width=96, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=transform) as ds:
        ds.write(arr)
    out = tmp_path / "geo"
    r = CliRunner().invoke(app, ["instance", "predict", "--checkpoint", str(run / "best.ckpt"), str(tif),
                                 "--out", str(out), "--score-thr", "0.0"])
    assert r.exit_code == 0, r.output[-3000:] + repr(r.exception)
    fc = json.loads((out / "scene.geojson").read_text())
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    for f in fc["features"]:  # every vertex inside the raster's bounds, in metres
        xy = np.asarray(f["geometry"]["coordinates"][0] if f["geometry"]["type"] == "Polygon"
                        else f["geometry"]["coordinates"][0][0])
        assert (xy[:, 0] >= 500000 - 1e-6).all() and (xy[:, 0] <= 500048 + 1e-6).all()
        assert (xy[:, 1] <= 4100000 + 1e-6).all() and (xy[:, 1] >= 4099952 - 1e-6).all()
    # by hand: a 4 x 2 px mask at scene pixel (10, 20) is the rectangle x 500005 .. 500007, y 4099990 .. 4099989
    m = np.ones((2, 4), bool)
    det = SceneInstances(torch.tensor([[10.0, 20.0, 14.0, 22.0]]), torch.tensor([0.9]), torch.tensor([1]), [m],
                         np.array([[10, 20]]), 96, 96, CLASSES, transform, "EPSG:32633")
    files = write_instance_outputs(det, tmp_path / "hand", "h", png=False)
    f = json.loads(files["geojson"].read_text())["features"][0]
    xy = np.asarray(f["geometry"]["coordinates"][0])
    assert f["properties"]["class"] == "vehicle" and f["properties"]["area_px"] == 8
    assert xy[:, 0].min() == 500005.0 and xy[:, 0].max() == 500007.0
    assert xy[:, 1].min() == 4099989.0 and xy[:, 1].max() == 4099990.0
    px = json.loads(files["json"].read_text())["instances"][0]["geometry"]["coordinates"][0]
    assert {tuple(p) for p in px} == {(10.0, 20.0), (14.0, 20.0), (14.0, 22.0), (10.0, 22.0)}


def test_bad_input_is_a_clear_error(run, tmp_path):
    from rsvision.errors import ConfigError, DataError

    ck = str(run / "best.ckpt")
    r = CliRunner().invoke(app, ["instance", "predict", "--checkpoint", ck, str(tmp_path / "missing.tif"),
                                 "--out", str(tmp_path / "p")])
    assert r.exit_code != 0 and isinstance(r.exception, DataError) and "missing.tif" in str(r.exception)
    r = CliRunner().invoke(app, ["instance", "predict", "--checkpoint", ck, "x.png", "--window", "8"])
    assert r.exit_code == 2 and "--window" in r.output
    r = CliRunner().invoke(app, ["instance", "eval", "--checkpoint", ck])
    assert isinstance(r.exception, ConfigError) and "--data" in str(r.exception)
    r = CliRunner().invoke(app, ["instance", "eval", "--checkpoint", ck, "--data", str(tmp_path / "nowhere")])
    assert isinstance(r.exception, DataError) and "nowhere" in str(r.exception)
    r = CliRunner().invoke(app, ["instance", "train", "--config", CONFIG, "--data", str(tmp_path / "none"),
                                 "--out", str(tmp_path / "r")])
    assert isinstance(r.exception, DataError) and "none" in str(r.exception)
    r = CliRunner().invoke(app, ["instance", "train", "--config", CONFIG, "--preset", "huge",
                                 "--out", str(tmp_path / "r2")])
    assert r.exit_code != 0 and "preset" in str(r.exception)


def test_mask_loss_falls_when_overfitting(tmp_path):
    import pandas as pd

    from rsvision.config import load_config
    from rsvision.tasks import train
    from rsvision.tasks.instance import InstanceConfig

    d = write_multitask_dataset(tmp_path / "d", 2, 96, seed=5)
    over = {"data.root": str(d), "trainer.out": str(tmp_path / "fit"), "trainer.max_epochs": 20,
            "data.val_fraction": 0.0, "data.flip": False, "data.img_size": 96, "optim.lr": 0.01,
            "model.backbone_kwargs": {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
            "model.decoder": {"fpn_channels": 16, "representation_size": 32, "mask_channels": 16, "mask_layers": 1,
                              "anchor_scale": 4.0, "rpn_post_nms_top_n": [100, 50], "box_batch_size_per_image": 64}}
    train(load_config(CONFIG, InstanceConfig, over))
    m = pd.read_csv(tmp_path / "fit" / "metrics.csv").dropna(subset=["train/loss_mask_epoch"]).groupby("epoch").first()
    curve = m["train/loss_mask_epoch"].to_numpy()
    assert curve[-4:].mean() < 0.6 * curve[:2].mean(), curve.round(3).tolist()


def test_mtp_encoder_loads_with_pretrained(tmp_path):
    from rsvision.tasks.instance import InstanceTask

    root = tmp_path / "mtp_data"
    write_multitask_dataset(root / "dota", 2, 64, seed=0)
    ds = '[{name: dota, format: dota, root: "%s", classes: [ship, vehicle, tank]}]' % (root / "dota")
    out = tmp_path / "mtp"
    r = CliRunner().invoke(app, ["pretrain", "mtp", "--config", "configs/mtp_synthetic_tiny.yaml", "--out", str(out),
                                 "--epochs", "1", "--set", f"data.datasets={ds}", "--set", "data.img_size=64"])
    assert r.exit_code == 0, r.output[-3000:] + repr(r.exception)
    enc = torch.load(out / "encoder.pth", weights_only=True)["state_dict"]
    task = InstanceTask(model={"type": "MaskRCNN", "backbone": "lsknet_t",
                               "backbone_kwargs": {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
                               "decoder": {"fpn_channels": 16, "representation_size": 32, "mask_channels": 16}},
                        data={"classes": CLASSES})
    report = task.load_pretrained(out / "encoder.pth")  # what `instance train --pretrained FILE` calls
    assert not report.unexpected and len(report.loaded) == len(enc), report.summary()
    sd = task.model.state_dict()
    src_of = {dst: src for src, dst in report.remapped.items()}
    for dst in report.loaded:  # relative to the model the task loads into (as tests/tasks/test_mtp.py checks)
        match = [dst] if dst in sd else [k for k in sd if k.endswith("." + dst)]
        assert len(match) == 1, dst
        torch.testing.assert_close(sd[match[0]], enc[src_of.get(dst, dst)], rtol=0, atol=0)
    assert all(k.startswith("backbone.") for k in match)


# --- the shared data ---------------------------------------------------------------------------------
def _one_image(root: Path, fmt: str, stem: str, dst: Path) -> Path:
    """A folder holding one image of a shared dataset (links), so that eval scores one whole image."""
    sub = {"isaid": ("images", "masks", ".png"), "dota": ("images", "labelTxt", ".txt")}[fmt]
    for d, suffix in ((sub[0], ".png"), (sub[1], sub[2])):
        (dst / d).mkdir(parents=True)
        (dst / d / f"{stem}{suffix}").symlink_to((root / d / f"{stem}{suffix}").resolve())
    return dst


@pytest.mark.parametrize("folder,fmt,stem", [(("seg", "isaid"), "isaid", "P0005"), (("dota",), "dota", "P1888")])
def test_shared_data_trains_and_scores(shared, tmp_path, folder, fmt, stem):
    """iSAID (instances = connected regions of its RGB masks) and DOTA (filled polygons): two training steps
    with configs/instance_isaid_lsknet_t.yaml at tiny widths, then one whole image scored."""
    from rsvision.config import load_config
    from rsvision.tasks import evaluate, load_task, train
    from rsvision.tasks.instance import InstanceConfig

    root = shared("data", *folder)
    over = {"data.root": str(root), "data.format": fmt, "trainer.out": str(tmp_path / "run"),
            "trainer.max_epochs": 1, "data.img_size": 128, "data.batch_size": 2, "data.val_fraction": 0.0,
            "data.mean": [100.0] * 3, "data.std": [50.0] * 3, "trainer.progress": "none",
            "model.backbone_kwargs": {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
            "model.decoder": {"fpn_channels": 16, "representation_size": 32, "mask_channels": 16, "mask_layers": 1}}
    res = train(load_config("configs/instance_isaid_lsknet_t.yaml", InstanceConfig, over), limit_train_batches=2)
    task = load_task(res.checkpoint)
    assert task.hparams.format == fmt and len(task.classes) == 15
    one = _one_image(root, fmt, stem, tmp_path / "one")
    m = evaluate(task, one, window=512, overlap=64, max_det=20)
    assert m["task"] == "instance" and m["images"] == 1 and len(m["per_image"]) == 1
    assert sum(m["num_gt"].values()) > 0 and set(m["AP"]) == set(task.classes)


def test_same_seed_same_run_and_exact_resume(data, tmp_path):
    """Two runs with one seed give bitwise the same weights; a run killed in epoch 2 resumes to them too."""
    import lightning as L

    from rsvision.config import load_config
    from rsvision.tasks import train
    from rsvision.tasks.instance import InstanceConfig

    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 2:
                raise RuntimeError("simulated kill")

    def cfg(out):
        over = {"data.root": str(data), "trainer.out": str(out), "trainer.max_epochs": 3, "trainer.seed": 4,
                "data.img_size": 64, "data.batch_size": 4, "model.backbone_drop_path_rate": 0.1,
                "model.backbone_kwargs": {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
                "model.decoder": {"fpn_channels": 16, "representation_size": 32, "mask_channels": 16,
                                  "mask_layers": 1, "anchor_scale": 4.0, "box_batch_size_per_image": 64}}
        return load_config(CONFIG, InstanceConfig, over)

    train(cfg(tmp_path / "a"))
    train(cfg(tmp_path / "b"))
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg(tmp_path / "c"), callbacks=[Kill()])
    c = cfg(tmp_path / "c")
    c.trainer.resume = True
    train(c)
    sd = {k: torch.load(tmp_path / k / "last.ckpt", weights_only=True)["state_dict"] for k in "abc"}
    for k, v in sd["a"].items():
        assert torch.equal(v, sd["b"][k]) and torch.equal(v, sd["c"][k]), k
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()
