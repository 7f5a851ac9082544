"""The task contract: registry, one loader for every checkpoint (first-release layouts included), the schedule."""
from __future__ import annotations

import math

import pytest
import torch

from rsvision.config import OptimConfig, lr_factor
from rsvision.errors import CheckpointError, ConfigError
from rsvision.tasks import TASKS, BaseTask, load_task, task_class

# hyper_parameters exactly as the first release (commit 66a89b2) wrote them, one tiny model per task
OLD_HPARAMS = {
    'classify': {'model': {'name': 'test_resnet', 'pretrained': None, 'drop_rate': 0.0, 'drop_path_rate': None, 'channels_last': False, 'fast': False, 'kwargs': {}}, 'classes': ['a', 'b', 'c'], 'in_chans': 3, 'mean': [1.0, 2.0, 3.0], 'std': [4.0, 5.0, 6.0], 'img_size': 24, 'resize': None, 'bands': None, 'multilabel': False, 'optim': {'lr': 0.003, 'weight_decay': 0.05, 'warmup_epochs': 1.0, 'min_lr_ratio': 0.01, 'label_smoothing': 0.1, 'mixup': 0.0, 'cutmix': 0.0, 'mix_prob': 1.0, 'ema': True, 'ema_decay': 0.998, 'schedule': 'epochs'}, 'task': 'classify', 'format_version': 1, 'eval_size': None},
    'segment': {'model': {'backbone': 'test_convnext', 'decoder': 'upernet', 'channels': 16, 'in_chans': 3, 'backbone_kwargs': {}, 'decoder_kwargs': {}}, 'classes': ['x', 'y'], 'mean': [0.0, 0.0, 0.0], 'std': [1.0, 1.0, 1.0], 'ignore_index': 255, 'palette': None, 'bands': None, 'optim': {'lr': 0.001, 'weight_decay': 0.0001, 'schedule': 'cosine', 'warmup_steps': 0, 'min_lr_ratio': 0.01}, 'img_size': 64, 'sliding': {'size': None, 'overlap': None, 'tta': False, 'batch_size': 4}, 'task': 'segment', 'extra': {'mask': {'classes': ['x', 'y'], 'kind': 'index', 'reduce_zero_label': False}}},
    'change': {'model': {'backbone': 'test_convnext', 'decoder': 'upernet', 'channels': 16, 'in_chans': 3, 'backbone_kwargs': {}, 'decoder_kwargs': {}, 'fusion': 'diff'}, 'classes': ['unchanged', 'changed'], 'mean': [0.0, 0.0, 0.0], 'std': [1.0, 1.0, 1.0], 'ignore_index': 255, 'palette': [[0, 0, 0], [255, 0, 0]], 'bands': None, 'optim': {'lr': 0.001}, 'img_size': 64, 'sliding': {}, 'task': 'change', 'extra': None},
    'detect': {'model': {'type': 'OrientedRCNN', 'backbone': 'lsknet_t', 'fpn_channels': 32, 'fc_channels': 64, 'backbone_drop_rate': 0.0, 'backbone_drop_path_rate': 0.0, 'rpn': {'nms_pre': 200, 'max_per_img': 100}, 'rcnn': {'max_per_img': 50}, 'num_classes': 3, 'class_names': ['ship', 'vehicle', 'tank'], 'in_chans': 3}, 'class_names': ['ship', 'vehicle', 'tank'], 'bands': [0, 1, 2], 'mean': [123.675, 116.28, 103.53], 'std': [58.395, 57.12, 57.375], 'angle_version': 'le90', 'img_size': 96, 'gsd': 0.5, 'lr': 0.0002, 'base_batch': 16, 'batch_size': 2, 'weight_decay': 0.05, 'warmup_iters': 2, 'warmup_ratio': 0.3333333333333333, 'max_epochs': 12, 'milestones': None, 'frozen_bn': False, 'pretrained': None, 'iou_thr': 0.5, 'metric': 'voc07'},
}


def _inputs(name):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    return {"classify": x[:, :, :24, :24], "segment": x, "change": torch.stack([x, x.flip(-1)], 1),
            "detect": (x - 100) / 50}[name]


def _run(task, name):
    with torch.no_grad():
        if name == "detect":
            return task.model(_inputs(name))[0]["scores"]
        return task(_inputs(name))


def test_registry_has_every_task_and_rejects_unknown_names():
    for name in ("classify", "detect", "segment", "change"):
        assert issubclass(task_class(name), BaseTask) and task_class(name).name == name
    assert set(TASKS) >= {"classify", "detect", "segment", "change"}
    with pytest.raises(ConfigError, match="unknown task"):
        task_class("nope")


@pytest.mark.parametrize("name", ["classify", "segment", "change", "detect"])
def test_first_release_checkpoints_load(name, tmp_path):
    """A checkpoint in the first release's layout (flat kwargs; detection untagged; the classifier's EMA
    stored as ``ema.<key>``) loads through the one loader and computes what the saved weights compute."""
    hp = dict(OLD_HPARAMS[name])
    torch.manual_seed(0)
    cls = task_class(name)
    ref = cls.from_hparams(hp).eval()
    sd = ref.state_dict()
    if name == "classify":  # format 1: a bare deep copy, not timm's ModelEmaV3 wrapper
        sd = {("ema." + k[len("ema.module."):] if k.startswith("ema.module.") else k): v for k, v in sd.items()}
        assert any(k.startswith("ema.") and not k.startswith("ema.module.") for k in sd)
    torch.save({"state_dict": sd, "hyper_parameters": hp, "epoch": 0, "global_step": 0}, tmp_path / "old.ckpt")
    task = load_task(tmp_path / "old.ckpt")
    assert type(task) is cls and not task.training
    assert torch.equal(_run(task, name), _run(ref, name))
    # saved again, it is a current-format checkpoint with the task tag
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, tmp_path / "new.ckpt")
    again = load_task(tmp_path / "new.ckpt")
    assert again.hparams["task"] == name and again.hparams["format_version"] == 2
    assert torch.equal(_run(again, name), _run(ref, name))


def test_loader_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.ckpt"):
        load_task(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="hyper_parameters"):
        load_task(tmp_path / "plain.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"task": "nope", "model": {}}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="nope"):
        load_task(tmp_path / "other.ckpt")
    hp = dict(OLD_HPARAMS["segment"])
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": hp}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_task(tmp_path / "bad.ckpt")


def test_schedule_warmup_cosine_time_step_constant():
    cos = OptimConfig(schedule="cosine", warmup_steps=4, min_lr_ratio=0.0)
    # default warmup ramp (step + 1) / (warmup + 1): the first step already learns
    assert [lr_factor(cos, s, 104) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(cos, 4, 104) == pytest.approx(1.0)
    assert lr_factor(cos, 54, 104) == pytest.approx(0.5)  # half way through the cosine
    assert lr_factor(cos, 104, 104) == pytest.approx(0.0)
    time = OptimConfig(schedule="time", min_lr_ratio=0.0)
    assert lr_factor(time, 10, 1000, budget=0.5) == pytest.approx(0.5)  # the clock is further along
    assert lr_factor(time, 500, 1000, budget=0.1) == pytest.approx(0.5)
    step = OptimConfig(schedule="step", warmup_steps=10, warmup_ratio=0.0)
    assert lr_factor(step, 5, 10**6, epoch=0, max_epochs=12) == pytest.approx(0.5)
    assert lr_factor(step, 10**5, 10**6, epoch=8, max_epochs=12) == pytest.approx(0.1)
    assert lr_factor(step, 10**5, 10**6, epoch=11, max_epochs=12) == pytest.approx(0.01)
    assert OptimConfig(schedule="step").milestones_for(24) == [16, 22]
    assert lr_factor(OptimConfig(schedule="constant"), 7, 10) == 1.0
    for bad in (dict(schedule="epochs"), dict(warmup_steps=-1), dict(lr=0.0)):
        with pytest.raises(ConfigError):
            OptimConfig(**bad)
    assert math.isfinite(lr_factor(cos, 0, 1))  # one-step runs: warmup clipped below the run length


def test_old_config_keys_are_named_with_their_new_name(tmp_path):
    from rsvision.config import load_config
    from rsvision.tasks.detection import DetectConfig

    p = tmp_path / "old.yaml"
    p.write_text("optim:\n  warmup_iters: 500\n")
    with pytest.raises(ConfigError, match="optim.warmup_iters is now optim.warmup_steps"):
        load_config(p, DetectConfig)

def test_time_budget_scales_the_warmup():
    """A 100-epoch config (105 warmup steps of 2100) stopped by a budget: the warmup is 5 % of the
    budget's clock too, not 105 steps a short run never reaches."""
    cfg = OptimConfig(schedule="cosine", warmup_steps=105, warmup_ratio=0.0, min_lr_ratio=0.0)
    assert lr_factor(cfg, 10, 2100) == pytest.approx(10 / 105)  # no budget: by steps only
    assert lr_factor(cfg, 10, 2100, budget=0.025) == pytest.approx(0.5)  # half of the warmup's 5 % share
    assert lr_factor(cfg, 10, 2100, budget=0.05) == pytest.approx(math.cos(math.pi * 0.05) / 2 + 0.5)
    assert lr_factor(cfg, 20, 2100, budget=1.0) == pytest.approx(0.0)  # budget spent: annealed
    step = OptimConfig(schedule="step", warmup_steps=100, warmup_ratio=0.0)
    assert lr_factor(step, 1, 1000, budget=0.05) == pytest.approx(0.5)  # step schedule: the warmup scales too
