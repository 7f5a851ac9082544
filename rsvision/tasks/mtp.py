"""Multi-task pretraining (MTP, arXiv 2403.13430): ``rsvision pretrain mtp --config configs/mtp_*.yaml``.

One encoder learns semantic segmentation, rotated detection (and instance segmentation, once its
decoder exists) at once, on data where every image carries all those labels
(:mod:`rsvision.data.multitask`: SAMRS, or DOTA / DIOR-R / iSAID converted). As the official code:
one loader per dataset, zipped (:class:`rsvision.data.multitask_readers.MultiTaskDataModule`, ``batch_mode``
``avg`` | ``ratio``), the batches encoded once, one decoder per task shared by the datasets, per-dataset
last layers (:class:`rsvision.models.mtp.MTPNet`), the plain sum of every loss (``optim.task_weights``
optional). Optimiser as published: AdamW, lr 6e-5, weight decay 0.05, cosine, layer decay 0.9 for ViTs
(``optim.layer_decay``), gradient clipping 5 (``trainer.gradient_clip_val``). ``trainer.strategy: ddp``
runs with unused parameters allowed (a batch may miss a task's labels); multi-node adds
``trainer.extra.num_nodes`` and SyncBN ``trainer.extra.sync_batchnorm: true`` (Lightning settings).

There is no validation metric: ``best.ckpt`` follows the epoch's training loss. After training,
``encoder.pth`` (the encoder of the selected checkpoint, as ``pretrain ssl`` writes it) loads with
``--pretrained`` into every task built on the same backbone, as do ``best.ckpt`` / ``last.ckpt``
through ``rsvision.models.load_checkpoint``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rsvision.config import OptimConfig
from rsvision.data.multitask_readers import MultiTaskDataModule
from rsvision.errors import ConfigError
from rsvision.tasks.base import BaseTask, RunResult, register_task
from rsvision.tasks.common import TrainerOptions, to_plain

__all__ = ["MTPDataSection", "MTPModelConfig", "MTPOptimConfig", "MTPConfig", "MTPTask"]


@dataclass
class MTPDataSection:
    """``data:``: the datasets (reader specs: ``{name, format: dota|dior|samrs|isaid, root, ...}``), or a
    ``root`` whose sub-folders are datasets (format detected from each layout)."""

    root: str | None = None
    datasets: list[dict[str, Any]] = field(default_factory=list)
    img_size: int = 512
    batch_size: int = 8  # per device and step, over all datasets
    batch_mode: str = "avg"  # avg | ratio
    mean: list[float] | None = None  # None: ImageNet RGB in 0-255 units
    std: list[float] | None = None
    iof_thr: float = 0.7
    flip: bool = True
    num_workers: int = 0


@dataclass
class MTPModelConfig:
    """``model:``: the encoder (``name``), the tasks and the decoders' sizes.

    ``preset`` (``tiny | small | published``, as ``detect train --preset``) fills the Oriented R-CNN
    widths that ``detector`` leaves unset; ``detector`` takes the detector builder's keys.
    """

    name: str = "lsknet_t"
    tasks: list[str] = field(default_factory=lambda: ["semantic", "rotated"])
    pretrained: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    seg_channels: int = 256
    preset: str | None = None
    detector: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)


@dataclass
class MTPOptimConfig(OptimConfig):
    """``optim:``: MTP's published optimiser; ``task_weights`` scale a task's losses (default 1 each)."""

    lr: float = 6e-5
    weight_decay: float = 0.05
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    task_weights: dict[str, float] = field(default_factory=dict)


def _mtp_trainer() -> TrainerOptions:
    return TrainerOptions(out="runs/mtp", monitor="train/epoch_loss", mode="min", gradient_clip_val=5.0)


@dataclass
class MTPConfig:
    """A whole ``rsvision pretrain mtp`` config (see ``configs/mtp_lsknet_t.yaml``)."""

    data: MTPDataSection = field(default_factory=MTPDataSection)
    model: MTPModelConfig = field(default_factory=MTPModelConfig)
    optim: MTPOptimConfig = field(default_factory=MTPOptimConfig)
    trainer: TrainerOptions = field(default_factory=_mtp_trainer)


def _resolve_detector(m: MTPModelConfig) -> None:
    """Fill the detector widths from the preset, as ``detect train`` does (in place: config.yaml shows it)."""
    from rsvision.tasks.detection import DetectModelConfig

    det = dict(m.detector)
    d = DetectModelConfig(name=m.name, preset=m.preset, fpn_channels=det.pop("fpn_channels", None),
                          fc_channels=det.pop("fc_channels", None), kwargs=det).apply_preset()
    m.preset, m.detector = d.preset, {"fpn_channels": d.fpn_channels, "fc_channels": d.fc_channels, **d.kwargs}


@register_task
class MTPTask(BaseTask):
    """``model``: :class:`MTPModelConfig` as a dict; ``data``: ``datasets`` (name -> object classes),
    ``mean`` / ``std`` (raw pixel units), ``img_size``, ``batch_sizes`` (per dataset)."""

    name = "mtp"
    config_class = MTPConfig
    optim_class = MTPOptimConfig
    monitor, mode = "train/epoch_loss", "min"

    def configure_model(self) -> torch.nn.Module:
        from rsvision.models.mtp import MTPNet

        m, hp = self.hparams.model, self.hparams
        return MTPNet(m["name"], dict(hp.datasets), m["tasks"], len(hp.mean), m.get("backbone_kwargs"),
                      int(m.get("seg_channels", 256)), m.get("detector"), m.get("instance"))

    def batch_size(self) -> int:
        return int(sum((self.hparams.get("batch_sizes") or {"": 1}).values()))

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of every ``loss*`` entry (``<dataset>/<task>/<name>``); others are diagnostics."""
        w = {str(k): float(v) for k, v in (self.optim_cfg.task_weights or {}).items()}
        terms = [w.get(k.split("/")[1], 1.0) * v for k, v in losses.items() if k.rsplit("/", 1)[-1].startswith("loss")]
        return torch.stack(terms).sum()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.model(batch)
        loss = self.total_loss(losses)
        bs = sum(len(b["image"]) for b in batch.values())
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/epoch_loss", loss, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        for k, v in losses.items():
            self.log(f"train/{k}", v.detach(), on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    def trainer_defaults(self) -> dict[str, Any]:
        return {"limit_val_batches": 0}

    # --- recipe -----------------------------------------------------------------------------------
    @classmethod
    def build_datamodule(cls, cfg: MTPConfig) -> MultiTaskDataModule:
        d = cfg.data
        if not d.datasets and d.root:
            from rsvision.data.multitask_readers import detect_format

            root = Path(d.root)
            if not root.is_dir():
                raise ConfigError("data.root (--data) is not a folder", path=root)
            d.datasets = [dict(detect_format(p), name=p.name) for p in sorted(root.iterdir()) if p.is_dir()]
        for s in d.datasets:  # absolute roots: config.yaml repeats the run from anywhere
            if s.get("root"):
                s["root"] = str(Path(s["root"]).resolve())
        dm = MultiTaskDataModule(d.datasets, d.img_size, d.batch_size, d.batch_mode, d.mean, d.std, d.iof_thr,
                                 d.flip, d.num_workers, cfg.trainer.seed)
        dm.setup("fit")
        return dm

    @classmethod
    def from_config(cls, cfg: MTPConfig, dm: MultiTaskDataModule) -> "MTPTask":
        d, m, t = cfg.data, cfg.model, cfg.trainer
        if "rotated" in m.tasks:
            _resolve_detector(m)
        d.mean = list(d.mean or [123.675, 116.28, 103.53])
        d.std = list(d.std or [58.395, 57.12, 57.375])
        data = {"datasets": dm.classes, "mean": d.mean, "std": d.std, "img_size": d.img_size,
                "batch_sizes": dict(dm.batch_sizes), "angle_version": "le90"}
        task = cls(model=to_plain(asdict(m)), data=data, optim=to_plain(asdict(cfg.optim)))
        if m.pretrained and not (t.resume and (Path(t.out) / "last.ckpt").exists()):
            from rsvision.models import load_checkpoint

            load_checkpoint(task.model.encoder, m.pretrained)
        return task

    def after_fit(self, cfg: MTPConfig, dm: MultiTaskDataModule, result: RunResult) -> None:
        """``encoder.pth``: the encoder of the selected checkpoint and what built it (``--pretrained`` input)."""
        from rsvision.models.checkpoints import read_checkpoint
        from rsvision.outputs import atomic_path

        ckpt = read_checkpoint(result.checkpoint)
        prefix = "model.encoder."
        sd = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        m = self.hparams.model
        meta = {"model": m["name"], "backbone_kwargs": dict(m.get("backbone_kwargs") or {}), "tasks": list(m["tasks"]),
                "mean": list(self.hparams.mean), "std": list(self.hparams.std),
                "datasets": {k: list(v) for k, v in self.hparams.datasets.items()}, "source": str(result.checkpoint)}
        with atomic_path(result.run_dir / "encoder.pth") as tmp:
            torch.save({"state_dict": sd, "meta": meta}, tmp)

    def evaluate(self, data: Any, **options: Any) -> dict[str, Any]:
        raise ConfigError("an MTP checkpoint has no metrics of its own: fine-tune it with --pretrained")

    def predict(self, inputs, out=None, **options):
        raise ConfigError("an MTP checkpoint predicts nothing: fine-tune it with --pretrained")
