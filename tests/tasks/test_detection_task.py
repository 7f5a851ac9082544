"""Detection Lightning task: schedule, frozen BN, self-describing checkpoints, training steps, DDP (gloo)."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from rsvision.config import OptimConfig, lr_factor as _lr_factor
from rsvision.tasks import load_task
from rsvision.tasks.detection import DetectionTask as _DetectionTask, freeze_bn


def lr_factor(step, epoch, warmup_steps, warmup_ratio, milestones):
    cfg = OptimConfig(schedule="step", warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, milestones=milestones)
    return _lr_factor(cfg, step, 10**9, epoch)


def DetectionTask(model, class_names, bands=None, img_size=1024, gsd=None, batch_size=2, **optim):
    """The tests' old shorthand -> the task contract's sections."""
    if "warmup_iters" in optim:
        optim["warmup_steps"] = optim.pop("warmup_iters")
    data = dict(class_names=class_names, bands=bands, img_size=img_size, gsd=gsd, batch_size=batch_size)
    return _DetectionTask(model=model, data=data, optim=optim)


def load_detector(path):
    task = load_task(path)
    return task.model, task.hparams

TINY = {"type": "OrientedRCNN", "backbone": "lsknet_t", "fpn_channels": 32, "fc_channels": 64,
        "backbone_drop_rate": 0.0, "backbone_drop_path_rate": 0.0,
        "rpn": {"nms_pre": 200, "max_per_img": 100}, "rcnn": {"max_per_img": 50}}
CLASSES = ["ship", "vehicle", "tank"]



class SynthDS(Dataset):
    """In-memory synthetic samples (no files): normalised image + le90 targets."""

    def __init__(self, n: int = 4, size: int = 96, seed: int = 0):
        from rsvision.data import det_transforms as T
        from rsvision.data.synthetic.objects import make_image

        norm = T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)
        self.items = []
        for i in range(n):
            img, objs = make_image(size, size, seed + i, num_objects=4)
            self.items.append(norm({
                "image": torch.from_numpy(img).permute(2, 0, 1).float(),
                "boxes": torch.tensor([o.obb() for o in objs], dtype=torch.float32).reshape(-1, 5),
                "labels": torch.tensor([CLASSES.index(o.name) for o in objs], dtype=torch.long),
                "difficult": torch.zeros(len(objs), dtype=torch.long), "name": f"img{i}"}))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _loader(n=4, bs=2):
    from rsvision.data.detection import collate_detection

    return DataLoader(SynthDS(n), batch_size=bs, collate_fn=collate_detection)


def test_lr_schedule_warmup_and_steps():
    assert lr_factor(0, 0, 500, 1 / 3, [8, 11]) == pytest.approx(1 / 3)
    assert lr_factor(250, 0, 500, 1 / 3, [8, 11]) == pytest.approx(2 / 3)
    assert lr_factor(500, 0, 500, 1 / 3, [8, 11]) == pytest.approx(1.0)
    assert lr_factor(10_000, 8, 500, 1 / 3, [8, 11]) == pytest.approx(0.1)
    assert lr_factor(10_000, 11, 500, 1 / 3, [8, 11]) == pytest.approx(0.01)
    task = DetectionTask(TINY, CLASSES, batch_size=4)
    assert task._milestones() == [8, 11]  # of the default 12 epochs


def test_frozen_bn_and_lr_scaling():
    task = DetectionTask(TINY, CLASSES, batch_size=4, frozen_bn=True)
    task.train()
    bns = [m for m in task.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    opt = task.configure_optimizers()["optimizer"]
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(2e-4 * 4 / 16)
    assert opt.param_groups[0]["weight_decay"] == 0.05
    plain = DetectionTask(TINY, CLASSES)
    plain.train()
    assert all(m.training for m in plain.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    freeze_bn(plain.model)
    assert not any(m.training for m in plain.model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_training_steps_and_self_describing_checkpoint(tmp_path):
    import lightning as L

    torch.manual_seed(0)
    task = DetectionTask(TINY, CLASSES, bands=[0, 1, 2], img_size=96, gsd=0.5, batch_size=2, warmup_iters=2)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=35.0,
                        limit_val_batches=0)
    trainer.fit(task, _loader())
    assert trainer.global_step == 3
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=True)
    hp = raw["hyper_parameters"]
    for key in ("model", "class_names", "bands", "mean", "std", "angle_version", "img_size", "gsd"):
        assert key in hp, key
    assert hp["model"]["num_classes"] == 3 and hp["model"]["in_chans"] == 3 and hp["angle_version"] == "le90"
    model, hp2 = load_detector(ckpt)  # rebuilt from the file alone
    x = next(iter(_loader()))[0]
    task.model.eval()
    with torch.no_grad():
        a, b = task.model(x), model(x)
    assert len(a) == len(b) and torch.allclose(a[0]["scores"], b[0]["scores"])
    assert hp2["class_names"] == CLASSES


def test_validation_map_through_dota_evaluator():
    import lightning as L

    task = DetectionTask(TINY, CLASSES, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    metrics = trainer.validate(task, _loader(2), verbose=False)[0]
    assert 0.0 <= metrics["val/mAP"] <= 1.0
    res = task.last_val_metrics
    assert res["task"] == "detect" and set(res["AP"]) == set(CLASSES)


def test_load_detector_rejects_foreign_checkpoints(tmp_path):
    from rsvision.errors import CheckpointError

    p = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(CheckpointError):
        load_detector(p)
    with pytest.raises(CheckpointError):
        load_detector(tmp_path / "missing.ckpt")


DDP_SCRIPT = textwrap.dedent('''
    import importlib.util, sys, torch
    spec = importlib.util.spec_from_file_location("tdt", {path!r})
    tdt = importlib.util.module_from_spec(spec)
    sys.modules["tdt"] = tdt
    spec.loader.exec_module(tdt)
    import lightning as L
    torch.set_num_threads(1)
    task = tdt.DetectionTask(tdt.TINY, tdt.CLASSES, batch_size=1, warmup_iters=1)
    tr = L.Trainer(max_steps=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   limit_val_batches=0)
    tr.fit(task, tdt._loader(4, 1))
    w = [p.detach().clone() for p in task.model.parameters()][-1]
    g = [torch.zeros_like(w) for _ in range(2)]
    torch.distributed.all_gather(g, w)  # DDP keeps replicas identical
    # one write() per rank: print() writes text and newline separately, so two ranks interleave
    sys.stdout.write(f"DDP_OK {{tr.global_rank}} {{tr.world_size}} {{tr.global_step}} "
                     f"{{tr.strategy._process_group_backend}} {{bool(torch.equal(g[0], g[1]))}}\\n")
    sys.stdout.flush()
    torch.distributed.destroy_process_group()
    # skip interpreter teardown: a gloo thread left behind at exit occasionally aborts the
    # process ("terminate called without an active exception") after all the work is checked
    import os
    os._exit(0)
''')


def test_ddp_two_cpu_processes_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(path=str(Path(__file__).resolve())))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DDP_OK 0 2 2 gloo True" in r.stdout and "DDP_OK 1 2 2 gloo True" in r.stdout, r.stdout


# --- whole-scene prediction (windows, offsets, scales, merge, outputs) --------------------------------
class PeakDetector(torch.nn.Module):
    """Stand-in detector with exact, known output: one box at the brightest pixel of each window."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, images, targets=None, image_sizes=None):
        outs = []
        for im, size in zip(images, image_sizes):
            self.calls.append(tuple(size))
            c = im[0]
            if float(c.max()) < 1.0:
                outs.append({"boxes": torch.zeros(0, 5), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)})
                continue
            y, x = divmod(int(torch.argmax(c)), c.shape[1])
            outs.append({"boxes": torch.tensor([[x + 0.5, y + 0.5, 12.0, 4.0, 0.3]]), "scores": torch.tensor([0.9]),
                         "labels": torch.tensor([1])})
        return outs


def _scene(h=300, w=420, spots=((37, 250), (205, 61))):
    import numpy as np

    a = np.zeros((3, h, w), np.uint8)
    for y, x in spots:
        a[:, y : y + 4, x : x + 4] = 255
    return a


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 0.5)])
def test_predict_scene_offsets_and_merge(scales):
    from rsvision.tasks.predict_scene import predict_scene

    model = PeakDetector()
    det = predict_scene(model, _scene(), [0, 0, 0], [100, 100, 100], CLASSES, window=128, overlap=48,
                        batch_size=3, scales=scales)
    assert len(det.scores) == 2  # every window that saw a spot found it; NMS merged the copies
    found = sorted((float(b[1]), float(b[0])) for b in det.boxes)
    for (y, x), (by, bx) in zip(sorted([(37, 250), (205, 61)]), found):
        tol = 1.0 if len(scales) == 1 else 3.0  # at rate 0.5 one pixel is 2 px, plus the antialiasing filter
        assert abs(by - (y + 0.5)) <= tol and abs(bx - (x + 0.5)) <= tol
    assert det.stats["raw_detections"] > 2 and (det.height, det.width) == (300, 420)
    assert all(s[0] <= 128 and s[1] <= 128 for s in model.calls)


def test_predict_scene_geotiff_lazy_windows_and_outputs(tmp_path):
    import json

    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from rsvision.errors import BandMismatchError
    from rsvision.tasks.predict_scene import predict_scene, write_scene_outputs

    p = tmp_path / "scene.tif"
    a = _scene()
    with rasterio.open(p, "w", driver="GTiff", width=420, height=300, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4500000, 0.5, 0.5), tiled=True, blockxsize=128, blockysize=128) as dst:
        dst.write(a)
    det = predict_scene(PeakDetector(), p, [0, 0, 0], [100, 100, 100], CLASSES, window=128, overlap=32)
    assert len(det.scores) == 2 and str(det.crs) == "EPSG:32633"
    out = write_scene_outputs(det, tmp_path / "out", task1=False)
    gj = json.loads(Path(out["geojson"]).read_text())
    assert len(gj["features"]) == 2 and gj["features"][0]["properties"]["class"] == "vehicle"
    xs = np.array(gj["features"][0]["geometry"]["coordinates"][0])[:, 0]
    assert 500000 < xs.min() < xs.max() < 500000 + 420 * 0.5  # projected metres, not pixels
    assert Path(out["png"]).stat().st_size > 0
    with pytest.raises(BandMismatchError):
        predict_scene(PeakDetector(), p, [0, 0, 0, 0], [1, 1, 1, 1], CLASSES)


def test_predict_scene_single_window_equals_model():
    from rsvision.tasks.predict_scene import predict_scene

    torch.manual_seed(0)
    task = DetectionTask(TINY, CLASSES)
    model = task.model.eval()
    img = SynthDS(1)[0]["image"]  # normalised 96 x 96
    raw = img * torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1) + torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    det = predict_scene(model, raw, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], CLASSES, window=128)
    from rsvision.data.detection import pad_to_multiple

    with torch.no_grad():
        ref = model(pad_to_multiple([img]), image_sizes=[(96, 96)])[0]
    assert len(det.scores) == len(ref["scores"])
    assert torch.allclose(det.scores, ref["scores"], atol=1e-5)
    assert torch.allclose(det.boxes, ref["boxes"], atol=1e-3)
