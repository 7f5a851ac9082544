"""Rotated object detection as a task: Oriented R-CNN training, validation mAP, whole-scene predict.

The published LSKNet / Oriented R-CNN DOTA schedule is the default: AdamW, lr 2e-4 for a total
batch of 16 scaled linearly to the actual total batch, weight decay 0.05, linear warmup over 500
iterations from lr/3, x0.1 steps at epochs 8 and 11 of 12 (scaled proportionally for other
lengths), gradient clipping 35 (set on the Trainer). Validation mAP comes from the DOTA evaluator
(:mod:`rsvision.data.dota`), so ``val/mAP`` means exactly what ``detect eval`` reports.

Checkpoints are self-describing (CONVENTIONS): ``hyper_parameters`` hold the model config, class
names, bands, per-band mean/std, angle version, image size and GSD, plus the ``eval`` section
(window, overlap, test scales, merge NMS, IoU threshold and metric) that ``detect eval`` /
``predict`` use as defaults; :func:`rsvision.tasks.load_task` rebuilds the task from the file alone.
Whole-scene prediction is :func:`rsvision.tasks.predict_scene.predict_scene`.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from rsvision.config import OptimConfig
from rsvision.data.detection import DetectDataConfig, DetectionDataModule, resolve_classes
from rsvision.errors import BandMismatchError, ConfigError, DataError
from rsvision.runtime import windows_per_forward
from rsvision.tasks.base import BaseTask, register_task
from rsvision.tasks.common import TrainerOptions, to_plain

log = logging.getLogger(__name__)

__all__ = ["DetectionTask", "DetectModelConfig", "DetectOptimConfig", "DetectEvalConfig", "DetectConfig",
           "freeze_bn", "evaluate_detections"]


def freeze_bn(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode with frozen affine parameters (small-batch single-device training)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


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


#: Detector size presets (``model.preset`` / ``detect train --preset``): head widths and proposal counts.
#: "published" is Oriented R-CNN as the LSKNet / HAKSNet papers train it; "small" and "tiny" trade
#: accuracy for speed (the FPN's stride-4 3x3 conv and the RPN dominate the FLOPs, see issue 25).
DETECT_PRESETS: dict[str, dict[str, Any]] = {
    "published": {"fpn_channels": 256, "fc_channels": 1024, "rpn": {"nms_pre": 2000, "max_per_img": 2000}},
    "small": {"fpn_channels": 128, "fc_channels": 512, "rpn": {"nms_pre": 1000, "max_per_img": 1000}},
    "tiny": {"fpn_channels": 64, "fc_channels": 256, "rpn": {"nms_pre": 500, "max_per_img": 300}},
}


@dataclass
class DetectModelConfig:
    """The ``model:`` section: backbone name (``--model``), detector type and widths, extra kwargs.

    ``preset`` (:data:`DETECT_PRESETS`, default "published") fills the widths and proposal counts a
    config leaves unset; values given explicitly (``fpn_channels``, ``kwargs.rpn``) win over it.
    """

    name: str = "lsknet_t"
    type: str = "OrientedRCNN"
    preset: str | None = None
    fpn_channels: int | None = None
    fc_channels: int | None = None
    pretrained: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.preset or "published") not in DETECT_PRESETS:
            raise ConfigError(f"model.preset (--preset) must be one of {', '.join(DETECT_PRESETS)}, got {self.preset!r}")

    def apply_preset(self) -> "DetectModelConfig":
        """Fill what the config left unset from the preset (in place: the run's config.yaml shows it)."""
        p = DETECT_PRESETS[self.preset or "published"]
        self.preset = self.preset or "published"
        self.fpn_channels = self.fpn_channels or p["fpn_channels"]
        self.fc_channels = self.fc_channels or p["fc_channels"]
        self.kwargs = {**self.kwargs, "rpn": {**p["rpn"], **dict(self.kwargs.get("rpn") or {})}}
        return self

    def build_dict(self) -> dict:
        self.apply_preset()
        return {"type": self.type, "backbone": self.name, "fpn_channels": self.fpn_channels,
                "fc_channels": self.fc_channels, **self.kwargs}


@dataclass
class DetectOptimConfig(OptimConfig):
    """``optim:`` section: the shared one with the published detection defaults, and frozen BatchNorm."""

    lr: float = 2e-4
    base_batch: int | None = 16
    weight_decay: float = 0.05
    schedule: str = "step"
    warmup_steps: int = 500
    warmup_ratio: float | None = 1.0 / 3
    frozen_bn: bool = False  # BatchNorm statistics and affine frozen (small-batch single-device training)


@dataclass
class DetectEvalConfig:
    """``eval:`` section, stored in the checkpoint: validation mAP settings and ``detect eval`` / ``predict`` defaults."""

    window: int | None = None  # None: the training image size
    overlap: int | None = None  # None: 200, at most a quarter of the window
    scales: list[float] = field(default_factory=lambda: [1.0])
    nms_iou: float = 0.1
    iou_thr: float = 0.5
    metric: str = "voc07"


def _default_trainer() -> TrainerOptions:
    return TrainerOptions(out="runs/detect", max_epochs=12, monitor="val/mAP", mode="max", gradient_clip_val=35.0)


@dataclass
class DetectConfig:
    """A whole ``rsvision detect train`` config (see ``configs/*oriented_rcnn*.yaml``)."""

    data: DetectDataConfig = field(default_factory=DetectDataConfig)
    model: DetectModelConfig = field(default_factory=DetectModelConfig)
    optim: DetectOptimConfig = field(default_factory=DetectOptimConfig)
    trainer: TrainerOptions = field(default_factory=_default_trainer)
    eval: DetectEvalConfig = field(default_factory=DetectEvalConfig)



def _train_dtype(dm: DetectionDataModule) -> str | None:
    """The dtype of the first training image (stored in the checkpoint: other dtypes are rescaled)."""
    from rsvision.data.detection import _dirs
    from rsvision.data.raster import is_image_file, read_info

    img_dir = _dirs(dm._train_dir(), dm.cfg.format)[0]
    first = next((p for p in sorted(img_dir.iterdir()) if is_image_file(p)), None) if img_dir.is_dir() else None
    return read_info(first).dtype if first is not None else None


@register_task
class DetectionTask(BaseTask):
    """Train / validate / predict with any rsvision rotated detector built by ``rsvision.models.build_model``.

    ``model``: the detector's plain config dict (``{"type": "OrientedRCNN", "backbone": ...}``);
    ``num_classes`` and ``in_chans`` are filled from ``data``: ``class_names`` (label order),
    ``bands`` (0-based input bands), ``mean`` / ``std`` (raw pixel units), ``angle_version``,
    ``img_size``, ``gsd`` and ``batch_size`` (for the linear lr scaling).
    """

    name = "detect"
    config_class = DetectConfig
    optim_class = DetectOptimConfig
    sections = ("eval",)
    monitor, mode = "val/mAP", "max"

    def __init__(self, model: dict, data: dict, optim: dict | None = None, eval: dict | None = None):
        data = dict(data)
        classes = list(data["class_names"])
        data.setdefault("mean", [123.675, 116.28, 103.53])
        data.setdefault("std", [58.395, 57.12, 57.375])
        bands = data.get("bands")
        data["bands"] = list(bands) if bands is not None else list(range(len(data["mean"])))
        if len(data["mean"]) != len(data["bands"]) or len(data["std"]) != len(data["bands"]):
            raise ConfigError(f"{len(data['bands'])} bands but mean/std have {len(data['mean'])}/{len(data['std'])} values")
        data["mean"], data["std"] = [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
        for k, v in (("angle_version", "le90"), ("img_size", 1024), ("gsd", None), ("batch_size", 2)):
            data.setdefault(k, v)
        model = dict(model, num_classes=len(classes), class_names=classes, in_chans=len(data["bands"]))
        super().__init__(model, data, optim, eval=to_plain(DetectEvalConfig(**dict(eval or {}))))
        self.eval_cfg = DetectEvalConfig(**self.hparams["eval"])
        self._val_dets: dict[str, tuple] = {}
        self._val_gts: dict[str, dict] = {}

    def configure_model(self) -> nn.Module:
        import rsvision.models.detectors  # noqa: F401  (registers the detector builders)
        from rsvision.models import build_model

        return build_model(dict(self.hparams.model))

    @property
    def classes(self) -> list[str]:
        return list(self.hparams.class_names)

    def load_pretrained(self, path: str | Path):
        """Backbone or whole-detector checkpoint (official, MMRotate, timm, rsvision) into the model."""
        from rsvision.models import load_checkpoint

        report = load_checkpoint(self.model, path)
        if report.ok:  # otherwise load_checkpoint already logged the report (a warning)
            log.info("pretrained weights from %s:\n%s", path, report.summary())
        return report

    @classmethod
    def upgrade_hparams(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """First release: 20 flat keyword arguments and no task tag."""
        if "optim" in hp:
            return hp
        optim = {k: hp.pop(k) for k in ("lr", "base_batch", "weight_decay", "warmup_ratio", "milestones", "frozen_bn")
                 if k in hp}
        if "warmup_iters" in hp:
            optim["warmup_steps"] = hp.pop("warmup_iters")
        hp["optim"] = optim
        hp["eval"] = {k: hp.pop(k) for k in ("iou_thr", "metric") if k in hp}
        for k in ("max_epochs", "pretrained"):
            hp.pop(k, None)
        return hp

    def upgrade_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in sd.items() if k.startswith("model.")}  # only the detector's own weights

    # --- training ---------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.optim_cfg.frozen_bn:
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
        res = evaluate_detections(dets, gts, self.classes, self.eval_cfg.iou_thr, self.eval_cfg.metric)
        self.last_val_metrics = res
        mAP = res["mAP"] if res["mAP"] is not None else 0.0  # None: no ground truth in the val set
        self.log("val/mAP", float(mAP), prog_bar=True, sync_dist=False, rank_zero_only=False)

    # --- training recipe ----------------------------------------------------------------------------
    @classmethod
    def build_datamodule(cls, cfg: "DetectConfig") -> DetectionDataModule:
        return DetectionDataModule(cfg.data, resolve_classes(cfg.data), seed=cfg.trainer.seed)

    @classmethod
    def from_config(cls, cfg: "DetectConfig", dm: DetectionDataModule) -> "DetectionTask":
        d = cfg.data
        validate = dm._val_dir() is not None or d.val_split > 0 or bool(d.val_list)
        if not validate:  # no validation data: select best.ckpt on the training loss
            cfg.trainer.monitor, cfg.trainer.mode = "train/epoch_loss", "min"
        data = dict(class_names=dm.class_names, bands=d.bands, mean=dm.mean, std=dm.std, angle_version="le90",
                    img_size=d.img_size, gsd=None, batch_size=d.batch_size, dtype=_train_dtype(dm))
        task = cls(model=cfg.model.build_dict(), data=data, optim=to_plain(cfg.optim), eval=to_plain(cfg.eval))
        if cfg.model.pretrained and not (cfg.trainer.resume and (Path(cfg.trainer.out) / "last.ckpt").exists()):
            task.load_pretrained(cfg.model.pretrained)
        task.validate = validate
        return task

    def _milestones(self) -> list[int]:
        """Epochs at which the lr drops by ``optim.gamma`` (default 8/12 and 11/12 of the run)."""
        return self.optim_cfg.milestones_for(self.max_epochs())

    def trainer_defaults(self) -> dict[str, Any]:
        return {} if getattr(self, "validate", True) else {"limit_val_batches": 0}

    # --- verbs ------------------------------------------------------------------------------------
    def windows(self, window: int | None = None, overlap: int | None = None) -> tuple[int, int]:
        """Window size (default: ``eval.window``, else the training image size) and overlap (default:
        ``eval.overlap``, else 200 but at most a quarter of the window)."""
        w = int(window or self.eval_cfg.window or self.hparams.get("img_size", 1024))
        o = overlap if overlap is not None else self.eval_cfg.overlap
        return w, int(o if o is not None else min(200, w // 4))

    def predict(self, inputs: Sequence[Any], out: str | Path | None = None, window: int | None = None,
                overlap: int | None = None, scales: Sequence[float] | None = None, nms_iou: float | None = None,
                score_thr: float = 0.0, batch_size: int | None = None, png: bool = True, geojson: bool = True,
                task1: bool = True, progress: bool = False, exist_ok: bool = False, fast: bool = True,
                classes: Sequence[str] | None = None, max_det: int | None = None, labels: bool = True,
                rgb: Sequence[int] | None = None) -> Iterator[dict]:
        """Yield ``{"input", "detections" (SceneDetections), "files", "counts"}`` per scene (files,
        folders, globs, or arrays), writing a PNG and GeoJSON (georeferenced rasters) per scene into
        ``out`` and, once every scene is done, the run's ``Task1_<class>.txt`` files (one per class).

        ``out`` must be new or empty unless ``exist_ok`` (:mod:`rsvision.outputs`); outputs of two
        inputs never share a name. ``fast``: the optimised inference copy of LSKNet / HAKSNet backbones.
        ``score_thr``, ``classes`` (names) and ``max_det`` (per scene, best first) filter every output
        alike; ``labels`` tags drawn boxes with class and score; ``rgb``: 0-based bands drawn as RGB."""
        from rsvision.data.dota.labels import write_task1
        from rsvision.data.raster import expand_inputs
        from rsvision.data.sources import open_source
        from rsvision.outputs import claim_dir, unique_stems
        from rsvision.tasks.predict_scene import predict_scene, write_scene_outputs

        w, o = self.windows(window, overlap)
        batch_size = windows_per_forward(batch_size, self.device)  # checked here, before any work
        if not 0 <= o < w:
            raise ConfigError(f"need 0 <= --overlap < --window, got {o} / {w}")
        arrays = [x for x in inputs if not isinstance(x, (str, Path))]
        files = expand_inputs([x for x in inputs if isinstance(x, (str, Path))]) if len(arrays) < len(inputs) else []
        stems = [f"scene{i}" for i in range(len(arrays))] + unique_stems(files)
        names = self.classes
        if classes is not None and not set(classes) <= set(names):
            raise ConfigError(f"--classes: unknown class(es) {', '.join(sorted(set(classes) - set(names)))}; "
                              f"the model's classes are {', '.join(names)}")
        e = self.eval_cfg
        for f in files:  # every input checked (readable, within budget, bands) before any work
            with open_source(f) as src:  # all non-alpha bands, as predict_scene reads them
                if src.count != len(self.hparams.mean):
                    raise BandMismatchError(f"raster has {src.count} bands, the model expects "
                                            f"{len(self.hparams.mean)} (checkpoint bands)", path=f)
        dets: dict[str, list] = {c: [] for c in names}
        model = self.inference_model(fast)
        with claim_dir(out or "predictions", exist_ok) as out:
            for f, stem in zip([*arrays, *files], stems):
                det = predict_scene(model, f, self.hparams.mean, self.hparams.std, names, w, o, batch_size,
                                    list(scales or e.scales), e.nms_iou if nms_iou is None else nms_iou, score_thr,
                                    progress=progress, train_dtype=self.hparams.get("dtype"))
                det = det.filtered(score_thr, classes, max_det)
                written = write_scene_outputs(det, out, stem, source=f, task1=False, png=png, geojson=geojson,
                                              bands=rgb, labels=labels)
                for poly, score, label in zip(det.polys().numpy(), det.scores.tolist(), det.labels.tolist()):
                    dets[names[label]].append((stem, score, poly))
                counts = {c: int((det.labels == j).sum()) for j, c in enumerate(names)}
                yield {"input": str(f) if isinstance(f, (str, Path)) else stem, "detections": det,
                       "files": {k: str(v) for k, v in written.items()}, "counts": counts}
            if task1:
                write_task1(out, dets, names)

    def evaluate(self, data: Any, ann_dir: str | Path | None = None, dets: str | Path | None = None,
                 iou_thr: float | None = None, metric: str | None = None, exist_ok: bool = False,
                 split: str | None = None, split_file: str | Path | None = None, **predict_options: Any) -> dict:
        """Detect on every full image of ``data`` (a folder with ``images/`` + ``labelTxt/``, or an image
        folder with ``ann_dir``), merge per image, score with the DOTA evaluator (like the DOTA server):
        the CONVENTIONS detect dict with ``per_image`` error records. ``dets`` keeps the merged Task1 files (default: a temp folder).
        ``split`` (train | val): only the images of that split of the run's ``splits.json`` (full images
        match the patches cut from them, ``P0001__1024__0___0`` -> ``P0001``). The evaluator scores only
        the evaluated images' label files, not every file in the annotation folder."""
        from rsvision.data.detection import find_ann_dir
        from rsvision.data.dota.evaluate import evaluate
        from rsvision.data.raster import is_image_file

        data = Path(data)
        if not data.is_dir():
            raise DataError("no such image folder", path=data)
        img_dir = data / "images" if (data / "images").is_dir() and ann_dir is None else data
        ann_dir = ann_dir or find_ann_dir(data)
        if ann_dir is None:
            raise ConfigError("detect eval needs annotations: --data DIR with images/ and labelTxt/, or --ann-dir",
                              path=data)
        images = sorted(p for p in img_dir.iterdir() if is_image_file(p))
        if split is not None:
            from rsvision.data.splits import find_split_file, read_splits

            path = find_split_file(getattr(self, "checkpoint_path", None), split_file)
            rec = read_splits(path)
            if split not in ("train", "val"):
                raise ConfigError(f"--split must be train or val, got {split!r}")
            stems = {Path(p).stem.split("__")[0] for p in rec.get(split) or []}
            images = [p for p in images if p.stem in stems]
            if not images:
                raise DataError(f"no image of the {split!r} split of {path} is in {img_dir}", path=img_dir)
        e = self.eval_cfg
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(dets) if dets is not None else Path(tmp) / "dets"
            for _ in self.predict(images, out, png=False, geojson=False, exist_ok=exist_ok, **predict_options):
                pass
            res = evaluate(out, ann_dir, classes=self.classes, iou_thr=iou_thr or e.iou_thr, metric=metric or e.metric,
                           images=[p.stem for p in images], per_image=True)
        from rsvision.tasks.per_image import record

        path_of = {p.stem: p for p in images}  # records name the image file (rsvision.tasks.per_image)
        res["per_image"] = [record(path_of.get(r["image"], r["image"]), **{k: v for k, v in r.items() if k != "image"})
                            for r in res["per_image"]]
        return res
