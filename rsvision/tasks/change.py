"""Change detection as a Lightning task, plus the library functions behind ``rsvision change``.

Same structure as :mod:`rsvision.tasks.segmentation` (it reuses :class:`DenseTask`): a Siamese
model classifies every pixel of a ``(2, C, H, W)`` pair as unchanged / changed; pixels labelled
``ignore_index`` (sparse reference samples, e.g. Taizhou) count neither in the loss nor in the
metrics. Metrics are CONVENTIONS ``change``: precision, recall, F1, IoU of the change class, OA, kappa.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from rsvision.data.change import CHANGE_CLASSES, ChangeDataset, ChangeItem, find_change_items, find_change_triplets, split_label
from rsvision.data.raster import compute_band_stats
from rsvision.errors import BandMismatchError, ConfigError, DataError
from rsvision.tasks.common import TrainerOptions
from rsvision.tasks.metrics import change_metrics
from rsvision.tasks.segmentation import (
    DenseTask, ModelConfig, OptimConfig, SlidingConfig, _as_list, _overview, _task_kwargs, run_training,
    split_files, write_prediction,
)
from rsvision.data.raster import PairSource, RasterSource
from rsvision.tasks.sliding import iter_blended_strips

__all__ = ["ChangeDataConfig", "ChangeModelConfig", "ChangeConfig", "ChangeTask", "ChangeDataModule",
           "train", "predict_pair", "pairs_from_inputs", "eval_dataset"]

CHANGE_PALETTE = [[0, 0, 0], [255, 0, 0]]


@dataclass
class ChangeDataConfig:
    """``data:`` section. ``root`` / ``val_root``: folders (or lists) with ``A/ B/ label/`` or a sparse scene.

    Without ``val_root``, pairs are split by file with ``val_fraction``; a single scene (Taizhou) is
    split spatially: the last ``val_fraction`` of its columns (``split_axis: 1``) or rows validate.
    """

    root: Any = None
    val_root: Any = None
    ignore_index: int = 255
    img_size: int = 256
    batch_size: int = 8
    val_fraction: float = 0.25
    split_axis: int = 1
    samples_per_image: int = 1
    bands: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    num_workers: int = 0
    a: str = "A"
    b: str = "B"
    label: str = "label"
    changed: str = "change.bmp"
    unchanged: str = "unchanged.bmp"


@dataclass
class ChangeModelConfig(ModelConfig):
    fusion: str = "diff"  # diff | concat


@dataclass
class ChangeConfig:
    data: ChangeDataConfig = field(default_factory=ChangeDataConfig)
    model: ChangeModelConfig = field(default_factory=ChangeModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sliding: SlidingConfig = field(default_factory=SlidingConfig)
    trainer: TrainerOptions = field(default_factory=lambda: TrainerOptions(monitor="val/F1", mode="max"))


class ChangeTask(DenseTask):
    """Siamese change detector; ``forward`` takes raw ``(B, 2, C, H, W)`` pairs."""

    task_name = "change"
    monitor_keys = ("F1", "IoU", "precision", "recall", "OA", "kappa")

    def build(self, cfg: dict) -> torch.nn.Module:
        from rsvision.models.segmentation import build_change_model

        cfg.setdefault("num_classes", len(self.classes))
        return build_change_model(cfg)

    def metrics_from_cm(self, cm) -> dict:
        return change_metrics(cm)


class ChangeDataModule(L.LightningDataModule):
    """Random augmented crops of training pairs; whole validation pairs."""

    def __init__(self, cfg: ChangeDataConfig, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.train_items, self.val_items = self._split()

    def _items(self, roots) -> list[ChangeItem]:
        c = self.cfg
        kw = dict(a=c.a, b=c.b, label=c.label, changed=c.changed, unchanged=c.unchanged, ignore_index=c.ignore_index)
        return [it for r in _as_list(roots) for it in find_change_items(r, **kw)]

    def _split(self) -> tuple[list, list]:
        c = self.cfg
        if not _as_list(c.root):
            raise ConfigError("no training data: set data.root (--data DIR)")
        if c.val_root:
            return self._items(c.root), self._items(c.val_root)
        items = self._items(c.root)
        scenes = [it for it in items if isinstance(it.label, np.ndarray)]
        if len(items) == 1 and scenes:  # one labelled scene: spatial hold-out
            tr, va = split_label(scenes[0].label, c.val_fraction, c.split_axis, c.ignore_index)
            it = scenes[0]
            return [ChangeItem(it.a, it.b, tr, it.name)], [ChangeItem(it.a, it.b, va, it.name)]
        return split_files(items, c.val_fraction, self.seed)

    def band_stats(self) -> tuple[list[float], list[float]]:
        """Per-band mean / std over both dates of the training pairs (config values win)."""
        if self.cfg.mean is not None and self.cfg.std is not None:
            return list(self.cfg.mean), list(self.cfg.std)
        from rsvision.data.raster import read_image

        imgs = (read_image(p, self.cfg.bands) for it in self.train_items[:16] for p in (it.a, it.b))
        st = compute_band_stats(imgs)
        return list(st.mean), list(st.std)

    def setup(self, stage: str | None = None) -> None:
        c = self.cfg
        self.train_ds = ChangeDataset(self.train_items, c.img_size, True, c.bands, c.ignore_index,
                                      samples_per_image=c.samples_per_image, seed=self.seed)
        self.val_ds = ChangeDataset(self.val_items, None, False, c.bands, c.ignore_index)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_ds, self.cfg.batch_size, shuffle=True, num_workers=self.cfg.num_workers,
                          drop_last=len(self.train_ds) > self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, 1, shuffle=False, num_workers=self.cfg.num_workers)


def train(cfg: ChangeConfig, **trainer_overrides: Any) -> dict:
    """Train a Siamese change detector as ``cfg`` says (``trainer_overrides`` go to the Trainer)."""
    dm = ChangeDataModule(cfg.data, cfg.trainer.seed)
    mean, std = dm.band_stats()
    kw = _task_kwargs(cfg, CHANGE_CLASSES, CHANGE_PALETTE, mean, std, extra={"fusion": cfg.model.fusion})
    task = ChangeTask(**kw)
    return run_training(cfg, task, dm, **trainer_overrides)


def eval_dataset(root: str | Path, task: ChangeTask, **kw: Any) -> ChangeDataset:
    """Whole-pair dataset of every labelled pair under ``root`` (any supported layout)."""
    items = [it for r in _as_list(root) for it in find_change_items(r, ignore_index=task.ignore_index, **kw)]
    bands = task.hparams.get("bands")
    return ChangeDataset(items, None, False, bands, task.ignore_index, cache=False)


def pairs_from_inputs(inputs: list[str | Path]) -> list[tuple[Path, Path, str]]:
    """CLI inputs -> ``(A, B, name)`` pairs: folders with ``A/ B/`` (labels optional), sparse scenes, or files A B A B ..."""
    pairs: list[tuple[Path, Path, str]] = []
    files: list[Path] = []
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            if (p / "A").is_dir():
                lab = "label" if (p / "label").is_dir() else None
                pairs += [(it.a, it.b, it.name) for it in find_change_triplets(p, label=lab)]
            else:
                it = find_change_items(p)[0]
                pairs.append((it.a, it.b, it.name))
        elif p.is_file():
            files.append(p)
        else:
            import glob

            found = sorted(Path(q) for q in glob.glob(str(x)))
            if not found:
                raise DataError("no such input", path=x)
            files += found
    if len(files) % 2:
        raise DataError(f"change inputs come in pairs (date A, date B); got {len(files)} file(s)", path=files[-1])
    pairs += [(files[i], files[i + 1], files[i + 1].stem) for i in range(0, len(files), 2)]
    return pairs


def predict_pair(task: ChangeTask, a: str | Path, b: str | Path, out: str | Path, name: str | None = None,
                 tta: bool | None = None, size: int | None = None, overlap: int | None = None, progress=None,
                 rgb: Sequence[int] | None = None) -> dict:
    """Change map of a co-registered pair of any size (read lazily): GeoTIFF (georeferenced), PNGs."""
    bands = task.hparams.get("bands")
    idx = [x + 1 for x in bands] if bands else None
    source = PairSource(RasterSource(a, idx), RasterSource(b, idx))
    try:
        if source.count != task.in_chans:
            raise BandMismatchError(f"rasters have {source.count} bands, the checkpoint expects {task.in_chans}", path=a)
        ws, wo = task.window
        s = dict(task.hparams.get("sliding") or {})
        strips = iter_blended_strips(task, source, size or ws, wo if overlap is None else overlap, 2,
                                     batch_size=int(s.get("batch_size", 4)), tta=bool(s.get("tta")) if tta is None else tta,
                                     device=task.device, progress=progress)
        return write_prediction(task, strips, source, Path(out), name or Path(b).stem, _overview(source), rgb)
    finally:
        source.close()
