"""Rotated object detection as a Lightning task: Oriented R-CNN training, validation mAP, datamodule.

The published LSKNet / Oriented R-CNN DOTA schedule is the default: AdamW, lr 2e-4 for a total
batch of 16 scaled linearly to the actual total batch, weight decay 0.05, linear warmup over 500
iterations from lr/3, x0.1 steps at epochs 8 and 11 of 12 (scaled proportionally for other
lengths), gradient clipping 35 (set on the Trainer). Validation mAP comes from the DOTA evaluator
(:mod:`rsvision.data.dota`), so ``val/mAP`` means exactly what ``detect eval`` reports.

Checkpoints are self-describing (CONVENTIONS): ``hyper_parameters`` hold the model config,
class names, bands, per-band mean/std, angle version, image size and GSD, so
:func:`load_detector` rebuilds the model from the file alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from rsvision.errors import CheckpointError, ConfigError
from rsvision.tasks.common import TrainerOptions

log = logging.getLogger(__name__)

__all__ = ["DetectionTask", "DetectionDataModule", "DetectDataConfig", "DetectModelConfig", "DetectOptimConfig",
           "DetectEvalConfig", "DetectConfig", "build_task", "train", "load_detector", "freeze_bn", "lr_factor",
           "evaluate_detections", "resolve_classes"]


def freeze_bn(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode with frozen affine parameters (small-batch single-device training)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def lr_factor(step: int, epoch: int, warmup_iters: int, warmup_ratio: float, milestones: Sequence[int],
              gamma: float = 0.1) -> float:
    """Multiplier of the base lr: linear warmup (MMCV style, from ``warmup_ratio``) times step decay."""
    f = gamma ** sum(epoch >= m for m in milestones)
    if warmup_iters > 0 and step < warmup_iters:
        f *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters
    return f


def evaluate_detections(dets: dict[str, list], gts: dict[str, dict], class_names: Sequence[str],
                        iou_thr: float = 0.5, metric: str = "voc07") -> dict:
    """Score detections with the DOTA evaluator -> the CONVENTIONS detect JSON dict.

    ``dets[image] = (polys (K, 8), scores (K,), labels (K,))`` and ``gts[image] = {"polys" (N, 8),
    "labels" (N,), "difficult" (N,)}`` (numpy or tensors; labels index ``class_names``).
    """
    import numpy as np

    from rsvision.data.dota.evaluate import evaluate_polys

    def np_(x):
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    det_by_class: dict[str, list] = {c: [] for c in class_names}
    for name, (polys, scores, labels) in dets.items():
        polys, scores, labels = np_(polys).reshape(-1, 8), np_(scores).reshape(-1), np_(labels).reshape(-1)
        for p, s, lab in zip(polys, scores, labels):
            det_by_class[class_names[int(lab)]].append((name, float(s), p.astype(np.float64)))
    gt_by_image = {}
    for name, g in gts.items():
        labels = np_(g["labels"]).reshape(-1)
        gt_by_image[name] = {
            "polys": np_(g["polys"]).reshape(-1, 8).astype(np.float64),
            "classes": [class_names[int(v)] for v in labels],
            "difficult": np_(g.get("difficult", np.zeros(len(labels)))).reshape(-1).astype(int),
        }
    return evaluate_polys(det_by_class, gt_by_image, list(class_names), iou_thr=iou_thr, metric=metric)


class DetectionTask(L.LightningModule):
    """Train / validate any rsvision rotated detector built by ``rsvision.models.build_model``.

    Args:
        model: the detector's plain config dict (``{"type": "OrientedRCNN", "backbone": ...}``);
            ``num_classes`` and ``in_chans`` are filled from ``class_names`` / ``bands``.
        class_names: class names, in label order.
        bands: input band indices (0-based) in the order the model sees them.
        mean, std: per-band normalisation in raw pixel units.
        lr: base lr for a total batch of ``base_batch`` (scaled linearly to the real total batch).
        milestones: epochs at which the lr drops x0.1; None -> 8/12 and 11/12 of ``max_epochs``.
        frozen_bn: freeze BatchNorm (statistics and affine) while training.
        pretrained: backbone or whole-detector checkpoint loaded by ``rsvision.models.load_checkpoint``.
    """

    def __init__(
        self,
        model: dict,
        class_names: Sequence[str],
        bands: Sequence[int] | None = None,
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
        angle_version: str = "le90",
        img_size: int = 1024,
        gsd: float | None = None,
        lr: float = 2e-4,
        base_batch: int = 16,
        batch_size: int = 2,
        weight_decay: float = 0.05,
        warmup_iters: int = 500,
        warmup_ratio: float = 1.0 / 3,
        max_epochs: int = 12,
        milestones: Sequence[int] | None = None,
        frozen_bn: bool = False,
        pretrained: str | None = None,
        iou_thr: float = 0.5,
        metric: str = "voc07",
    ):
        super().__init__()
        model = dict(model)
        model["num_classes"] = len(class_names)
        model["class_names"] = list(class_names)
        bands = list(bands) if bands is not None else list(range(len(mean)))
        model["in_chans"] = len(bands)
        if len(mean) != len(bands) or len(std) != len(bands):
            raise ConfigError(f"{len(bands)} bands but mean/std have {len(mean)}/{len(std)} values")
        self.save_hyperparameters(dict(
            model=model, class_names=list(class_names), bands=bands, mean=[float(v) for v in mean],
            std=[float(v) for v in std], angle_version=angle_version, img_size=int(img_size), gsd=gsd,
            lr=lr, base_batch=base_batch, batch_size=batch_size, weight_decay=weight_decay,
            warmup_iters=warmup_iters, warmup_ratio=warmup_ratio, max_epochs=max_epochs,
            milestones=list(milestones) if milestones is not None else None, frozen_bn=frozen_bn,
            pretrained=str(pretrained) if pretrained else None, iou_thr=iou_thr, metric=metric,
        ))
        import rsvision.models.detectors  # noqa: F401  (registers the detector builders)
        from rsvision.models import build_model

        self.model = build_model(model)
        self.load_report = None
        if pretrained:
            from rsvision.models import load_checkpoint

            self.load_report = load_checkpoint(self.model, pretrained)
            log.info("pretrained weights from %s:\n%s", pretrained, getattr(self.load_report, "summary", lambda: "")())
        self._val_dets: dict[str, tuple] = {}
        self._val_gts: dict[str, dict] = {}

    # --- training ---------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.hparams.frozen_bn:
            freeze_bn(self.model)
        return self

    def forward(self, images: torch.Tensor, targets=None):
        return self.model(images, targets)

    def training_step(self, batch, batch_idx):
        images, targets, _ = batch
        losses = self.model(images, targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))  # "acc" etc. are diagnostics
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=False)
        # epoch mean: what checkpoint selection uses when there is no validation set (a step value is noise)
        self.log("train/epoch_loss", loss, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        for k, v in losses.items():
            self.log(f"train/{k}", v, batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    def _milestones(self) -> list[int]:
        ms = self.hparams.milestones
        if ms is not None:
            return [int(m) for m in ms]
        tr = self._trainer
        E = int(tr.max_epochs if tr is not None and tr.max_epochs and tr.max_epochs > 0 else self.hparams.max_epochs)
        return [max(1, round(E * 8 / 12)), max(1, round(E * 11 / 12))]

    def configure_optimizers(self):
        tr = self._trainer
        world = tr.world_size if tr is not None else 1
        accum = tr.accumulate_grad_batches if tr is not None else 1
        total = self.hparams.batch_size * world * accum
        lr = self.hparams.lr * total / self.hparams.base_batch
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.hparams.weight_decay)
        ms = self._milestones()

        def fn(step: int) -> float:
            epoch = self._trainer.current_epoch if self._trainer is not None else 0
            return lr_factor(step, epoch, self.hparams.warmup_iters, self.hparams.warmup_ratio, ms)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- validation (DOTA mAP) --------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_dets, self._val_gts = {}, {}

    def validation_step(self, batch, batch_idx):
        from rsvision.ops import obb2poly

        images, targets, metas = batch
        outs = self.model(images, image_sizes=[m["shape"] for m in metas])
        for out, tgt, meta in zip(outs, targets, metas):
            name = meta.get("name", f"{batch_idx}_{len(self._val_dets)}")
            self._val_dets[name] = (obb2poly(out["boxes"].float(), "le90").cpu(), out["scores"].cpu(), out["labels"].cpu())
            diff = meta.get("difficult")
            self._val_gts[name] = {"polys": obb2poly(tgt["boxes"].float(), "le90").cpu(), "labels": tgt["labels"].cpu(),
                                   "difficult": diff.cpu() if isinstance(diff, torch.Tensor) else torch.zeros(len(tgt["labels"]))}

    def on_validation_epoch_end(self) -> None:
        dets, gts = self._val_dets, self._val_gts
        if self._trainer is not None and self._trainer.world_size > 1:
            gathered: list = [None] * self._trainer.world_size
            torch.distributed.all_gather_object(gathered, (dets, gts))
            dets, gts = {}, {}
            for d, g in gathered:
                dets.update(d)
                gts.update(g)
        res = evaluate_detections(dets, gts, self.hparams.class_names, self.hparams.iou_thr, self.hparams.metric)
        self.last_val_metrics = res
        mAP = res["mAP"] if res["mAP"] is not None else 0.0  # None: no ground truth in the val set
        self.log("val/mAP", float(mAP), prog_bar=True, sync_dist=False, rank_zero_only=False)


# --- data -------------------------------------------------------------------------------------------
@dataclass
class DetectDataConfig:
    """The ``data:`` section. ``root`` holds ``train/`` and ``val/`` (each ``images/`` + ``annfiles/``
    or ``labelTxt/``), or give ``train_dir`` / ``val_dir`` explicitly."""

    root: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    format: str = "dota"  # dota | dior | hrsc
    classes: list[str] | None = None  # default: the dataset's class list (DOTA-v1.0 for "dota")
    bands: list[int] | None = None
    mean: list[float] | None = None  # None: ImageNet RGB in 0-255 units
    std: list[float] | None = None
    img_size: int = 1024
    batch_size: int = 2
    num_workers: int = 2
    keep_empty: bool = False
    rect_classes: list[str] = field(default_factory=lambda: ["storage-tank", "roundabout"])
    flip: bool = True
    rotate_p: float = 0.5
    val_split: float = 0.0  # >0: hold out this fraction of train when there is no val dir
    train_list: str | None = None  # text file of image stems (HRSC/DIOR ImageSets/*.txt); None: all images
    val_list: str | None = None


def _read_list(path: str | None) -> list[str] | None:
    """Image stems, one per line (ImageSets files); None when no list is given."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError("image list file not found", path=p)
    return [Path(line.strip()).stem for line in p.read_text().splitlines() if line.strip()]


def _dirs(d: str | Path, fmt: str) -> tuple[Path, Path]:
    from rsvision.data.detection import find_ann_dir

    d = Path(d)
    if fmt == "dota":
        ann = find_ann_dir(d)
        return d / "images", (ann if ann is not None else d / "labelTxt")
    if fmt == "dior":
        return d / "JPEGImages-trainval", d / "Annotations" / "Oriented Bounding Boxes"
    return d / "AllImages", d / "Annotations"


class DetectionDataModule(L.LightningDataModule):
    """Train / val rotated-detection loaders with the published augmentations and pad-to-32 collate."""

    def __init__(self, cfg: DetectDataConfig, class_names: Sequence[str]):
        super().__init__()
        self.cfg = cfg
        self.class_names = list(class_names)
        self.mean = cfg.mean or [123.675, 116.28, 103.53]
        self.std = cfg.std or [58.395, 57.12, 57.375]

    def _train_dir(self) -> Path:
        d = self.cfg.train_dir or (Path(self.cfg.root) / "train" if self.cfg.root else None)
        if d is None:
            raise ConfigError("data: need root (with train/) or train_dir")
        if not Path(d).exists() and self.cfg.root and Path(self.cfg.root).exists():
            return Path(self.cfg.root)
        return Path(d)

    def _val_dir(self) -> Path | None:
        d = self.cfg.val_dir or (Path(self.cfg.root) / "val" if self.cfg.root else None)
        return Path(d) if d is not None and Path(d).exists() else None

    def setup(self, stage: str | None = None) -> None:
        from rsvision.data import det_transforms as T
        from rsvision.data.detection import DetectionDataset

        c = self.cfg
        rect = [self.class_names.index(n) for n in c.rect_classes if n in self.class_names]
        tr = T.train_transforms(self.mean, self.std, rect, None, c.flip, c.rotate_p)
        ev = T.eval_transforms(self.mean, self.std)
        img, ann = _dirs(self._train_dir(), c.format)
        self.train_ds = DetectionDataset(img, ann, self.class_names, c.format, tr, c.keep_empty, c.bands,
                                         _read_list(c.train_list))
        vd = self._val_dir()
        if vd is None and c.val_list:  # HRSC / DIOR: one image folder, split by ImageSets lists
            vd = self._train_dir()
        if vd is not None:
            vimg, vann = _dirs(vd, c.format)
            self.val_ds = DetectionDataset(vimg, vann, self.class_names, c.format, ev, True, c.bands,
                                           _read_list(c.val_list))
        elif c.val_split > 0:
            import numpy as np

            names = [p.stem for p, *_ in self.train_ds.items]
            rng = np.random.default_rng(0)
            n_val = max(1, int(round(len(names) * c.val_split)))
            val_names = set(rng.choice(names, n_val, replace=False).tolist())
            self.train_ds = DetectionDataset(img, ann, self.class_names, c.format, tr, c.keep_empty, c.bands,
                                             [n for n in names if n not in val_names])
            self.val_ds = DetectionDataset(img, ann, self.class_names, c.format, ev, True, c.bands, sorted(val_names))
        else:
            self.val_ds = None

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        from rsvision.data.detection import collate_detection

        return DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=shuffle, num_workers=self.cfg.num_workers,
                          collate_fn=collate_detection, persistent_workers=self.cfg.num_workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, True)

    def val_dataloader(self):
        return self._loader(self.val_ds, False) if self.val_ds is not None else []


def load_detector(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a detector from an rsvision checkpoint alone -> ``(model in eval mode, hyper_parameters)``."""
    import rsvision.models.detectors  # noqa: F401  (registers the detector builders)
    from rsvision.models import build_model

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint: {exc}", path=path) from exc
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "model" not in hp or "class_names" not in hp:
        raise CheckpointError("not an rsvision detection checkpoint (no hyper_parameters.model / class_names)", path=path)
    model = build_model(dict(hp["model"]))
    sd = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit its model: missing {missing[:5]}, unexpected {unexpected[:5]}", path=path)
    model.eval()
    return model, dict(hp)


# --- whole configuration + training entry point (the CLI is a thin layer over this) -----------------
@dataclass
class DetectModelConfig:
    """The ``model:`` section: backbone name (``--model``), detector type and widths, extra kwargs."""

    name: str = "lsknet_t"
    type: str = "OrientedRCNN"
    fpn_channels: int = 256
    fc_channels: int = 1024
    pretrained: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build_dict(self) -> dict:
        return {"type": self.type, "backbone": self.name, "fpn_channels": self.fpn_channels,
                "fc_channels": self.fc_channels, **self.kwargs}


@dataclass
class DetectOptimConfig:
    lr: float = 2e-4
    base_batch: int = 16
    weight_decay: float = 0.05
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3
    milestones: list[int] | None = None
    frozen_bn: bool = False


@dataclass
class DetectEvalConfig:
    """Whole-image evaluation / prediction settings (``detect eval``/``predict`` defaults)."""

    window: int = 1024
    overlap: int = 200
    scales: list[float] = field(default_factory=lambda: [1.0])
    nms_iou: float = 0.1
    iou_thr: float = 0.5
    metric: str = "voc07"


def _default_trainer() -> TrainerOptions:
    return TrainerOptions(out="runs/detect", max_epochs=12, monitor="val/mAP", mode="max", gradient_clip_val=35.0)


@dataclass
class DetectConfig:
    data: DetectDataConfig = field(default_factory=DetectDataConfig)
    model: DetectModelConfig = field(default_factory=DetectModelConfig)
    optim: DetectOptimConfig = field(default_factory=DetectOptimConfig)
    trainer: TrainerOptions = field(default_factory=_default_trainer)
    eval: DetectEvalConfig = field(default_factory=DetectEvalConfig)


def resolve_classes(cfg: DetectDataConfig) -> list[str]:
    """The class list: explicit ``data.classes`` or the format's published list."""
    if cfg.classes:
        return list(cfg.classes)
    from rsvision.data.dota.labels import class_names

    return list(class_names({"dota": "dota1.0", "dior": "dior", "hrsc": "hrsc"}[cfg.format]))


def build_task(cfg: DetectConfig) -> tuple[DetectionTask, DetectionDataModule]:
    classes = resolve_classes(cfg.data)
    dm = DetectionDataModule(cfg.data, classes)
    o = cfg.optim
    task = DetectionTask(
        cfg.model.build_dict(), classes, cfg.data.bands, dm.mean, dm.std, "le90", cfg.data.img_size, None,
        o.lr, o.base_batch, cfg.data.batch_size, o.weight_decay, o.warmup_iters, o.warmup_ratio,
        cfg.trainer.max_epochs, o.milestones, o.frozen_bn, cfg.model.pretrained, cfg.eval.iou_thr, cfg.eval.metric,
    )
    return task, dm


def train(cfg: DetectConfig, **trainer_overrides: Any) -> str | None:
    """Train a detector into ``cfg.trainer.out`` (resumable); returns the best checkpoint path."""
    from rsvision.tasks.common import build_trainer, fit, write_config

    task, dm = build_task(cfg)
    if dm._val_dir() is None and cfg.data.val_split <= 0:  # no validation data: select on the training loss
        cfg.trainer.monitor, cfg.trainer.mode = "train/epoch_loss", "min"
        trainer_overrides.setdefault("limit_val_batches", 0)
    write_config(cfg.trainer.out, cfg)
    trainer = build_trainer(cfg.trainer, **trainer_overrides)
    return fit(trainer, task, dm, cfg.trainer)
