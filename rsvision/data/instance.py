"""Instance-segmentation data: one multi-task folder (DOTA / DIOR-R / SAMRS / iSAID) split into train / val.

Why a module of its own: the multi-task readers (:mod:`rsvision.data.multitask_readers`) already turn each
of those layouts into instance masks; ``rsvision instance train`` needs one folder (``--data DIR``) split
by image, seeded, recorded in ``splits.json`` (so ``eval --split val`` scores only held-out images), band
statistics of its training images and plain batches. Batches are :func:`rsvision.data.multitask.collate_multitask`'s
(``image`` normalised, ``targets`` with ``masks`` / ``mask_labels``), so the task and MTP read the same thing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from rsvision.data.multitask import MultiTaskDataset, collate_multitask
from rsvision.data.multitask_readers import detect_format, open_reader
from rsvision.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["InstanceDataConfig", "InstanceDataModule", "reader_spec", "reader_paths"]


@dataclass
class InstanceDataConfig:
    """``data:``. ``root`` (``--data``): one dataset folder; ``format`` (dota | dior | samrs | isaid; None:
    from the layout) and ``reader`` (that format's options, e.g. ``ann_file`` for SAMRS). Without
    ``val_root`` a seeded ``val_fraction`` of the images validates. ``classes`` None: the format's own
    (DOTA-v1.0, DIOR-R, the SAMRS JSON's categories, iSAID's colour table). ``mean`` / ``std`` None: from
    the training images. Training takes random ``img_size`` crops with flips, ``samples_per_image`` per
    image and epoch; validation the centre crop (``instance eval`` scores whole images)."""

    root: Any = None
    format: str | None = None
    reader: dict[str, Any] = field(default_factory=dict)
    val_root: Any = None
    val_fraction: float = 0.25
    classes: list[str] | None = None
    img_size: int = 512
    batch_size: int = 2
    samples_per_image: int = 1
    mean: list[float] | None = None
    std: list[float] | None = None
    iof_thr: float = 0.7
    flip: bool = True
    num_workers: int = 0


def reader_spec(root: str | Path, fmt: str | None = None, options: dict | None = None,
                classes: Sequence[str] | None = None, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The :func:`open_reader` spec of a folder (format detected from the layout when ``fmt`` is None)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder does not exist", path=root)
    spec = detect_format(root) if fmt is None else {"format": fmt, "root": str(root)}
    if spec["format"] == "samrs" and fmt is None and "ann_file" in (options or {}):
        spec.pop("ann_file")
    spec.update(dict(options or {}))
    if classes is not None:
        spec["classes"] = list(classes)
    if names is not None:
        spec["names"] = list(names)
    return spec


def reader_paths(reader: Any) -> list[Path]:
    """The image files of a multi-task reader, in its order (without loading them)."""
    if hasattr(reader, "files"):
        return [Path(p) for p in reader.files]
    if hasattr(reader, "pairs"):
        return [Path(p) for p, _ in reader.pairs]
    if hasattr(reader, "items"):
        return [reader.img_dir / im["file_name"] for im, _ in reader.items]
    raise TypeError(f"{type(reader).__name__} does not list its images")


class _Repeated(Dataset):
    """``samples_per_image`` crops of every image per epoch: copy ``r`` draws from its own stream, so the
    copies differ and each stays a function of ``(seed, epoch, index, copy)`` (exact resume)."""

    def __init__(self, sets: Sequence[MultiTaskDataset]):
        self.sets, self.n = list(sets), len(sets[0])

    def __len__(self) -> int:
        return self.n * len(self.sets)

    def __getitem__(self, key):
        i, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)
        inner = i % self.n if epoch is None else (i % self.n, epoch)
        return self.sets[i // self.n][inner]


class InstanceDataModule(L.LightningDataModule):
    """Train / val readers of one folder, band statistics, loaders (see :class:`InstanceDataConfig`)."""

    def __init__(self, cfg: InstanceDataConfig, seed: int = 0):
        super().__init__()
        if cfg.root is None:
            raise ConfigError("instance train needs data (--data DIR: a DOTA / DIOR-R / SAMRS / iSAID folder)")
        if not 0.0 <= float(cfg.val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg.val_fraction}")
        if int(cfg.samples_per_image) < 1 or int(cfg.img_size) < 32 or int(cfg.batch_size) < 1:
            raise ConfigError("data.samples_per_image and data.batch_size must be >= 1, data.img_size >= 32")
        self.cfg, self.seed = cfg, int(seed)
        self._ready = False

    def _reader(self, root, names=None):
        c = self.cfg
        return open_reader(reader_spec(root, c.format, c.reader, c.classes, names))

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        c = self.cfg
        full = self._reader(c.root)
        self.format = reader_spec(c.root, c.format, c.reader)["format"]
        paths = reader_paths(full)
        if c.val_root is not None:
            self.train_reader, self.val_reader = full, self._reader(c.val_root)
        elif c.val_fraction <= 0 or len(paths) < 2:
            if len(paths) < 2 and c.val_fraction > 0:
                log.warning("only %d image: validating on the training data", len(paths))
            self.train_reader, self.val_reader = full, (full if c.val_fraction > 0 else None)
        else:
            order = np.random.default_rng(self.seed).permutation(len(paths))
            n_val = min(max(1, int(round(len(paths) * c.val_fraction))), len(paths) - 1)
            val = sorted(paths[i].stem for i in order[:n_val])
            train = sorted(paths[i].stem for i in order[n_val:])
            self.train_reader, self.val_reader = self._reader(c.root, train), self._reader(c.root, val)
        self.classes = list(self.train_reader.classes)
        if self.val_reader is not None and list(self.val_reader.classes) != self.classes:
            raise ConfigError(f"val data has classes {self.val_reader.classes}, train {self.classes}")
        self.mean, self.std = self.band_stats()
        ds = [MultiTaskDataset(self.train_reader, c.img_size, self.mean, self.std, True, self.seed, r, c.iof_thr,
                               c.flip) for r in range(int(c.samples_per_image))]
        self.train_ds = _Repeated(ds)
        self.val_ds = (MultiTaskDataset(self.val_reader, c.img_size, self.mean, self.std, False, self.seed)
                       if self.val_reader is not None else None)
        self._ready = True

    def band_stats(self) -> tuple[list[float], list[float]]:
        """Per-band mean / std of (up to 16 of) the training images; config values win."""
        c = self.cfg
        if c.mean is not None and c.std is not None:
            return [float(v) for v in c.mean], [float(v) for v in c.std]
        from rsvision.data.raster import compute_band_stats

        r = self.train_reader
        st = compute_band_stats(r.load(i).image for i in range(min(len(r), 16)))
        return [float(v) for v in st.mean], [float(v) for v in st.std]

    def train_paths(self) -> list[Path]:
        return reader_paths(self.train_reader)

    def split_record(self) -> dict:
        """What ``train`` writes to ``splits.json`` (``instance eval --split`` reads it back)."""
        from rsvision.data.splits import split_record

        self.setup()
        val = reader_paths(self.val_reader) if self.val_reader is not None else []
        return split_record(self.train_paths(), val, dataset_format=self.format)

    def train_dataloader(self) -> DataLoader:
        from rsvision.data.samplers import SeededRandomSampler

        self.setup()
        ds, bs = self.train_ds, int(self.cfg.batch_size)
        return DataLoader(ds, bs, sampler=SeededRandomSampler(len(ds), self.seed, keys=True),
                          collate_fn=collate_multitask, num_workers=self.cfg.num_workers,
                          drop_last=len(ds) > bs)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_ds is None:
            return []
        return DataLoader(self.val_ds, 1, shuffle=False, collate_fn=collate_multitask,
                          num_workers=self.cfg.num_workers)
