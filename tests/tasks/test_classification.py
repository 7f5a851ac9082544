"""Classification task: metrics, mixing, tiny training runs, exact resume, multi-label, checkpoints, DDP."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from rsvision.data.synthetic.scenes import make_multilabel_dataset, make_scene_dataset
from rsvision.tasks import load_task as load_classifier, predict, train as train_classifier
from rsvision.tasks.classification import ClassifyConfig, classification_metrics, mix_batch


def predict_images(task, paths, **options):
    return list(predict(task, paths, **options))
from rsvision.errors import CheckpointError

TINY = "test_resnet"  # timm's ~0.4 M-parameter test model: fast, and any timm name must work


def _cfg(root, out, epochs=2, **data):
    cfg = ClassifyConfig()
    cfg.data.root, cfg.data.img_size, cfg.data.batch_size = str(root), 24, 8
    for k, v in data.items():
        setattr(cfg.data, k, v)
    cfg.model.name = TINY
    cfg.optim.lr = 3e-3
    t = cfg.trainer
    t.out, t.max_epochs, t.progress, t.threads, t.log_every_n_steps = str(out), epochs, "none", 1, 1
    return cfg


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scene_dataset(root, num_classes=3, per_class=10, size=32, seed=0)
    return root


def test_metrics_match_torchmetrics():
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_cohen_kappa

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (300,), generator=g)
    p = torch.where(torch.rand(300, generator=g) < 0.6, y, torch.randint(0, 5, (300,), generator=g))
    cm = torch.bincount(y * 5 + p, minlength=25).view(5, 5).numpy()
    m = classification_metrics(cm, list("abcde"))
    assert m["overall_accuracy"] == pytest.approx(float(multiclass_accuracy(p, y, 5, average="micro")), abs=1e-6)
    assert m["average_accuracy"] == pytest.approx(float(multiclass_accuracy(p, y, 5, average="macro")), abs=1e-6)
    assert m["kappa"] == pytest.approx(float(multiclass_cohen_kappa(p, y, 5)), abs=1e-6)
    assert sum(v["support"] for v in m["per_class"].values()) == 300


def test_mix_batch_targets_are_distributions():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    y = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    for mixup, cutmix in [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)]:
        xm, ym = mix_batch(x, y, mixup, cutmix)
        assert xm.shape == x.shape and torch.allclose(ym.sum(1), torch.ones(6))
    xm, ym = mix_batch(x, y, 0.0, 0.0)
    assert xm is x and ym is y


def test_train_eval_predict_and_checkpoint_contents(scenes, tmp_path):
    out = tmp_path / "run"
    res = train_classifier(_cfg(scenes, out, epochs=3))
    for f in ("best.ckpt", "last.ckpt", "config.yaml", "metrics.csv", "curves.png", "splits.csv",
              "test_metrics.json", "confusion_matrix.png"):
        assert (out / f).exists(), f
    m = res["test"]
    assert 0 <= m["overall_accuracy"] <= 1 and m["overall_accuracy"] > 0.5  # 3 easy classes
    hp = torch.load(out / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert hp["model"]["name"] == TINY and hp["classes"] == sorted(["water", "forest", "field"])
    assert hp["in_chans"] == 3 and len(hp["mean"]) == 3 and len(hp["std"]) == 3 and hp["img_size"] == 24
    task = load_classifier(out / "best.ckpt")
    preds = predict_images(task, sorted((scenes / "forest").iterdir())[:3], top_k=2)
    assert [len(p["top"]) for p in preds] == [2, 2, 2]
    assert all(abs(sum(p["probs"]) - 1) < 1e-5 for p in preds)
    with pytest.raises(CheckpointError):
        load_classifier(out / "metrics.csv")


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
])
def test_resume_after_kill_gives_the_same_weights(scenes, tmp_path, device):
    """On CUDA bitwise resume needs ``deterministic`` (cuDNN's default weight-gradient kernels
    accumulate in a run-dependent order; measured on an H100: the conv1 weights differed without it)."""
    import lightning as L

    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 2 and batch_idx == 1:
                raise RuntimeError("simulated kill")

    full = tmp_path / "full"
    cfg = _cfg(scenes, full, epochs=3)
    cfg.optim.mixup, cfg.optim.ema, cfg.model.drop_rate = 0.4, True, 0.2  # every random stream in play
    cfg.trainer.device = device
    if device == "cuda":
        cfg.trainer.extra = {"deterministic": True}
    train_classifier(cfg)
    part = tmp_path / "part"
    cfg.trainer.out = str(part)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_classifier(cfg, callbacks=[Kill()])
    # the killed run left its epoch-1 checkpoint (extra callbacks used to replace rsvision's own, so
    # this test resumed from nothing and passed trivially)
    assert torch.load(part / "last.ckpt", weights_only=True)["epoch"] == 1
    cfg.trainer.resume = True
    train_classifier(cfg)
    a = torch.load(full / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(part / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    rows = (part / "metrics.csv").read_text().splitlines()
    assert rows == (full / "metrics.csv").read_text().splitlines()


def test_time_budget_stops_at_an_epoch_end(scenes, tmp_path):
    cfg = _cfg(scenes, tmp_path / "run", epochs=1000)
    cfg.trainer.max_time = 0.1  # minutes
    cfg.optim.schedule = "time"
    res = train_classifier(cfg)
    ck = torch.load(res["last"], weights_only=True)
    assert 0 < ck["epoch"] < 999 and "test" in res
    lrs = [float(r.split(",")[1]) for r in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
           if r.split(",")[1]]
    assert lrs[-1] < 0.5 * max(lrs)  # the cosine followed the clock, not the 1000 epochs


def test_multilabel_and_multiband(tmp_path):
    csv_path, names = make_multilabel_dataset(tmp_path / "ml", num_classes=3, count=24, size=32)
    cfg = _cfg(tmp_path / "ml", tmp_path / "run", epochs=1, csv=str(csv_path), multilabel=True)
    cfg.optim.cutmix = 1.0
    m = train_classifier(cfg)["test"]
    assert {"mAP", "f1_micro", "f1_macro", "per_class"} <= m.keys() and 0 <= m["mAP"] <= 1
    make_scene_dataset(tmp_path / "ms", num_classes=2, per_class=6, size=24, bands=7, dtype="uint16")
    res = train_classifier(_cfg(tmp_path / "ms", tmp_path / "run7", epochs=1))
    task = load_classifier(res["last"])
    assert task.hparams.in_chans == 7 and len(task.hparams.mean) == 7


@pytest.mark.slow  # ~15-40 s: two fresh interpreters import torch + lightning
def test_ddp_two_cpu_processes(scenes, tmp_path):
    """Two-process DDP (gloo) for a couple of steps: both ranks train, rank 0 writes the run dir."""
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from rsvision.tasks import train as train_classifier
        from rsvision.tasks.classification import ClassifyConfig
        cfg = ClassifyConfig()
        cfg.data.root, cfg.data.img_size, cfg.data.batch_size = {str(scenes)!r}, 16, 4
        cfg.model.name = {TINY!r}
        t = cfg.trainer
        t.out, t.max_epochs, t.progress, t.device = {str(tmp_path / 'run')!r}, 1, "none", "cpu"
        t.strategy, t.devices = "ddp", 2
        train_classifier(cfg, limit_train_batches=2, limit_val_batches=1)
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 2
    assert (tmp_path / "run" / "test_metrics.json").exists()


def test_fast_lsknet_training_keeps_keys_and_loads_plain(scenes, tmp_path):
    """model.fast trains through optimize_for_training; the checkpoint loads into a plain model."""
    import timm

    from rsvision.errors import ConfigError
    from rsvision.models.fast import DepthwiseConv2d

    cfg = _cfg(scenes, tmp_path / "run", epochs=1)
    cfg.model.name, cfg.model.fast = "lsknet_t", True
    res = train_classifier(cfg)
    task = load_classifier(res["last"])
    assert any(isinstance(m, DepthwiseConv2d) for m in task.model.modules())
    plain = timm.create_model("lsknet_t", num_classes=3)
    plain.load_state_dict(task.model.state_dict())  # same keys and shapes
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), task.model.eval()(x), atol=1e-4)
    cfg = _cfg(scenes, tmp_path / "run2", epochs=1)
    cfg.model.fast = True  # TINY is not an LSKNet / HAKSNet
    with pytest.raises(ConfigError, match="model.fast"):
        train_classifier(cfg)


def test_eval_size_is_stored_and_overridable(scenes, tmp_path):
    """Train on 24 px crops of 32 px images, evaluate whole images at 40 px (FixRes-style)."""
    from rsvision.tasks.classification import eval_dataset

    res = train_classifier(_cfg(scenes, tmp_path / "run", epochs=1, resize=32, eval_size=40))
    assert torch.load(res["best"], weights_only=True)["hyper_parameters"]["eval_size"] == 40
    task = load_classifier(res["best"])
    split = Path(res["best"]).parent / "splits.csv"
    assert eval_dataset(task, str(scenes), split, "test")[0]["image"].shape == (3, 40, 40)
    assert eval_dataset(task, str(scenes), split, "test", eval_size=28)[0]["image"].shape == (3, 28, 28)
    task.hparams.pop("eval_size")  # a checkpoint from before eval_size: centre crop of img_size
    assert eval_dataset(task, str(scenes), split, "test")[0]["image"].shape == (3, 24, 24)


def test_dihedral_tta_is_orientation_invariant(scenes, tmp_path):
    from torch.utils.data import DataLoader

    from rsvision.tasks import evaluate
    from rsvision.tasks.classification import dihedral_tta, eval_dataset

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        p = dihedral_tta(net, x)
        assert torch.allclose(p.sum(-1), torch.ones(2), atol=1e-6)
        assert not torch.allclose(net(x).softmax(-1), net(torch.rot90(x, 1, (-2, -1))).softmax(-1), atol=1e-3)
        for t in (torch.rot90(x, 1, (-2, -1)), torch.rot90(x, 3, (-2, -1)), x.flip(-2), x.transpose(-1, -2)):
            assert torch.allclose(dihedral_tta(net, t), p, atol=1e-5)
    res = train_classifier(_cfg(scenes, tmp_path / "run", epochs=1))
    task = load_classifier(res["best"])
    ds = eval_dataset(task, str(scenes), Path(res["best"]).parent / "splits.csv", "test", False)
    m = evaluate(task, DataLoader(ds, batch_size=4), tta=True)
    assert 0 <= m["overall_accuracy"] <= 1 and m["num_samples"] == len(ds) == sum(map(sum, m["confusion_matrix"]))


def test_shipped_rsscn7_recipe_on_the_real_data(tmp_path):
    """configs/rsscn7_lsknet_t.yaml on ../shared/data/rsscn7 for a few steps: the stratified
    60/20/20 split, whole-scene eval at eval_size, and a test pass over all 112 test images."""
    from collections import Counter

    from rsvision.config import load_config
    from rsvision.data.classification import read_split_file
    from tests.conftest import ROOT, shared_path

    data = shared_path("data", "rsscn7", "train")
    cfg = load_config(ROOT / "configs" / "rsscn7_lsknet_t.yaml", ClassifyConfig)
    assert cfg.data.eval_size and cfg.data.resize > cfg.data.img_size and cfg.model.fast
    cfg.data.root = str(data)
    t = cfg.trainer
    t.out, t.max_epochs, t.progress, t.threads = str(tmp_path / "run"), 1, "none", 1
    t.extra = {"limit_train_batches": 2, "limit_val_batches": 1}
    res = train_classifier(cfg)
    table = read_split_file(tmp_path / "run" / "splits.csv")  # {class/image: split}
    per = Counter((split, Path(rel).parts[0]) for rel, split in table.items())
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    assert len(classes) == 7 and all(per[("train", c)] == 48 and per[("val", c)] == 16 and per[("test", c)] == 16
                                     for c in classes), per
    assert res["test"]["num_samples"] == 112
    assert torch.load(res["best"], weights_only=True)["hyper_parameters"]["eval_size"] == cfg.data.eval_size
