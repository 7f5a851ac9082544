"""Semantic segmentation as a Lightning task, plus the library functions behind ``rsvision segment``.

Layers (TorchGeo style): :mod:`rsvision.data.segmentation` reads files, :class:`SegmentationDataModule`
splits and batches them, :class:`SegmentationTask` owns model, loss, metrics and optimiser, and
:func:`train` / :func:`evaluate` / :func:`predict_file` are what the CLI (and Python users) call.

The checkpoint's ``hyper_parameters`` describe everything ``predict`` needs: the model config
(``build_model`` dict), class names, palette, band order and per-band mean / std (raw units; the
module normalises inside ``forward``, so callers feed raw pixel values), ignore index, training
crop and sliding-window settings. :class:`DenseTask` is shared with change detection.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rsvision.data.raster import compute_band_stats
from rsvision.data.segmentation import (
    SegmentationDataset, find_pairs, get_encoding,
)
from rsvision.viz.masks import colorize, default_palette, overlay
from rsvision.errors import BandMismatchError, CheckpointError, ConfigError
from rsvision.tasks.common import TrainerOptions, build_trainer, fit, to_plain, write_config
from rsvision.tasks.metrics import segmentation_metrics
from rsvision.data.raster import RasterSource
from rsvision.tasks.sliding import iter_blended_strips, sliding_window_inference

log = logging.getLogger(__name__)

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "SlidingConfig", "SegmentConfig", "DenseTask",
    "SegmentationTask", "SegmentationDataModule", "train", "evaluate", "predict_file", "load_task", "eval_dataset",
]


# --- configuration ---------------------------------------------------------------------------
@dataclass
class DataConfig:
    """``data:`` section. ``root`` / ``val_root`` may be lists of folders with ``images/`` + ``masks/``.

    Without ``val_root``, ``root/train`` + ``root/val`` are used when present, else the files are
    split with ``val_fraction`` (seeded); ``split: spatial`` instead keeps every image in both sets
    and validates on the last ``val_fraction`` of each image's rows (``split_axis: 0``) or columns,
    for datasets of a few large tiles. ``mask`` is a preset (``loveda``, ``isprs``, ``isprs_rgb``,
    ``isaid``, ``binary``) or a dict of :class:`rsvision.data.segmentation.MaskEncoding` fields.
    """

    root: Any = None
    val_root: Any = None
    mask: Any = None
    classes: list[str] | None = None
    ignore_index: int = 255
    img_size: int = 256
    batch_size: int = 8
    val_fraction: float = 0.25
    split: str = "files"  # files | spatial
    split_axis: int = 0
    samples_per_image: int = 1
    bands: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    num_workers: int = 0
    images: str = "images"
    masks: str = "masks"


@dataclass
class ModelConfig:
    """``model:`` section: ``name`` is the backbone (any timm ``features_only`` model, ``lsknet_t`` ...)."""

    name: str = "resnet18"
    decoder: str = "upernet"
    channels: int = 128
    pretrained: str | None = None
    backbone_kwargs: dict = field(default_factory=dict)
    decoder_kwargs: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW; ``schedule``: ``cosine`` (per step over max_epochs), ``time`` (also over max_time), ``constant``."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01


@dataclass
class SlidingConfig:
    """Sliding-window inference: window ``size`` (default: the training crop), ``overlap`` pixels."""

    size: int | None = None
    overlap: int | None = None
    tta: bool = False
    batch_size: int = 4


@dataclass
class SegmentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sliding: SlidingConfig = field(default_factory=SlidingConfig)
    trainer: TrainerOptions = field(default_factory=lambda: TrainerOptions(monitor="val/mIoU", mode="max"))


def _as_list(x: Any) -> list:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


def split_files(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split into (train, val); one item serves both (a warning says so)."""
    if len(items) < 2:
        log.warning("only %d sample: validating on the training data", len(items))
        return list(items), list(items)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    val = sorted(order[:n_val])
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in val]


# --- Lightning module --------------------------------------------------------------------------
class DenseTask(L.LightningModule):
    """Per-pixel classification shared by segmentation and change detection.

    Subclasses set ``task_name``, build ``self.model`` in :meth:`build` and turn a confusion matrix
    into the CONVENTIONS metric dict in :meth:`metrics_from_cm`.
    """

    task_name = "dense"
    monitor_keys: tuple[str, ...] = ()

    def __init__(self, model: dict, classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 ignore_index: int = 255, palette: Sequence[Sequence[int]] | None = None,
                 bands: Sequence[int] | None = None, optim: dict | None = None, img_size: int = 256,
                 sliding: dict | None = None, pretrained: str | None = None, task: str | None = None,
                 extra: dict | None = None):
        super().__init__()
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.save_hyperparameters(ignore=["pretrained"])
        self.hparams["task"] = self.task_name
        self.classes = list(classes)
        self.ignore_index = int(ignore_index)
        self.palette = [list(c) for c in (palette or default_palette(len(self.classes)))]
        self.model = self.build(dict(model))
        if len(mean) != len(std) or len(mean) != self.in_chans:
            raise ConfigError(f"normalisation has {len(mean)} bands but the model takes {self.in_chans}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.val_cm = MulticlassConfusionMatrix(len(self.classes), ignore_index=self.ignore_index)
        if pretrained:
            report = self.model.encoder.load_pretrained(pretrained)
            log.info("pretrained backbone %s: %s (encoder tensors %s)", pretrained, report.summary(),
                     report.meta.get("encoder_tensors_loaded"))

    # subclass hooks
    def build(self, cfg: dict) -> torch.nn.Module:
        raise NotImplementedError

    def metrics_from_cm(self, cm) -> dict:
        raise NotImplementedError

    @property
    def in_chans(self) -> int:
        return int(self.model.in_chans)

    @property
    def window(self) -> tuple[int, int]:
        s = dict(self.hparams.get("sliding") or {})
        size = int(s.get("size") or self.hparams.img_size)
        overlap = s.get("overlap")
        return size, int(size // 4 if overlap is None else overlap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixel values (native units) -> logits; normalisation uses the checkpoint's band stats."""
        if x.shape[-3] != self.in_chans:
            raise BandMismatchError(f"input has {x.shape[-3]} bands, the model expects {self.in_chans}")
        return self.model((x - self.mean) / self.std)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Mean over labelled pixels; a crop without any (sparse labels) contributes zero, not NaN.
        total = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        return total / (target != self.ignore_index).sum().clamp(min=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["mask"]))
        return loss

    def infer(self, image: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """Class probabilities ``(B, K, H, W)`` of a batch, by sliding windows when larger than the window."""
        size, overlap = self.window
        tta = bool((self.hparams.get("sliding") or {}).get("tta", False)) if tta is None else tta
        outs = []
        for img in image:
            p = sliding_window_inference(self, img, size, overlap, len(self.classes), tta=tta,
                                         batch_size=int((self.hparams.get("sliding") or {}).get("batch_size", 4)),
                                         device=self.device)
            outs.append(torch.from_numpy(p))
        return torch.stack(outs).to(self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        probs = self.infer(batch["image"])
        target = batch["mask"]
        nll = F.nll_loss(probs.clamp_min(1e-8).log(), target, ignore_index=self.ignore_index, reduction="sum")
        n = (target != self.ignore_index).sum().clamp(min=1)
        self.log("val/loss", nll / n, on_epoch=True, batch_size=len(target))
        self.val_cm.update(probs.argmax(1), target)

    def on_validation_epoch_end(self) -> None:
        m = self.metrics_from_cm(self.val_cm.compute())
        self.val_cm.reset()
        for k in self.monitor_keys:
            self.log(f"val/{k}", float(m[k] or 0.0), prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        import math

        from rsvision.tasks.common import budget_progress

        o = dict(self.hparams.get("optim") or {})
        opt = torch.optim.AdamW(self.parameters(), lr=float(o.get("lr", 1e-3)), weight_decay=float(o.get("weight_decay", 1e-4)))
        schedule = o.get("schedule", "cosine")
        if schedule not in ("cosine", "time", "constant"):
            raise ConfigError(f"optim.schedule must be cosine, time or constant, got {schedule!r}")
        if schedule == "constant" or self._trainer is None:
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = min(int(o.get("warmup_steps", 0)), total - 1)
        min_ratio = float(o.get("min_lr_ratio", 0.01))

        def factor(step: int) -> float:
            # per-step cosine over the run; "time" also anneals over the trainer's max_time budget, so a
            # time-limited run ends at a low learning rate whatever the machine speed
            if step < warm:
                return (step + 1) / (warm + 1)
            t = min((step - warm) / max(total - warm, 1), 1.0)
            if schedule == "time":
                t = max(t, budget_progress(self._trainer) or 0.0)
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SegmentationTask(DenseTask):
    """UperNet / Semantic FPN over any backbone; metrics per CONVENTIONS ``segment``."""

    task_name = "segment"
    monitor_keys = ("mIoU", "mF1", "OA")

    def build(self, cfg: dict) -> torch.nn.Module:
        from rsvision.models.segmentation import build_segmentor

        cfg.setdefault("num_classes", len(self.classes))
        return build_segmentor(cfg)

    def metrics_from_cm(self, cm) -> dict:
        return segmentation_metrics(cm, self.classes)


# --- data module -------------------------------------------------------------------------------
class SegmentationDataModule(L.LightningDataModule):
    """Train crops (random, augmented) and whole validation images from :class:`DataConfig`."""

    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.encoding = get_encoding(cfg.mask, cfg.classes, cfg.ignore_index)
        self.train_pairs, self.val_pairs = self._split()

    def _pairs(self, roots) -> list:
        return [p for r in _as_list(roots) for p in find_pairs(r, self.cfg.images, self.cfg.masks)]

    def _split(self) -> tuple[list, list]:
        c = self.cfg
        if not _as_list(c.root):
            raise ConfigError("no training data: set data.root (--data DIR)")
        if c.val_root:
            return self._pairs(c.root), self._pairs(c.val_root)
        roots = [Path(r) for r in _as_list(c.root)]
        if all((r / "train").is_dir() and (r / "val").is_dir() for r in roots):
            return self._pairs([r / "train" for r in roots]), self._pairs([r / "val" for r in roots])
        if c.split == "spatial":
            pairs = self._pairs(roots)
            return pairs, list(pairs)
        if c.split != "files":
            raise ConfigError(f"data.split must be 'files' or 'spatial', got {c.split!r}")
        return split_files(self._pairs(roots), c.val_fraction, self.seed)

    def band_stats(self) -> tuple[list[float], list[float]]:
        """Per-band mean / std of the training images (config values win)."""
        if self.cfg.mean is not None and self.cfg.std is not None:
            return list(self.cfg.mean), list(self.cfg.std)
        from rsvision.data.raster import read_image

        st = compute_band_stats(read_image(p, self.cfg.bands) for p, _ in self.train_pairs[:32])
        return list(st.mean), list(st.std)

    def num_bands(self) -> int:
        return len(self.band_stats()[0])

    def setup(self, stage: str | None = None) -> None:
        c = self.cfg
        tr_reg = va_reg = None
        if c.split == "spatial" and not c.val_root:
            tr_reg, va_reg = (c.split_axis, 0.0, 1 - c.val_fraction), (c.split_axis, 1 - c.val_fraction, 1.0)
        self.train_ds = SegmentationDataset(self.train_pairs, self.encoding, c.img_size, True, c.bands,
                                            samples_per_image=c.samples_per_image, seed=self.seed, region=tr_reg)
        self.val_ds = SegmentationDataset(self.val_pairs, self.encoding, None, False, c.bands, region=va_reg)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_ds, self.cfg.batch_size, shuffle=True, num_workers=self.cfg.num_workers,
                          drop_last=len(self.train_ds) > self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, 1, shuffle=False, num_workers=self.cfg.num_workers)


# --- library entry points (used by the CLI) ----------------------------------------------------
def _task_kwargs(cfg, classes, palette, mean, std, extra=None) -> dict:
    m = cfg.model
    model = dict(backbone=m.name, decoder=m.decoder, channels=m.channels, in_chans=len(mean),
                 backbone_kwargs=dict(m.backbone_kwargs), decoder_kwargs=dict(m.decoder_kwargs))
    if extra:
        model.update(extra)
    return dict(model=model, classes=list(classes), mean=mean, std=std, ignore_index=cfg.data.ignore_index,
                palette=palette, bands=cfg.data.bands, optim=to_plain(cfg.optim), img_size=cfg.data.img_size,
                sliding=to_plain(cfg.sliding), pretrained=m.pretrained)


def run_training(cfg, task: DenseTask, dm: L.LightningDataModule, **trainer_overrides: Any) -> dict:
    """Fit with the shared run-directory Trainer; returns paths, timings and the best validation metrics."""
    write_config(cfg.trainer.out, cfg)
    trainer = build_trainer(cfg.trainer, **trainer_overrides)
    t0 = time.time()
    best = fit(trainer, task, dm, cfg.trainer)
    result = {"run_dir": str(cfg.trainer.out), "best": best, "last": str(Path(cfg.trainer.out) / "last.ckpt"),
              "seconds": time.time() - t0}
    result.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    return result


def train(cfg: SegmentConfig, **trainer_overrides: Any) -> dict:
    """Train a segmentor as ``cfg`` says; ``trainer_overrides`` go to ``lightning.Trainer`` (tests)."""
    dm = SegmentationDataModule(cfg.data, cfg.trainer.seed)
    mean, std = dm.band_stats()
    enc = dm.encoding
    task = SegmentationTask(**_task_kwargs(cfg, enc.classes, enc.palette, mean, std), extra={"mask": enc.as_dict()})
    return run_training(cfg, task, dm, **trainer_overrides)


def eval_dataset(root, task: "SegmentationTask", mask: Any = None, images: str = "images", masks: str = "masks") -> SegmentationDataset:
    """Whole-image dataset under ``root`` (folder or list) decoded with the checkpoint's mask encoding.

    ``mask`` (a preset name or encoding dict) overrides the stored encoding, e.g. to evaluate a
    LoveDA-trained model on tiles saved with another encoding of the same classes.
    """
    stored = (task.hparams.get("extra") or {}).get("mask")
    enc = get_encoding(mask if mask is not None else stored, None if mask is not None else task.classes, task.ignore_index)
    if enc.classes != task.classes:
        raise ConfigError(f"mask encoding has classes {enc.classes}, the checkpoint {task.classes}")
    pairs = [p for r in _as_list(root) for p in find_pairs(r, images, masks)]
    return SegmentationDataset(pairs, enc, None, False, task.hparams.get("bands"), cache=False)


def load_task(path: str | Path, device: str = "cpu") -> DenseTask:
    """Any rsvision segmentation / change checkpoint -> its task module in eval mode."""
    from rsvision.models.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "model" not in hp:
        raise CheckpointError("not an rsvision segmentation / change checkpoint (no hyper_parameters)", path=path)
    if hp.get("task") == "change":
        from rsvision.tasks.change import ChangeTask as cls
    elif hp.get("task") == "segment":
        cls = SegmentationTask
    else:
        raise CheckpointError(f"checkpoint is for task {hp.get('task')!r}, not segment / change", path=path)
    task = cls(**{k: v for k, v in hp.items() if k != "task"})
    try:
        task.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as exc:
        own, theirs = set(task.state_dict()), set(ckpt.get("state_dict", {}))
        missing, unexpected = sorted(own - theirs), sorted(theirs - own)
        raise CheckpointError(f"weights do not fit the model its hyper_parameters describe (made by another "
                              f"rsvision version?): missing {missing[:3]}, unexpected {unexpected[:3]}, "
                              f"{len(missing)}/{len(unexpected)} in all", path=path) from exc
    return task.eval().to(device)


@torch.no_grad()
def evaluate(task: DenseTask, dataset, tta: bool | None = None, progress=None) -> dict:
    """CONVENTIONS metrics of ``task`` over ``dataset`` (whole images, sliding windows)."""
    from rsvision.tasks.metrics import confusion_matrix

    k = len(task.classes)
    cm = np.zeros((k, k), np.int64)
    for i in range(len(dataset)):
        s = dataset[i]
        probs = task.infer(s["image"][None].to(task.device), tta=tta)[0]
        cm += confusion_matrix(probs.argmax(0).cpu(), s["mask"], k, task.ignore_index)
        if progress is not None:
            progress(i + 1, len(dataset))
    return task.metrics_from_cm(cm)


def _overview(source, max_side: int = 2048) -> np.ndarray:
    """A decimated read of a raster (date B of a pair) for the PNG overlay, never the full scene."""
    src = getattr(source, "b", source)
    scale = max(1, int(np.ceil(max(src.height, src.width) / max_side)))
    h, w = -(-src.height // scale), -(-src.width // scale)  # = labels[::scale, ::scale].shape
    if hasattr(src, "ds"):
        return src.ds.read(src.bands, out_shape=(src.count, h, w)).astype(np.float32)
    return np.asarray(src.array[..., ::scale, ::scale], np.float32)


def write_prediction(task: DenseTask, strips, source, out: Path, stem: str, image_for_overlay,
                     rgb: Sequence[int] | None = None) -> dict:
    """Consume ``(y0, probs)`` strips: GeoTIFF mask (georeferenced input), index PNG, colour overlay PNG.

    ``rgb``: 0-based input bands shown as red, green, blue in the overlay (default the first three)."""
    from PIL import Image

    from rsvision.data.tiling import Window
    from rsvision.geo.writers import MaskWriter

    out.mkdir(parents=True, exist_ok=True)
    H, W = source.height, source.width
    georef = source.transform is not None or source.crs is not None
    labels = np.empty((H, W), np.uint8)
    writer = MaskWriter(out / f"{stem}_mask.tif", H, W, source.transform, source.crs, nodata=255,
                        palette=task.palette) if georef else None
    try:
        for y0, probs in strips:
            lab = probs.argmax(0).astype(np.uint8)
            lab[~source.valid(Window(0, y0, W, lab.shape[0]))] = 255
            labels[y0 : y0 + lab.shape[0]] = lab
            if writer is not None:
                writer.write_rows(y0, lab)
    finally:
        if writer is not None:
            writer.close()
    files = {}
    if writer is not None:
        files["geotiff"] = str(writer.path)
    else:
        Image.fromarray(labels).save(out / f"{stem}_mask.png")
        files["mask"] = str(out / f"{stem}_mask.png")
    ov = image_for_overlay
    scale = max(1, int(np.ceil(max(H, W) / 2048)))
    small = labels[::scale, ::scale]
    Image.fromarray(overlay(ov, small, task.palette, rgb=rgb)).save(out / f"{stem}_overlay.png")
    Image.fromarray(colorize(small, task.palette)).save(out / f"{stem}_color.png")
    files["overlay"] = str(out / f"{stem}_overlay.png")
    counts = np.bincount(labels[labels != 255].ravel(), minlength=len(task.classes))[: len(task.classes)]
    files["fraction"] = {c: float(n) / max(1, counts.sum()) for c, n in zip(task.classes, counts)}
    return files


def predict_file(task: SegmentationTask, path: str | Path, out: str | Path, tta: bool | None = None,
                 size: int | None = None, overlap: int | None = None, progress=None,
                 rgb: Sequence[int] | None = None) -> dict:
    """Segment one image / raster of any size (read lazily) and write its outputs into ``out``."""
    path = Path(path)
    source = RasterSource(path, [b + 1 for b in task.hparams.bands] if task.hparams.get("bands") else None)
    try:
        if source.count != task.in_chans:
            raise BandMismatchError(f"raster has {source.count} bands, the checkpoint expects {task.in_chans} "
                                    f"(bands {task.hparams.get('bands') or 'all'})", path=path)
        ws, wo = task.window
        s = dict(task.hparams.get("sliding") or {})
        strips = iter_blended_strips(task, source, size or ws, wo if overlap is None else overlap, len(task.classes),
                                     batch_size=int(s.get("batch_size", 4)), tta=bool(s.get("tta")) if tta is None else tta,
                                     device=task.device, progress=progress)
        return write_prediction(task, strips, source, Path(out), path.stem, _overview(source), rgb)
    finally:
        source.close()
