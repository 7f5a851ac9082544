"""Change detection as a task: a Siamese model over co-registered pairs (``rsvision change``).

Same structure as :mod:`rsvision.tasks.segmentation` (both extend :class:`~rsvision.tasks.dense.DenseTask`):
the model classifies every pixel of a ``(2, C, H, W)`` pair as unchanged / changed; pixels labelled
``ignore_index`` (sparse reference samples, e.g. Taizhou) count neither in the loss nor in the
metrics. Metrics are CONVENTIONS ``change``: precision, recall, F1, IoU of the change class, OA, kappa.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from rsvision.data.change import (
    CHANGE_CLASSES, ChangeDataConfig, ChangeDataModule, ChangeDataset, find_change_items, find_change_triplets,
)
from rsvision.data.segmentation import as_list
from rsvision.errors import DataError
from rsvision.tasks.base import register_task
from rsvision.tasks.common import TrainerOptions
from rsvision.tasks.dense import DenseModelConfig, DenseOptimConfig, DenseTask, SlidingConfig, _first_dtype
from rsvision.tasks.metrics import change_metrics

__all__ = ["ChangeModelConfig", "ChangeConfig", "ChangeTask", "pairs_from_inputs"]

CHANGE_PALETTE = [[0, 0, 0], [255, 0, 0]]


@dataclass
class ChangeModelConfig(DenseModelConfig):
    fusion: str = "diff"  # diff | concat


@dataclass
class ChangeConfig:
    """A whole ``rsvision change train`` config (see ``configs/change_*.yaml``)."""

    data: ChangeDataConfig = field(default_factory=ChangeDataConfig)
    model: ChangeModelConfig = field(default_factory=ChangeModelConfig)
    optim: DenseOptimConfig = field(default_factory=DenseOptimConfig)
    sliding: SlidingConfig = field(default_factory=SlidingConfig)
    trainer: TrainerOptions = field(default_factory=lambda: TrainerOptions(monitor="val/F1", mode="max"))


@register_task
class ChangeTask(DenseTask):
    """Siamese change detector; ``forward`` takes raw ``(B, 2, C, H, W)`` pairs."""

    name = "change"
    config_class = ChangeConfig
    monitor, mode = "val/F1", "max"
    monitor_keys = ("F1", "IoU", "precision", "recall", "OA", "kappa")

    def configure_model(self) -> torch.nn.Module:
        from rsvision.models.segmentation import build_change_model

        cfg = dict(self.hparams.model)
        cfg.setdefault("num_classes", len(self.hparams.classes))
        return build_change_model(cfg)

    def metrics_from_cm(self, cm) -> dict:
        return change_metrics(cm)

    @classmethod
    def build_datamodule(cls, cfg: ChangeConfig) -> ChangeDataModule:
        return ChangeDataModule(cfg.data, cfg.trainer.seed)

    @classmethod
    def config_sections(cls, cfg: ChangeConfig, dm: ChangeDataModule) -> dict:
        mean, std = dm.band_stats()
        return cls.task_data(cfg, CHANGE_CLASSES, CHANGE_PALETTE, mean, std, dtype=_first_dtype(dm))

    def eval_dataset(self, root: Any, split: str | None = None, split_file: str | Path | None = None,
                     **kw: Any) -> ChangeDataset:
        """Whole-pair dataset of every labelled pair under ``root`` (any supported layout); ``split``
        (train | val) keeps that split of the run's ``splits.json`` (pairs, or a scene's rows / columns)."""
        items = [it for r in as_list(root) for it in find_change_items(r, ignore_index=self.ignore_index, **kw)]
        if split is not None:
            import numpy as np

            from rsvision.data.change import ChangeItem, read_binary_label, split_label
            from rsvision.data.splits import find_split_file, keep_split, read_splits

            path = find_split_file(getattr(self, "checkpoint_path", None), split_file)
            rec = read_splits(path)
            items = keep_split(items, lambda it: it.a, rec, split, path)
            if rec["mode"] == "spatial":
                def part(it):
                    lab = it.label if isinstance(it.label, np.ndarray) else read_binary_label(it.label)
                    tr, va = split_label(lab, float(rec["val_fraction"]), int(rec["axis"]), self.ignore_index)
                    return ChangeItem(it.a, it.b, tr if split == "train" else va, it.name)

                items = [part(it) for it in items]
        return ChangeDataset(items, None, False, self.hparams.get("bands"), self.ignore_index, cache=False)

    def items_from_inputs(self, inputs: Sequence[Any]) -> list[tuple[Path, Path, str]]:
        return pairs_from_inputs(list(inputs))

    def open_input(self, item: tuple[Path, Path, str]):
        from rsvision.data.sources import PairSource, RasterSource

        a, b, _ = item
        bands = self.hparams.get("bands")
        kw = dict(bands=[x + 1 for x in bands] if bands else None, fill=self.hparams.mean,
                  train_dtype=self.hparams.get("dtype"))
        src_a = RasterSource(a, **kw)
        try:
            src_b = RasterSource(b, **kw)
        except Exception:
            src_a.close()
            raise
        return PairSource(src_a, src_b), f"{a} | {b}"

    def item_path(self, item: tuple[Path, Path, str]) -> Path:
        return Path(item[1])  # a pair is named after date B (its path when two pairs share a name)

    def item_name(self, item: tuple[Path, Path, str]) -> str:
        return item[2] or Path(item[1]).stem


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
