"""SSL pretraining: InfoNCE and EMA by hand, multi-crop views, loss falls on a handful of real patches, resume, encoder reuse."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rsvision.data.multimodal import MultiCropDataset, MultiCropViews, MultimodalDataset, read_dataset
from rsvision.tasks import load_task, train
from rsvision.tasks.ssl import SSLConfig, SSLTask, info_nce
from tests.conftest import shared_path

SMALL = {"embed_dim": 16, "depths": [1, 1, 2, 2], "head_dim": 8}


def _cfg(root, out, epochs):
    cfg = SSLConfig()
    d = cfg.data
    d.root, d.img_size, d.local_size, d.batch_size = str(root), 32, 16, 8
    cfg.model.kwargs = dict(SMALL)
    cfg.model.hidden_dim, cfg.model.proj_dim, cfg.model.num_queries = 64, 32, 4
    cfg.optim.lr, cfg.optim.warmup_steps = 2e-3, 0
    t = cfg.trainer
    t.out, t.max_epochs, t.progress, t.threads, t.log_every_n_steps = str(out), epochs, "none", 1, 1
    return cfg


def test_info_nce_hand_computed():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    tau = 0.5
    # row 0: logits (2, sqrt(.5)*2); row 1: logits (0, sqrt(.5)*2), targets 0 and 1
    r0 = -2 + math.log(math.exp(2) + math.exp(math.sqrt(0.5) * 2))
    r1 = -math.sqrt(0.5) * 2 + math.log(1 + math.exp(math.sqrt(0.5) * 2))
    assert float(info_nce(s, t, tau)) == pytest.approx((r0 + r1) / 2, rel=1e-6)


def test_views_crop_all_modalities_alike_and_depend_only_on_the_key():
    root = shared_path("data", "multimodal", "ssl4eo_s12")
    base = MultimodalDataset(read_dataset(root)[:1], {"a": ["B02", "VV"], "b": ["B02", "VV"]})
    base.stats = {m: ([0.0, 0.0], [1.0, 1.0]) for m in ("a", "b")}
    ds = MultiCropDataset(base, MultiCropViews(32, 16, 2, 3), seed=5)
    item = ds[(0, 3)]
    assert len(item["global"]) == 2 and len(item["local"]) == 3
    assert item["global"][0]["a"].shape == (2, 32, 32) and item["local"][0]["b"].shape == (2, 16, 16)
    for v in item["global"] + item["local"]:
        torch.testing.assert_close(v["a"], v["b"], rtol=0, atol=0)
    again, other = ds[(0, 3)], ds[(0, 4)]
    torch.testing.assert_close(again["local"][2]["a"], item["local"][2]["a"], rtol=0, atol=0)
    assert not torch.equal(other["global"][0]["a"], item["global"][0]["a"])
    with pytest.raises(Exception, match="n_global"):
        MultiCropViews(n_global=1)


def test_teacher_is_the_ema_of_the_student():
    task = SSLTask(model={"name": "skysense_v2_tiny", "kwargs": SMALL, "hidden_dim": 16, "proj_dim": 8,
                          "num_queries": 2, "teacher_momentum": 0.9},
                   data={"modalities": {"s1": ["VV", "VH"]}, "bands": ["s1:VV", "s1:VH"], "mean": [0, 0], "std": [1, 1]})
    old_t = [p.clone() for p in task.teacher.parameters()]
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(1.0)
    new_s = [p.clone() for p in task.model.parameters()]
    task.on_train_batch_end(None, None, 0)
    for t, o, s in zip(task.teacher.parameters(), old_t, new_s):
        torch.testing.assert_close(t, 0.9 * o + 0.1 * s)


@pytest.mark.slow  # ~40 s on 2 loaded cores: 14 epochs of a tiny encoder on 8 real patches
def test_ssl_loss_falls_on_a_handful_of_patches_and_the_encoder_is_reusable(tmp_path):
    import pandas as pd

    from rsvision.models import load_checkpoint

    root = shared_path("data", "multimodal", "reben_configilm")
    out = tmp_path / "ssl"
    cfg = _cfg(root, out, epochs=14)
    cfg.data.img_size, cfg.data.local_size = 48, 24
    # one step per epoch: a teacher that follows within a few steps, a short warmup (measured: with
    # momentum 0.996 and no warmup the 14-step curve is still at chance)
    cfg.model.teacher_momentum, cfg.optim.lr, cfg.optim.warmup_steps = 0.9, 1e-3, 3
    res = train(cfg)
    m = pd.read_csv(out / "metrics.csv").dropna(subset=["train/loss_epoch"]).groupby("epoch").first()
    loss, image, query = m["train/loss_epoch"].to_numpy(), m["train/image_epoch"], m["train/query_epoch"]
    # the teacher starts as a copy of the student, so the first epochs rise before learning sets in
    assert loss[-3:].mean() < loss[1:5].mean()
    assert image.iloc[-3:].mean() < math.log(8) - 0.3 and query.iloc[-3:].mean() < math.log(8 * 4) - 0.3  # below chance
    enc = torch.load(out / "encoder.pth", weights_only=True)
    assert enc["meta"]["modalities"] == cfg.data.modalities
    task = load_task(res.checkpoint)
    import timm

    fresh = timm.create_model("skysense_v2_tiny", num_classes=19, modalities=cfg.data.modalities, **SMALL)
    for path in (out / "encoder.pth", res.checkpoint):
        report = load_checkpoint(fresh, path)
        assert not [k for k in report.missing if not k.startswith("head.")], report.missing[:5]
    sd = fresh.state_dict()
    for k, v in task.model.encoder.state_dict().items():
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0)


@pytest.mark.slow  # ~30 s: three short runs
def test_ssl_resume_after_kill_gives_the_same_weights(tmp_path):
    import lightning as L

    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated kill")

    root = shared_path("data", "multimodal", "reben_configilm")
    cfg = _cfg(root, tmp_path / "full", epochs=2)
    cfg.data.batch_size = 4  # two steps per epoch
    train(cfg)
    cfg.trainer.out = str(tmp_path / "part")
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, callbacks=[Kill()])
    assert torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)["epoch"] == 0
    cfg.trainer.resume = True
    train(cfg)
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_views_are_finite_on_real_pairs():
    root = shared_path("data", "multimodal", "bigearthnet_v1_configilm")
    base = MultimodalDataset(read_dataset(root)[:2], {"s2": ["B02", "B8A"], "s1": ["VV"]})
    base.stats = base.band_stats()
    item = MultiCropDataset(base, MultiCropViews(48, 24), seed=0)[1]
    assert all(np.isfinite(v[m].numpy()).all() for v in item["global"] + item["local"] for m in v)


def test_ssl_on_scene_images_as_the_hr_modality(tmp_path):
    """data.format images: RSSCN7 class folders (labels unused), the split file's train images only."""
    import timm

    from rsvision.data.image_views import image_datasets
    from rsvision.models import load_checkpoint

    root = shared_path("data", "rsscn7", "train")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())[:2]
    files = [f"{c}/{p.name}" for c in classes for p in sorted((root / c).glob("*.jpg"))[:5]]
    split = tmp_path / "split.csv"
    split.write_text("split,path,label\n" + "".join(f"{'train' if i % 5 else 'val'},{f},x\n" for i, f in enumerate(files)))
    ds = image_datasets(root, {"hr": ["R", "G", "B"]}, 40, split)
    assert {k: len(v) for k, v in ds.items()} == {"train": 8, "val": 2}
    assert ds["train"].read(0)["hr"].shape == (3, 40, 40) and ds["train"].samples[0].id.endswith(files[1])
    with pytest.raises(Exception, match="one modality"):
        image_datasets(root, {"hr": ["R", "G", "B"], "s1": ["VV", "VH"]}, 40, split)
    cfg = _cfg(root, tmp_path / "ssl", epochs=2)
    cfg.data.format, cfg.data.split_file, cfg.data.modalities = "images", str(split), {"hr": ["R", "G", "B"]}
    cfg.data.batch_size = 4
    res = train(cfg)
    enc = torch.load(tmp_path / "ssl" / "encoder.pth", weights_only=True)
    assert enc["meta"]["modalities"] == {"hr": ["R", "G", "B"]} and len(enc["meta"]["mean"]) == 3
    net = timm.create_model("skysense_v2_tiny", num_classes=7, in_chans=3, **SMALL)  # what classify builds for RGB
    report = load_checkpoint(net, tmp_path / "ssl" / "encoder.pth")
    # everything but the head and the S1 / S2 tokenizers and prompts comes from the encoder
    assert not report.unexpected and report.missing
    assert all(k.startswith("head.") or ".s1" in k or ".s2" in k for k in report.missing), report.missing[:5]
    assert res.checkpoint.exists()
