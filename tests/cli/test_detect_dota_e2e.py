"""Real DOTA images end to end: dota split -> detect train (a few steps) -> predict full image -> merge -> eval.

Tiny widths and 256 px patches keep it to seconds; the model is barely trained, so the test checks
that every stage runs on real data and that the evaluations agree on what they evaluated, not
accuracy. Skips when ``../shared/data/dota`` is absent (fails under RSVISION_REQUIRE_SHARED=1).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rsvision.cli import app
from tests.conftest import shared_path

runner = CliRunner()
IMAGES = ("P1888", "P0075")  # the two smallest full images (712x557, 451x839)


def _ok(r):
    assert r.exit_code == 0, r.output[-3000:] + repr(r.exception)
    return r


def test_dota_split_train_predict_merge_eval(tmp_path):
    dota = shared_path("data", "dota")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full = tmp_path / "full"
        (full / "images").mkdir(parents=True)
        (full / "labelTxt").mkdir()
        for name in IMAGES:
            shutil.copy(dota / "images" / f"{name}.png", full / "images")
            shutil.copy(dota / "labelTxt" / f"{name}.txt", full / "labelTxt")
        split = tmp_path / "split" / "train"
        _ok(runner.invoke(app, ["dota", "split", "--img-dir", str(full / "images"), "--ann-dir", str(full / "labelTxt"),
                                "--out", str(split), "--sizes", "256", "--gaps", "64"]))
        assert any((split / "images").iterdir()) and any((split / "annfiles").iterdir())

        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({
            "data": {"format": "dota", "img_size": 256, "batch_size": 2, "num_workers": 0},
            "model": {"name": "lsknet_t", "fpn_channels": 32, "fc_channels": 64,
                      "kwargs": {"rpn": {"nms_pre": 300, "max_per_img": 150}, "rcnn": {"max_per_img": 100}}},
            "optim": {"warmup_steps": 2},
            "trainer": {"progress": "none", "threads": 1, "device": "cpu", "max_epochs": 1,
                        "extra": {"limit_train_batches": 3}},
        }))
        run = tmp_path / "run"
        _ok(runner.invoke(app, ["detect", "train", "--config", str(cfg), "--data", str(split), "--out", str(run)]))
        ckpt = run / "last.ckpt"
        hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
        assert len(hp["class_names"]) == 15  # DOTA-v1.0 classes by default

        # whole-image prediction (windows merged inside) and evaluation like the DOTA server
        res_json = tmp_path / "eval.json"
        _ok(runner.invoke(app, ["detect", "eval", "--checkpoint", str(ckpt), "--img-dir", str(full / "images"),
                                "--ann-dir", str(full / "labelTxt"), "--window", "256", "--overlap", "64",
                                "--json", str(res_json), "--device", "cpu"]))
        res = json.loads(res_json.read_text())
        assert res["task"] == "detect" and 0.0 <= res["mAP"] <= 1.0
        assert sum(res["num_gt"].values()) > 50  # the real objects of both images were evaluated

        # patch-level Task1 files -> dota merge -> dota eval scores the same ground truth
        patches = tmp_path / "patch_dets"
        _ok(runner.invoke(app, ["detect", "predict", "--checkpoint", str(ckpt), str(split / "images"), "--out",
                                str(patches), "--score-thr", "0.05", "--no-png", "--device", "cpu"]))
        merged = tmp_path / "merged"
        _ok(runner.invoke(app, ["dota", "merge", "--dets", str(patches), "--out", str(merged)]))
        j2 = tmp_path / "eval2.json"
        _ok(runner.invoke(app, ["dota", "eval", "--dets", str(merged), "--ann-dir", str(full / "labelTxt"),
                                "--json", str(j2)]))
        res2 = json.loads(j2.read_text())
        assert res2["num_gt"] == res["num_gt"] and 0.0 <= res2["mAP"] <= 1.0
    finally:
        torch.set_num_threads(n)
