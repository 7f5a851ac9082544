"""Multi-label classification of real S1 / S2 pairs (reBEN) through the classification task with SkySense V2."""
from __future__ import annotations

import json

import pytest
import torch

from rsvision.errors import ConfigError
from rsvision.tasks import evaluate, load_task, train
from rsvision.tasks.classification import ClassifyConfig
from tests.conftest import shared_path

SMALL = {"embed_dim": 16, "depths": [1, 1, 2, 2], "head_dim": 8}  # skysense_v2_tiny narrowed for a CPU test


def _cfg(root, out, modalities=None):
    cfg = ClassifyConfig()
    d = cfg.data
    d.root, d.format, d.img_size, d.batch_size = str(root), "pairs", 64, 8
    d.modalities = modalities
    cfg.model.name, cfg.model.kwargs = "skysense_v2_tiny", dict(SMALL)
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-3, 0
    t = cfg.trainer
    t.out, t.max_epochs, t.progress, t.threads, t.log_every_n_steps = str(out), 2, "none", 1, 1
    return cfg


@pytest.mark.parametrize("modalities", [None, {"s1": ["VV", "VH"]}], ids=["s2+s1", "s1"])
def test_train_eval_on_reben_pairs(tmp_path, modalities):
    root = shared_path("data", "multimodal", "reben_configilm")
    out = tmp_path / "run"
    res = train(_cfg(root, out, modalities))
    m = json.loads((out / "test_metrics.json").read_text())
    assert {"mAP", "f1_micro", "f1_macro", "per_class"} <= m.keys() and m["num_samples"] == 8
    assert all(0 <= m[k] <= 1 for k in ("mAP", "f1_micro", "f1_macro")) and len(m["per_class"]) == 19
    hp = torch.load(out / "best.ckpt", weights_only=True)["hyper_parameters"]
    mods = modalities or {"s2": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
                          "s1": ["VV", "VH"]}
    assert hp["modalities"] == mods and hp["multilabel"] is True
    assert hp["bands"] == [f"{k}:{b}" for k, bs in mods.items() for b in bs]
    assert len(hp["mean"]) == len(hp["std"]) == len(hp["bands"])
    task = load_task(res.checkpoint)
    assert task.model.modalities == {k: tuple(v) for k, v in mods.items()}
    again = evaluate(task, root, split="test")
    assert again["mAP"] == pytest.approx(m["mAP"], abs=1e-6) and again["f1_micro"] == pytest.approx(m["f1_micro"], abs=1e-6)
    if modalities is None:  # trained on S1 + S2, tested on S2 only (the missing-modality row)
        s2 = evaluate(task, root, split="test", modalities=["s2"])
        assert 0 <= s2["mAP"] <= 1 and s2["num_samples"] == 8 and s2["mAP"] != again["mAP"]
        with pytest.raises(ConfigError, match="hr"):
            evaluate(task, root, split="test", modalities=["hr"])


def test_pairs_refuse_mixing(tmp_path):
    root = shared_path("data", "multimodal", "reben_configilm")
    cfg = _cfg(root, tmp_path / "run")
    cfg.optim.mixup = 0.4
    with pytest.raises(ConfigError, match="mixup"):
        train(cfg)
