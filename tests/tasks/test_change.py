"""Change detection: metrics by hand, learning synthetic pairs (CLI), sparse labels, predict outputs, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin
from typer.testing import CliRunner

from rsvision.data.synthetic.change import make_change_pair, write_change_folder
from rsvision.errors import DataError
from rsvision.tasks.metrics import change_metrics, confusion_matrix



def test_change_metrics_by_hand():
    target = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 255, 255])
    pred = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1, 0])
    cm = confusion_matrix(pred, target, 2)
    assert cm.tolist() == [[4, 2], [1, 3]]  # TN FP / FN TP; ignored pixels dropped
    m = change_metrics(cm)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["F1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["IoU"] == pytest.approx(3 / 6)
    assert m["OA"] == pytest.approx(7 / 10)
    pe = (5 * 4 + 5 * 6) / 100  # (pred+ * ref+ + pred- * ref-) / n^2
    assert m["kappa"] == pytest.approx((0.7 - pe) / (1 - pe))
    assert m["task"] == "change"


def test_change_metrics_degenerate_cases():
    m = change_metrics(np.array([[10, 0], [0, 0]]))  # nothing changed, nothing predicted
    assert m["precision"] is None and m["recall"] is None and m["F1"] is None and m["OA"] == 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rsvision.cli import app

    d = tmp_path_factory.mktemp("change")
    data = write_change_folder(d / "data", n=16, size=64)
    cfg = d / "change.yaml"
    cfg.write_text(
        "data: {img_size: 64, batch_size: 4, samples_per_image: 2}\n"
        "model: {name: test_convnext, fusion: diff, channels: 32}\n"
        "optim: {lr: 0.003}\n"
        "trainer: {threads: 1, progress: none}\n"
    )
    torch.set_num_threads(1)
    r = CliRunner().invoke(app, ["change", "train", "--config", str(cfg), "--data", str(data), "--epochs", "20",
                                 "--out", str(d / "run")])
    assert r.exit_code == 0, r.output
    return d


def test_small_model_learns_synthetic_change(trained):
    """Buildings appearing / disappearing are found despite illumination and seasonal shifts."""
    from rsvision.cli import app

    d = trained
    resolved = yaml.safe_load((d / "run" / "config.yaml").read_text())["data"]
    assert resolved["mean"] and resolved["std"]  # the run's config.yaml is resolved
    holdout = write_change_folder(d / "holdout", n=4, size=96, seed=500)
    r = CliRunner().invoke(app, ["change", "eval", "--checkpoint", str(d / "run" / "best.ckpt"), "--data",
                                 str(holdout), "--json", str(d / "m.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((d / "m.json").read_text())
    assert {"task", "precision", "recall", "F1", "IoU", "OA", "kappa"} <= set(m) and m["task"] == "change"
    assert m["F1"] > 0.5 and m["kappa"] > 0.45
    # a pair with no change but strong illumination / seasonal shifts: (almost) nothing is flagged
    from rsvision.tasks import load_task

    task = load_task(d / "run" / "best.ckpt")
    a, b, lab = make_change_pair(96, 3, seed=900, num_removed=0, num_added=0, illumination=0.3, seasonal=50)
    assert lab.sum() == 0 and np.abs(a.astype(float) - b).mean() > 10
    probs = task.infer(torch.from_numpy(np.stack([a, b])[None].astype(np.float32)))
    assert (probs.argmax(1) == 1).float().mean() < 0.05


def test_predict_pair_outputs(trained, tmp_path):
    from rsvision.cli import app

    a, b, _ = make_change_pair((80, 100), 3, seed=3)
    tr = from_origin(300000, 4000000, 2.0, 2.0)
    for name, arr in (("a.tif", a), ("b.tif", b)):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=100, height=80, count=3, dtype="uint8",
                           crs="EPSG:32650", transform=tr) as ds:
            ds.write(arr)
    out = tmp_path / "pred"
    r = CliRunner().invoke(app, ["change", "predict", "--checkpoint", str(trained / "run" / "best.ckpt"),
                                 str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--out", str(out),
                                 "--vector", "gpkg"])
    assert r.exit_code == 0, r.output
    with rasterio.open(out / "b_mask.tif") as m:
        assert m.crs.to_epsg() == 32650 and m.transform == tr
        mask = m.read(1)
        assert set(np.unique(mask)) <= {0, 1}
        tags = m.tags()
        assert json.loads(tags["CLASSES"]) == ["unchanged", "changed"] and tags["CLASS_1"] == "changed"
    assert (out / "b_overlay.png").exists()
    # A | B | prediction: three panels side by side (each the 100 px scene width) plus a legend
    cmp_ = np.asarray(Image.open(out / "b_compare.png"))
    assert cmp_.shape[1] > 3 * 100 and cmp_.shape[0] > 80
    # the changed regions as polygons in the raster's CRS, their area = the changed pixels' area
    import geopandas as gpd

    g = gpd.read_file(out / "b_mask.gpkg")
    assert g.crs.to_epsg() == 32650 and set(g["class"]) <= {"changed"}
    assert g.geometry.area.sum() == pytest.approx((mask == 1).sum() * 4.0)
    # an odd number of files is not a list of pairs
    from rsvision.tasks.change import pairs_from_inputs

    with pytest.raises(DataError, match="pairs"):
        pairs_from_inputs([tmp_path / "a.tif"])


def _sparse_scene(root, size=48):
    root.mkdir()
    a, b, lab = make_change_pair(size, 4, seed=9)
    for name, arr in (("t1.tif", a), ("t2.tif", b)):
        with rasterio.open(root / name, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint8") as ds:
            ds.write(arr)
    changed = np.zeros((size, size), np.uint8)
    unchanged = np.zeros((size, size), np.uint8)
    changed[::3, ::3] = 255 * lab[::3, ::3]
    unchanged[1::3, ::3] = 255 * (1 - lab[1::3, ::3])
    Image.fromarray(changed).save(root / "change.bmp")
    Image.fromarray(unchanged).save(root / "unchanged.bmp")
    return lab, changed, unchanged


def test_sparse_scene_spatial_split_and_training(tmp_path):
    """Taizhou-style data: only sampled pixels count; one scene is split by columns; loss stays finite."""
    from rsvision.data.change import ChangeDataModule
    from rsvision.tasks import train
    from rsvision.tasks.change import ChangeConfig
    from rsvision.tasks.common import TrainerOptions

    _, changed, unchanged = _sparse_scene(tmp_path / "scene", 64)
    cfg = ChangeConfig()
    cfg.data.root = str(tmp_path / "scene")
    cfg.data.img_size, cfg.data.batch_size, cfg.data.samples_per_image = 32, 4, 2
    dm = ChangeDataModule(cfg.data)
    (tr,), (va,) = dm.train_items, dm.val_items
    assert tr.a.name == "t1.tif" and tr.b.name == "t2.tif"
    labelled = (changed > 0) | (unchanged > 0)
    assert ((tr.label != 255) | (va.label != 255)).sum() == labelled.sum()
    assert (tr.label[:, 48:] == 255).all() and (va.label[:, :48] == 255).all()
    cfg.model.name, cfg.model.channels = "test_convnext", 16
    cfg.trainer = TrainerOptions(out=str(tmp_path / "run"), max_epochs=1, threads=1, progress="none",
                                 monitor="val/F1", mode="max")
    r = train(cfg)
    assert np.isfinite(r["val/loss"])

    from rsvision.tasks.dense import DenseTask

    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    assert DenseTask.loss(type("T", (), {"ignore_index": 255})(), logits, torch.full((1, 4, 4), 255)).item() == 0.0
