"""`rsvision classify train|eval|predict` and `rsvision demo` on tiny synthetic data (CONVENTIONS CLI + JSON)."""
from __future__ import annotations

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from rsvision.cli import app
from rsvision.data.synthetic.scenes import make_scene_dataset
from rsvision.errors import ConfigError, DataError

runner = CliRunner()
FAST = ["--set", "trainer.progress=none", "--set", "trainer.threads=1", "--set", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("cls")
    make_scene_dataset(base / "data", num_classes=3, per_class=8, size=24)
    cfg = base / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"img_size": 16, "batch_size": 4}, "model": {"name": "resnet18"},
                                   "optim": {"lr": "3e-3"}}))
    r = runner.invoke(app, ["classify", "train", "--config", str(cfg), "--data", str(base / "data"),
                            "--model", "test_resnet", "--epochs", "2", "--out", str(base / "run"), "--seed", "1",
                            *FAST])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert re.search(r"best: \S+best\.ckpt \(val/\w+ = \d\.\d{4}\)", r.output), r.output
    return base


def test_train_writes_run_directory(trained):
    run = trained / "run"
    for f in ("best.ckpt", "last.ckpt", "config.yaml", "metrics.csv", "curves.png", "test_metrics.json"):
        assert (run / f).exists(), f
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # CLI overrides beat the YAML, and the resolved config records everything
    assert cfg["model"]["name"] == "test_resnet" and cfg["trainer"]["max_epochs"] == 2
    assert cfg["trainer"]["seed"] == 1 and cfg["optim"]["lr"] == 3e-3 and cfg["data"]["img_size"] == 16
    assert len(cfg["data"]["mean"]) == 3 and cfg["data"]["classes"] == ["field", "forest", "water"]


def test_eval_json_and_confusion_png(trained):
    out = trained / "eval.json"
    r = runner.invoke(app, ["classify", "eval", "--checkpoint", str(trained / "run" / "best.ckpt"),
                            "--data", str(trained / "data"), "--split", "test", "--json", str(out)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "overall_accuracy" in r.output and "kappa" in r.output
    m = json.loads(out.read_text())
    assert m["task"] == "classify" and m["classes"] == ["field", "forest", "water"]
    for k in ("overall_accuracy", "average_accuracy", "kappa"):
        assert -1 <= m[k] <= 1 and (k == "kappa" or m[k] >= 0)
    assert set(m["per_class"]) == set(m["classes"])
    assert all(set(v) == {"accuracy", "support"} for v in m["per_class"].values())
    cm = m["confusion_matrix"]
    assert len(cm) == 3 and sum(map(sum, cm)) == sum(v["support"] for v in m["per_class"].values()) == 6
    assert (trained / "eval_confusion.png").stat().st_size > 1000
    # same numbers as the end-of-training test evaluation
    t = json.loads((trained / "run" / "test_metrics.json").read_text())
    assert t["confusion_matrix"] == cm


def test_predict_topk_files_folders_globs(trained):
    ck = str(trained / "run" / "best.ckpt")
    d = trained / "data"
    r = runner.invoke(app, ["classify", "predict", "--checkpoint", ck, str(d / "water"),
                            str(d / "forest" / "forest_000.png"), str(d / "field" / "*_00[0-1].png"),
                            "--top-k", "2", "--out", str(trained / "pred")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    preds = json.loads((trained / "pred" / "predictions.json").read_text())["predictions"]
    assert len(preds) == 8 + 1 + 2 and all(len(p["top"]) == 2 for p in preds)
    assert "water_000.png" in r.output
    r = runner.invoke(app, ["classify", "predict", "--checkpoint", ck, str(d / "nothing*.png")])
    assert isinstance(r.exception, DataError)


def test_resume_continues_the_run(trained, tmp_path):
    args = ["classify", "train", "--data", str(trained / "data"), "--model", "test_resnet", "--img-size", "16",
            "--batch-size", "4", "--out", str(tmp_path / "run"), *FAST]
    import torch

    assert runner.invoke(app, [*args, "--epochs", "1"]).exit_code == 0
    steps = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"]
    r = runner.invoke(app, [*args, "--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    ck = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert ck["epoch"] == 1 and ck["global_step"] == 2 * steps
    epochs = {line.split(",")[0] for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]}
    assert epochs == {"0", "1"}


def test_corrupt_image_at_eval(trained, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    victim = data / "water" / "water_003.png"
    victim.write_bytes(victim.read_bytes()[:50])
    ck = str(trained / "run" / "best.ckpt")
    r = runner.invoke(app, ["classify", "eval", "--checkpoint", ck, "--data", str(data)])
    assert isinstance(r.exception, DataError) and "water_003.png" in str(r.exception)
    with pytest.warns(UserWarning, match="water_003.png"):
        r = runner.invoke(app, ["classify", "eval", "--checkpoint", ck, "--data", str(data), "--skip-bad",
                                "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert json.loads((tmp_path / "m.json").read_text())["num_samples"] == 23


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  img_sise: 32\n")
    r = runner.invoke(app, ["classify", "train", "--config", str(bad)])
    assert isinstance(r.exception, ConfigError) and "data.img_sise" in str(r.exception)
    assert "bad.yaml" in str(r.exception)


def test_demo_group_wiring():
    r = runner.invoke(app, ["demo", "--help"])
    assert r.exit_code == 0 and "classify" in r.output


@pytest.mark.slow  # about a minute on 2 CPU cores
def test_demo_classify_end_to_end(tmp_path):
    r = runner.invoke(app, ["demo", "classify", "--out", str(tmp_path), "--threads", "1"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert (tmp_path / "run" / "confusion_matrix.png").exists() and "predictions" in r.output
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["overall_accuracy"] > 0.7
