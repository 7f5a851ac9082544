"""Semantic segmentation as a task: UperNet / Semantic FPN over any backbone (``rsvision segment``).

Layers (TorchGeo style): :mod:`rsvision.data.segmentation` reads files, splits and batches them
(:class:`~rsvision.data.segmentation.SegmentationDataModule`); :class:`SegmentationTask` owns
model, loss, metrics and optimiser on the shared :class:`~rsvision.tasks.dense.DenseTask`; the
verbs of :mod:`rsvision.tasks.base` (``train`` / ``load_task`` / ``evaluate`` / ``predict``) are
what the CLI and Python users call. The checkpoint also stores the mask encoding (``extra.mask``),
so ``eval`` decodes ground truth exactly as training did.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from rsvision.data.segmentation import (
    SegmentationDataModule, SegmentationDataset, SegmentDataConfig, as_list, find_pairs, get_encoding,
)
from rsvision.errors import ConfigError
from rsvision.tasks.base import register_task
from rsvision.tasks.common import TrainerOptions
from rsvision.tasks.dense import DenseModelConfig, DenseOptimConfig, DenseTask, SlidingConfig, _first_dtype
from rsvision.tasks.metrics import segmentation_metrics

__all__ = ["SegmentConfig", "SegmentationTask"]


@dataclass
class SegmentConfig:
    """A whole ``rsvision segment train`` config (see ``configs/seg_*.yaml``)."""

    data: SegmentDataConfig = field(default_factory=SegmentDataConfig)
    model: DenseModelConfig = field(default_factory=DenseModelConfig)
    optim: DenseOptimConfig = field(default_factory=DenseOptimConfig)
    sliding: SlidingConfig = field(default_factory=SlidingConfig)
    trainer: TrainerOptions = field(default_factory=lambda: TrainerOptions(monitor="val/mIoU", mode="max"))


@register_task
class SegmentationTask(DenseTask):
    """UperNet / Semantic FPN over any backbone; metrics per CONVENTIONS ``segment``."""

    name = "segment"
    config_class = SegmentConfig
    monitor, mode = "val/mIoU", "max"
    monitor_keys = ("mIoU", "mF1", "OA")

    def configure_model(self) -> torch.nn.Module:
        from rsvision.models.segmentation import build_segmentor

        cfg = dict(self.hparams.model)
        cfg.setdefault("num_classes", len(self.hparams.classes))
        return build_segmentor(cfg)

    def metrics_from_cm(self, cm) -> dict:
        return segmentation_metrics(cm, self.classes)

    @classmethod
    def build_datamodule(cls, cfg: SegmentConfig) -> SegmentationDataModule:
        return SegmentationDataModule(cfg.data, cfg.trainer.seed)

    @classmethod
    def config_sections(cls, cfg: SegmentConfig, dm: SegmentationDataModule) -> dict:
        mean, std = dm.band_stats()
        enc = dm.encoding
        return cls.task_data(cfg, enc.classes, enc.palette, mean, std, extra={"mask": enc.as_dict()},
                             dtype=_first_dtype(dm))

    def eval_dataset(self, root: Any, mask: Any = None, images: str = "images", masks: str = "masks",
                     split: str | None = None, split_file: str | Path | None = None) -> SegmentationDataset:
        """Whole-image dataset under ``root`` (folder or list) decoded with the checkpoint's mask encoding.

        ``mask`` (a preset name or encoding dict) overrides the stored encoding, e.g. to evaluate a
        LoveDA-trained model on tiles saved with another encoding of the same classes. ``split``
        (train | val) keeps that split of the run's ``splits.json`` (or ``split_file``): its files, or
        for a spatial split its rows / columns.
        """
        stored = (self.hparams.get("extra") or {}).get("mask")
        enc = get_encoding(mask if mask is not None else stored, None if mask is not None else self.classes,
                           self.ignore_index)
        if enc.classes != self.classes:
            raise ConfigError(f"mask encoding has classes {enc.classes}, the checkpoint {self.classes}")
        pairs = [p for r in as_list(root) for p in find_pairs(r, images, masks)]
        region = None
        if split is not None:
            from rsvision.data.splits import find_split_file, keep_split, read_splits

            path = find_split_file(getattr(self, "checkpoint_path", None), split_file)
            rec = read_splits(path)
            pairs = keep_split(pairs, lambda p: p[0], rec, split, path)
            if rec["mode"] == "spatial":
                cut = 1 - float(rec["val_fraction"])
                region = (int(rec["axis"]), 0.0, cut) if split == "train" else (int(rec["axis"]), cut, 1.0)
        return SegmentationDataset(pairs, enc, None, False, self.hparams.get("bands"), cache=False, region=region)

    def items_from_inputs(self, inputs: Sequence[Any]) -> list[Path]:
        from rsvision.data.raster import expand_inputs

        return expand_inputs(inputs)

    def open_input(self, item: Path):
        from rsvision.data.sources import RasterSource

        bands = self.hparams.get("bands")
        return RasterSource(item, [b + 1 for b in bands] if bands else None, fill=self.hparams.mean,
                            train_dtype=self.hparams.get("dtype")), str(item)
