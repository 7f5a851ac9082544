"""``rsvision detect train|eval|predict`` end to end on tiny synthetic data (tiny widths, 96-128 px)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rsvision.cli import app

runner = CliRunner()

TINY_CFG = {
    "data": {"classes": ["ship", "vehicle", "tank"], "img_size": 128, "batch_size": 2, "num_workers": 0,
             "rect_classes": ["tank"]},
    "model": {"name": "lsknet_t", "fpn_channels": 32, "fc_channels": 64,
              "kwargs": {"backbone_drop_rate": 0.0, "backbone_drop_path_rate": 0.0,
                         "rpn": {"nms_pre": 200, "max_per_img": 100}, "rcnn": {"max_per_img": 50}}},
    "optim": {"warmup_steps": 2},
    "trainer": {"progress": "none", "threads": 1, "device": "cpu", "extra": {"limit_train_batches": 2}},
    "eval": {"window": 128, "overlap": 32},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from rsvision.data.synthetic.objects import make_dota_dataset

    root = tmp_path_factory.mktemp("synobb")
    make_dota_dataset(root / "train", 4, 128, seed=0, num_objects=4)
    make_dota_dataset(root / "val", 2, 128, seed=1, num_objects=4)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CFG))
    r = runner.invoke(app, ["detect", "train", "--config", str(cfg), "--data", str(dataset), "--epochs", "1",
                            "--out", str(out), "--seed", "0"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    # the end-of-training summary every task prints: best checkpoint with the metric that chose it, wall time
    assert re.search(r"best: \S+best\.ckpt \(val/mAP = \d\.\d{4}\)\s+last: \S+last\.ckpt\s+wall time", r.output), r.output
    yield out, cfg
    torch.set_num_threads(n)


def test_help_lists_commands():
    r = runner.invoke(app, ["detect", "--help"])
    assert r.exit_code == 0
    for c in ("train", "eval", "predict"):
        assert c in r.output


def test_train_writes_run_dir_and_resumes(trained, dataset):
    out, cfg = trained
    for f in ("best.ckpt", "last.ckpt", "config.yaml", "metrics.csv"):
        assert (out / f).is_file(), f
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["fpn_channels"] == 32 and resolved["trainer"]["max_epochs"] == 1
    assert resolved["trainer"]["monitor"] == "val/mAP"
    assert resolved["data"]["classes"] == ["ship", "vehicle", "tank"] and resolved["data"]["mean"] is not None
    hp = torch.load(out / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert hp["class_names"] == ["ship", "vehicle", "tank"] and hp["img_size"] == 128
    assert hp["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 0
    r = runner.invoke(app, ["detect", "train", "--config", str(cfg), "--data", str(dataset), "--epochs", "2",
                            "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    last = torch.load(out / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 4  # continued, not restarted


def test_eval_json_follows_conventions(trained, dataset, tmp_path):
    out, _ = trained
    j = tmp_path / "m.json"
    r = runner.invoke(app, ["detect", "eval", "--checkpoint", str(out / "best.ckpt"), "--img-dir",
                            str(dataset / "val" / "images"), "--ann-dir", str(dataset / "val" / "labelTxt"),
                            "--json", str(j), "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads(j.read_text())
    assert res["task"] == "detect" and res["metric"] == "voc07" and res["iou_thr"] == 0.5
    assert 0.0 <= res["mAP"] <= 1.0 and set(res["AP"]) == {"ship", "vehicle", "tank"}
    assert "mAP" in r.output
    images = sorted((dataset / "val" / "images").iterdir())  # per-image records (rsvision.tasks.per_image)
    assert sorted(Path(p["image"]) for p in res["per_image"]) == images
    for p in res["per_image"]:
        assert p["id"] == Path(p["image"]).stem and set(p["errors"]) == set(p["FP"]) == set(p["missed"])
        assert all(p["errors"][c] == p["FP"][c] + p["missed"][c] for c in p["errors"])
    for c, n in res["num_gt"].items():
        assert sum(p["missed"].get(c, 0) for p in res["per_image"]) <= n


def test_predict_png_and_geotiff(trained, dataset, tmp_path):
    from rsvision.data.synthetic.objects import make_geotiff_scene

    out, _ = trained
    tif, _ = make_geotiff_scene(tmp_path / "scene.tif", 300, 260, seed=5, density=80)
    img = next((dataset / "val" / "images").glob("*.png"))
    pred = tmp_path / "pred"
    r = runner.invoke(app, ["detect", "predict", "--checkpoint", str(out / "best.ckpt"), str(img), str(tif),
                            "--out", str(pred), "--score-thr", "0.0", "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert (pred / "scene.png").is_file() and (pred / f"{img.stem}.png").is_file()
    gj = json.loads((pred / "scene.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    assert not (pred / f"{img.stem}.geojson").exists()  # plain PNG: no CRS, no GeoJSON
    rows = [line.split() for p in pred.glob("Task1_*.txt") for line in p.read_text().splitlines()]
    assert {p.name for p in pred.glob("Task1_*.txt")} <= {"Task1_ship.txt", "Task1_vehicle.txt", "Task1_tank.txt"}
    assert rows and all(len(r) == 10 for r in rows) and {r[0] for r in rows} <= {"scene", img.stem}


def test_predict_band_mismatch_is_a_clear_error(trained, tmp_path):
    import numpy as np
    import rasterio

    from rsvision.errors import BandMismatchError

    out, _ = trained
    p = tmp_path / "two.tif"
    with rasterio.open(p, "w", driver="GTiff", width=64, height=64, count=2, dtype="uint16") as dst:
        dst.write(np.zeros((2, 64, 64), np.uint16))
    r = runner.invoke(app, ["detect", "predict", "--checkpoint", str(out / "best.ckpt"), str(p), "--out",
                            str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code != 0 and isinstance(r.exception, BandMismatchError)
    assert "2 bands" in str(r.exception) and "two.tif" in str(r.exception)


def test_demo_detect_smoke(tmp_path):
    """The default demo's plumbing with a seconds-long budget (accuracy is the benchmark's job)."""
    from rsvision.cli import demo

    assert demo.DEFAULT_DEMO == "detect"
    r = runner.invoke(app, ["demo", "detect", "--out", str(tmp_path), "--minutes", "0.02", "--train-images", "4",
                            "--scene-size", "256"])
    assert r.exit_code == 0, r.output[-3000:] + repr(r.exception)
    assert "mAP@0.5" in r.output
    assert (tmp_path / "prediction" / "scene.png").is_file()
    gj = json.loads((tmp_path / "prediction" / "scene.geojson").read_text())
    assert gj["crs"]["properties"]["name"].endswith("32633")


def test_presets_set_widths_and_proposals_explicit_values_win(tmp_path):
    from rsvision.cli.detect import app as detect_app  # noqa: F401  (the CLI lists the same names)
    from rsvision.config import load_config
    from rsvision.errors import ConfigError
    from rsvision.tasks.detection import DETECT_PRESETS, DetectConfig

    tiny = load_config(None, DetectConfig, {"model.preset": "tiny"})
    assert tiny.model.fpn_channels is None  # unset until the preset is applied (build_dict / train)
    tiny.model.apply_preset()
    assert (tiny.model.fpn_channels, tiny.model.fc_channels) == (64, 256)
    assert tiny.model.build_dict()["rpn"] == {"nms_pre": 500, "max_per_img": 300}
    own = load_config(None, DetectConfig, {"model.preset": "small", "model.fpn_channels": 96,
                                           "model.kwargs": {"rpn": {"max_per_img": 50}}}).model.apply_preset()
    assert (own.fpn_channels, own.fc_channels) == (96, 512)
    assert own.build_dict()["rpn"] == {"nms_pre": 1000, "max_per_img": 50}
    published = load_config(None, DetectConfig, {}).model.apply_preset()
    assert published.preset == "published" and published.fpn_channels == 256
    with pytest.raises(ConfigError, match=r"--preset\) must be one of published, small, tiny, got 'huge'"):
        load_config(None, DetectConfig, {"model.preset": "huge"})
    help_text = runner.invoke(app, ["detect", "train", "--help"]).output
    assert all(name in help_text for name in DETECT_PRESETS)


def test_train_with_preset(dataset, tmp_path):
    torch.set_num_threads(1)
    cfg = {k: v for k, v in TINY_CFG.items()}
    cfg["model"] = {"name": "lsknet_t", "kwargs": {"backbone_drop_path_rate": 0.0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["detect", "train", "--config", str(tmp_path / "c.yaml"), "--data", str(dataset),
                            "--epochs", "1", "--preset", "tiny", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert resolved["preset"] == "tiny" and resolved["fpn_channels"] == 64 and resolved["fc_channels"] == 256
    hp = torch.load(tmp_path / "run" / "best.ckpt", weights_only=True)["hyper_parameters"]["model"]
    assert hp["fpn_channels"] == 64 and hp["rpn"]["max_per_img"] == 300
