"""MTP: per-dataset heads, batch modes, the task losses fall on synthetic multi-task data, exact resume,
and the encoder of ``pretrain mtp`` loads with ``--pretrained`` into every task."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from rsvision.config import load_config
from rsvision.data.synthetic.multitask import write_multitask_dataset
from rsvision.tasks import train
from rsvision.tasks.mtp import MTPConfig
from tests.conftest import assert_same_last_checkpoint

CONFIG = "configs/mtp_synthetic_tiny.yaml"
TINY = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtp_data")
    write_multitask_dataset(root / "dota", 6, 96, seed=0)
    write_multitask_dataset(root / "samrs", 2, 96, seed=1, layout="samrs")
    return root


def _cfg(data, out, epochs=2, **over):
    ds = [{"name": "dota", "format": "dota", "root": str(data / "dota"), "classes": ["ship", "vehicle", "tank"]},
          {"name": "samrs", "format": "samrs", "root": str(data / "samrs"), "ann_file": "instances.json"}]
    return load_config(CONFIG, MTPConfig, {"data.datasets": ds, "trainer.out": str(out), "trainer.max_epochs": epochs,
                                           **over})


def _net(classes):
    from rsvision.models.mtp import MTPNet

    return MTPNet("lsknet_t", classes, backbone_kwargs=TINY, seg_channels=16,
                  detector={"fpn_channels": 16, "fc_channels": 32, "rpn": {"nms_pre": 100, "max_per_img": 50}})


def _batch(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    box = torch.tensor([[30.0, 34.0, 24.0, 10.0, 0.3]])
    tg = [{"boxes": box, "labels": torch.tensor([k - 1]), "image_size": (64, 64)} for _ in range(n)]
    return {"image": torch.randn(n, 3, 64, 64, generator=g),
            "semantic": torch.randint(0, k + 1, (n, 64, 64), generator=g), "targets": tg}


def _head_grads(net, batches):
    net.zero_grad()
    torch.manual_seed(0)  # the RoI samplers' draws
    losses = net(batches)
    sum(v for k, v in losses.items() if k.rsplit("/", 1)[-1].startswith("loss")).backward()
    return {n: {s: (p.grad.clone() if p.grad is not None else None) for s, p in net.heads[n].named_parameters()}
            for n in net.heads}


def test_per_dataset_heads_get_gradients_from_their_dataset_only():
    torch.manual_seed(0)
    net = _net({"a": ["x", "y", "z"], "b": ["x", "w"]}).eval()  # eval: BatchNorm does not mix the datasets
    a, b = _batch(2, 3, 1), _batch(1, 2, 2)
    assert net.rotated.roi_head.bbox_head.fc_cls is None and net.semantic.classifier is None  # no shared copies
    assert net.heads["a"]["fc_cls"].out_features == 4 and net.heads["b"]["semantic"].out_channels == 3
    only_a, both = _head_grads(net, {"a": a}), _head_grads(net, {"a": a, "b": b})
    assert all(g is None or not g.any() for g in only_a["b"].values())
    assert all(g is not None and g.abs().sum() > 0 for g in only_a["a"].values() if g is not None)
    for s, g in only_a["a"].items():  # dataset b's loss adds nothing to a's last layers
        torch.testing.assert_close(both["a"][s], g, rtol=1e-5, atol=1e-7, msg=s)
    assert all(g is not None and g.abs().sum() > 0 for s, g in both["b"].items() if "fc_reg" not in s)


def test_batch_modes_split_the_step(data, tmp_path):
    from rsvision.tasks.mtp import MTPTask

    seen = []

    class Sizes(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append({k: len(v["image"]) for k, v in batch.items()})

    for mode, want in (("avg", {"dota": 2, "samrs": 2}), ("ratio", {"dota": 3, "samrs": 1})):
        seen.clear()
        cfg = _cfg(data, tmp_path / mode, 1, **{"data.batch_mode": mode})
        dm = MTPTask.build_datamodule(cfg)
        assert dm.batch_sizes == want
        train(cfg, callbacks=[Sizes()], limit_train_batches=1)
        assert seen == [want]
    # an epoch ends with the shortest loader: samrs has 2 images, so 2 steps of batch 1 (ratio)
    loader = dm.train_dataloader()
    iter(loader)
    assert len(loader) == 2


def test_all_task_losses_fall_on_synthetic_multitask_data(data, tmp_path):
    # one step per epoch (samrs: 2 images); measured ~6 s: semantic 1.4 -> 0.5, RPN 0.69 -> 0.1, RoI 1.4 -> 0.2
    cfg = _cfg(data, tmp_path / "fit", 30, **{"optim.lr": 0.01, "data.flip": False})
    train(cfg)
    m = pd.read_csv(tmp_path / "fit" / "metrics.csv").dropna(subset=["train/epoch_loss"]).groupby("epoch").first()
    for ds in ("dota", "samrs"):
        for task, names in (("semantic", ["loss_seg"]), ("rotated", ["loss_rpn_cls", "loss_cls"])):
            curve = sum(m[f"train/{ds}/{task}/{n}_epoch"] for n in names).to_numpy()
            assert curve[-5:].mean() < 0.6 * curve[:2].mean(), (ds, task, curve.round(3).tolist())


@pytest.mark.parametrize("by", ["epochs", "steps"])  # steps: as the MTP configs (max_steps, no validation)
def test_resume_after_kill_gives_the_same_weights(by, data, tmp_path):
    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1 and (by == "epochs" or batch_idx == 1):
                raise RuntimeError("simulated kill")

    # two steps per epoch (samrs: 2 images)
    over = {"data.batch_size": 2, **({"trainer.extra": {"max_steps": 6}} if by == "steps" else {})}
    epochs = 2 if by == "epochs" else 1000
    train(_cfg(data, tmp_path / "full", epochs, **over))
    cfg = _cfg(data, tmp_path / "part", epochs, **over)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, callbacks=[Kill()])
    assert torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)["epoch"] == 0
    cfg.trainer.resume = True
    train(cfg)
    assert_same_last_checkpoint(tmp_path / "full", tmp_path / "part", 4 if by == "epochs" else 6, "model.heads.samrs.")


def test_pretrain_mtp_encoder_loads_with_pretrained_in_every_task(data, tmp_path):
    from typer.testing import CliRunner

    from rsvision.cli import app
    from rsvision.models import load_checkpoint
    from rsvision.tasks import load_task
    from rsvision.tasks.change import ChangeTask
    from rsvision.tasks.classification import ClassificationTask
    from rsvision.tasks.detection import DetectionTask
    from rsvision.tasks.segmentation import SegmentationTask

    ds = ('[{name: dota, format: dota, root: "%s", classes: [ship, vehicle, tank]}, '
          '{name: samrs, format: samrs, root: "%s", ann_file: instances.json}]') % (data / "dota", data / "samrs")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["pretrain", "mtp", "--config", CONFIG, "--out", str(out), "--epochs", "1",
                                   "--set", f"data.datasets={ds}"])
    assert res.exit_code == 0, res.output
    assert {"best.ckpt", "last.ckpt", "config.yaml", "metrics.csv", "encoder.pth"} <= {p.name for p in out.iterdir()}
    enc = load_task(out / "best.ckpt").model.encoder.state_dict()
    meta = torch.load(out / "encoder.pth", weights_only=True)["meta"]
    assert meta["model"] == "lsknet_t" and meta["backbone_kwargs"] == TINY
    assert set(meta["datasets"]) == {"dota", "samrs"}

    stats = {"mean": [120.0] * 3, "std": [50.0] * 3}
    dense = {"backbone": "lsknet_t", "decoder": "upernet", "channels": 16, "in_chans": 3, "backbone_kwargs": TINY}
    tasks = {
        "classify": ClassificationTask(model={"name": "lsknet_t", "kwargs": TINY},
                                       data={"classes": ["p", "q"], "in_chans": 3, "img_size": 32, **stats}),
        "detect": DetectionTask(model={"type": "OrientedRCNN", "backbone": "lsknet_t", "backbone_kwargs": TINY,
                                       "fpn_channels": 16, "fc_channels": 32}, data={"class_names": ["x", "y"]}),
        "segment": SegmentationTask(model=dense, data={"classes": ["a", "b", "c"], "img_size": 64, **stats}),
        "change": ChangeTask(model=dense, data={"classes": ["unchanged", "changed"], "img_size": 64, **stats}),
    }
    for name, task in tasks.items():
        report = task.load_pretrained(out / "encoder.pth")  # what `<task> train --pretrained FILE` calls
        assert not report.unexpected and len(report.loaded) == len(enc), (name, report.summary())
        sd = task.model.state_dict()
        src_of = {dst: src for src, dst in report.remapped.items()}
        for dst in report.loaded:  # relative to the module the task loads into
            src = src_of.get(dst, dst)
            match = [dst] if dst in sd else [k for k in sd if k.endswith("." + dst)]
            assert len(match) == 1, (name, dst)
            torch.testing.assert_close(sd[match[0]], enc[src], rtol=0, atol=0)
    # the run's checkpoint itself, through load_checkpoint, into a bare backbone
    import timm

    bare = timm.create_model("lsknet_t", num_classes=0, **TINY)
    report = load_checkpoint(bare, out / "best.ckpt")
    assert not report.missing, report.summary()
    for k, v in bare.state_dict().items():
        torch.testing.assert_close(v, enc[k], rtol=0, atol=0)


@pytest.mark.slow  # ~15 s: two gloo processes
def test_ddp_two_processes(data, tmp_path):
    import subprocess
    import sys

    ds = ('[{name: dota, format: dota, root: "%s", classes: [ship, vehicle, tank]}, '
          '{name: samrs, format: samrs, root: "%s", ann_file: instances.json}]') % (data / "dota", data / "samrs")
    out = tmp_path / "ddp"
    exe = Path(sys.executable).parent / "rsvision"  # a script: Lightning re-launches sys.argv per process
    cmd = [str(exe), "pretrain", "mtp", "--config", CONFIG,
           "--out", str(out), "--epochs", "1", "--set", f"data.datasets={ds}", "--set", "trainer.devices=2",
           "--set", "trainer.strategy=ddp"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1  # samrs: 2 images, one per process, batch 2 per dataset -> one step
    assert "find_unused_parameters_true" in (out / "config.yaml").read_text()


def test_bad_tasks_are_clear_errors():
    from rsvision.errors import ConfigError

    with pytest.raises(ConfigError, match="model.tasks"):
        _net_tasks(["semantic", "depth"])
    try:
        import rsvision.models.detectors.mask_rcnn as mr
    except ImportError:
        mr = None
    if mr is None or not hasattr(mr, "mtp_instance_decoder"):  # until the Mask R-CNN decoder is wired in
        with pytest.raises(ConfigError, match="instance"):
            _net_tasks(["semantic", "instance"])


def _net_tasks(tasks):
    from rsvision.models.mtp import MTPNet

    return MTPNet("lsknet_t", {"a": ["x"]}, tasks, backbone_kwargs=TINY, seg_channels=8)
