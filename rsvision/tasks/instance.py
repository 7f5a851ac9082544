"""Instance segmentation as a task: Mask R-CNN over any backbone (``rsvision instance train|eval|predict``).

Data are any multi-task folder (:mod:`rsvision.data.instance`: DOTA / DIOR-R polygons, SAMRS COCO
instances, iSAID masks), split by image into ``splits.json``. The network is
:class:`rsvision.models.detectors.mask_rcnn.MaskRCNN` (torchvision's RPN / RoI / mask heads on rsvision's
FPN), the optimiser the detection recipe (AdamW 2e-4 for a batch of 16, step schedule, warmup).

Metric: COCO mask AP from torchmetrics' ``MeanAveragePrecision(iou_type="segm")`` (pycocotools inside:
``pip install 'rsvision[instance]'``) -> CONVENTIONS ``{"task": "instance", "mAP" (IoU 0.50:0.95),
"mAP50", "AP": {class: float | null}}`` plus ``mAP75``, ``num_gt`` and per-image error records.
Validation scores centre crops (fast); ``evaluate`` scores whole images predicted window by window
(:mod:`rsvision.tasks.instance_scene`), at most ``eval.max_det`` instances each (COCO's 100).

Checkpoints describe the model completely: ``model`` (the ``build_model`` dict), ``classes``, ``bands``,
``mean`` / ``std``, ``img_size``, ``format`` / ``reader`` of the training data (``eval`` reads the same
layout) and the ``eval`` section (window, overlap, NMS, thresholds).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from rsvision.data.instance import InstanceDataConfig, InstanceDataModule
from rsvision.errors import BandMismatchError, ConfigError, DataError
from rsvision.runtime import windows_per_forward
from rsvision.tasks.base import BaseTask, register_task
from rsvision.tasks.common import TrainerOptions, to_plain
from rsvision.tasks.detection import DetectOptimConfig, freeze_bn

log = logging.getLogger(__name__)

__all__ = ["InstanceConfig", "InstanceModelConfig", "InstanceEvalConfig", "InstanceTask", "INSTANCE_PRESETS",
           "mask_ap_metric", "mask_ap_results", "error_record"]

#: Decoder widths per ``model.preset``: "published" is Mask R-CNN as in the paper / mmdet.
INSTANCE_PRESETS: dict[str, dict[str, int]] = {
    "published": {"fpn_channels": 256, "representation_size": 1024, "mask_channels": 256, "mask_layers": 4},
    "small": {"fpn_channels": 128, "representation_size": 512, "mask_channels": 128, "mask_layers": 4},
    "tiny": {"fpn_channels": 64, "representation_size": 256, "mask_channels": 64, "mask_layers": 2},
}


@dataclass
class InstanceModelConfig:
    """``model:``: backbone ``name`` (``--model``: rsvision or timm ``features_only``), ``preset`` widths
    (explicit ``decoder`` keys win), ``decoder`` (:class:`MaskRCNNDecoder` keywords)."""

    name: str = "lsknet_t"
    preset: str | None = None
    pretrained: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_drop_path_rate: float = 0.1
    decoder: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.preset or "published") not in INSTANCE_PRESETS:
            raise ConfigError(f"model.preset (--preset) must be one of {', '.join(INSTANCE_PRESETS)}, "
                              f"got {self.preset!r}")

    def build_dict(self) -> dict:
        """The ``build_model`` dict (preset applied in place, so config.yaml shows the widths)."""
        self.preset = self.preset or "published"
        self.decoder = {**INSTANCE_PRESETS[self.preset], **dict(self.decoder)}
        return {"type": "MaskRCNN", "backbone": self.name, "backbone_kwargs": dict(self.backbone_kwargs),
                "backbone_drop_path_rate": float(self.backbone_drop_path_rate), "decoder": dict(self.decoder)}


@dataclass
class InstanceEvalConfig:
    """``eval:``, stored in the checkpoint: whole-image window / overlap (None: the training size / 200,
    at most a quarter), NMS merging windows, the lowest score kept, instances per image (COCO: 100)."""

    window: int | None = None
    overlap: int | None = None
    nms_iou: float = 0.5
    score_thr: float = 0.05
    max_det: int = 100


def _default_trainer() -> TrainerOptions:
    return TrainerOptions(out="runs/instance", max_epochs=12, monitor="val/mAP", mode="max", gradient_clip_val=35.0)


@dataclass
class InstanceConfig:
    """A whole ``rsvision instance train`` config (see ``configs/instance_*.yaml``)."""

    data: InstanceDataConfig = field(default_factory=InstanceDataConfig)
    model: InstanceModelConfig = field(default_factory=InstanceModelConfig)
    optim: DetectOptimConfig = field(default_factory=DetectOptimConfig)
    trainer: TrainerOptions = field(default_factory=_default_trainer)
    eval: InstanceEvalConfig = field(default_factory=InstanceEvalConfig)


# --- the metric -----------------------------------------------------------------------------------
def mask_ap_metric(max_det: int = 100):
    """torchmetrics' COCO evaluator for masks, per class (needs pycocotools: the ``instance`` extra)."""
    try:
        import pycocotools  # noqa: F401
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as exc:
        raise ConfigError("mask AP needs pycocotools: pip install 'rsvision[instance]'") from exc
    return MeanAveragePrecision(iou_type="segm", class_metrics=True,
                                max_detection_thresholds=[1, 10, int(max_det)])


def mask_ap_results(res: dict, classes: Sequence[str], num_gt: Sequence[int]) -> dict:
    """torchmetrics' result dict -> the CONVENTIONS instance dict; classes without ground truth are null
    (COCO leaves them out of the mean, as ``detect`` does)."""
    def val(x) -> float | None:
        v = float(x)
        return None if v < 0 else v

    ap: dict[str, float | None] = {c: None for c in classes}
    ids = res.get("classes", torch.zeros(0)).reshape(-1).tolist()
    for k, v in zip(ids, res.get("map_per_class", torch.zeros(0)).reshape(-1).tolist()):
        if 0 <= int(k) < len(classes) and num_gt[int(k)] > 0 and v >= 0:
            ap[classes[int(k)]] = float(v)
    has_gt = sum(num_gt) > 0
    return {"task": "instance", "mAP": val(res["map"]) if has_gt else None,
            "mAP50": val(res["map_50"]) if has_gt else None, "mAP75": val(res["map_75"]) if has_gt else None,
            "AP": ap, "num_gt": {c: int(n) for c, n in zip(classes, num_gt)}}


def error_record(image: Any, pred_masks: torch.Tensor, pred_labels: torch.Tensor, pred_scores: torch.Tensor,
                 gt_masks: torch.Tensor, gt_labels: torch.Tensor, classes: Sequence[str], iou_thr: float = 0.5,
                 score_thr: float = 0.3) -> dict:
    """The per-image record (:mod:`rsvision.tasks.per_image`, as ``detect``): per class, false positives
    (instances scoring >= ``score_thr`` matching no ground truth at mask IoU >= ``iou_thr``, greedily by
    score) and missed ground truth, for the classes the image has either of."""
    from pycocotools import mask as mask_utils

    from rsvision.tasks.per_image import record

    def rle(m: torch.Tensor):
        return mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8).transpose(1, 2, 0)))

    keep = pred_scores >= score_thr
    pm, pl, ps = pred_masks[keep], pred_labels[keep], pred_scores[keep]
    fp: dict[str, int] = {}
    missed: dict[str, int] = {}
    for k, c in enumerate(classes):
        p, g = pm[pl == k], gt_masks[gt_labels == k]
        if not len(p) and not len(g):
            continue
        p = p[torch.argsort(ps[pl == k], descending=True, stable=True)]
        # pycocotools' RLE IoU: no (K, H * W) float copies of whole-image masks
        iou = np.asarray(mask_utils.iou(rle(p), rle(g), [0] * len(g))).reshape(len(p), len(g)) \
            if len(p) and len(g) else np.zeros((len(p), len(g)))
        used = np.zeros(len(g), bool)
        n_fp = 0
        for i in range(len(p)):
            cand = np.where(used, -1.0, iou[i])
            j = int(cand.argmax()) if len(g) else -1
            if j >= 0 and cand[j] >= iou_thr:
                used[j] = True
            else:
                n_fp += 1
        fp[c], missed[c] = n_fp, int((~used).sum())
    return record(image, errors={c: fp[c] + missed[c] for c in fp}, FP=fp, missed=missed)


def _valid_targets(targets: Sequence[dict]) -> list[dict]:
    return [{"masks": t["masks"].bool(), "labels": t["mask_labels"].long()} for t in targets]


@register_task
class InstanceTask(BaseTask):
    """Mask R-CNN training / validation (mask AP) / whole-scene prediction.

    ``model``: the ``build_model`` dict (``{"type": "MaskRCNN", "backbone", "decoder", ...}``; class names
    and ``in_chans`` are filled from ``data``); ``data``: ``classes``, ``bands`` (0-based), ``mean`` /
    ``std`` (raw units), ``img_size``, ``batch_size``, ``format`` / ``reader``, ``dtype``.
    """

    name = "instance"
    config_class = InstanceConfig
    optim_class = DetectOptimConfig
    sections = ("eval",)
    monitor, mode = "val/mAP", "max"

    def __init__(self, model: dict, data: dict, optim: dict | None = None, eval: dict | None = None):
        data = dict(data)
        classes = list(data["classes"])
        data.setdefault("mean", [123.675, 116.28, 103.53])
        data.setdefault("std", [58.395, 57.12, 57.375])
        data["mean"], data["std"] = [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
        data["bands"] = list(data.get("bands") or range(len(data["mean"])))
        if not len(data["mean"]) == len(data["std"]) == len(data["bands"]):
            raise ConfigError(f"{len(data['bands'])} bands but mean/std have "
                              f"{len(data['mean'])}/{len(data['std'])} values")
        for k, v in (("img_size", 512), ("batch_size", 2), ("format", None), ("reader", {}), ("dtype", None),
                     ("gsd", None)):
            data.setdefault(k, v)
        model = dict(model, class_names=classes, num_classes=len(classes), in_chans=len(data["bands"]))
        super().__init__(model, data, optim, eval=to_plain(InstanceEvalConfig(**dict(eval or {}))))
        self.eval_cfg = InstanceEvalConfig(**self.hparams["eval"])
        self._val = {}  # the validation metric, made when validation starts (pycocotools only needed then)

    def configure_model(self) -> nn.Module:
        import rsvision.models.detectors  # noqa: F401  (registers the builders)
        from rsvision.models import build_model

        return build_model(dict(self.hparams.model))

    @property
    def classes(self) -> list[str]:
        return list(self.hparams.classes)

    def load_pretrained(self, path: str | Path):
        """Backbone or whole-model checkpoint (official, MMRotate, timm, rsvision, MTP's encoder.pth)."""
        from rsvision.models import load_checkpoint

        report = load_checkpoint(self.model, path)
        log.info("pretrained weights from %s: %s", path, getattr(report, "summary", lambda: "")())
        return report

    def upgrade_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in sd.items() if k.startswith("model.")}

    # --- training ---------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.optim_cfg.frozen_bn:
            freeze_bn(self.model)
        return self

    def forward(self, images: torch.Tensor, targets=None, image_sizes=None):
        return self.model(images, targets, image_sizes)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.model(batch["image"], batch["targets"])
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        bs = len(batch["image"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/epoch_loss", loss, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        for k, v in losses.items():
            self.log(f"train/{k}", v.detach(), on_step=True, on_epoch=True, batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"map": mask_ap_metric(self.eval_cfg.max_det), "num_gt": np.zeros(len(self.classes), np.int64)}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not self._val:
            self.on_validation_epoch_start()
        images = batch["image"]
        outs = self.model(images, image_sizes=[t["image_size"] for t in batch["targets"]])
        preds = [{"masks": o["masks"].cpu(), "scores": o["scores"].cpu(), "labels": o["labels"].cpu()} for o in outs]
        tg = [{k: v.cpu() for k, v in t.items()} for t in _valid_targets(batch["targets"])]
        for t in tg:
            self._val["num_gt"] += np.bincount(t["labels"].numpy(), minlength=len(self.classes))[: len(self.classes)]
        self._val["map"].update(preds, tg)

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        num_gt = torch.as_tensor(self._val["num_gt"], device=self.device)
        if self._trainer is not None and self._trainer.world_size > 1:  # torchmetrics syncs its own state
            torch.distributed.all_reduce(num_gt)
        res = mask_ap_results(self._val["map"].compute(), self.classes, num_gt.tolist())
        self.last_val_metrics = res
        self._val = {}
        self.log("val/mAP", float(res["mAP"] or 0.0), prog_bar=True, sync_dist=False)
        self.log("val/mAP50", float(res["mAP50"] or 0.0), sync_dist=False)

    # --- recipe -----------------------------------------------------------------------------------
    @classmethod
    def build_datamodule(cls, cfg: InstanceConfig) -> InstanceDataModule:
        dm = InstanceDataModule(cfg.data, cfg.trainer.seed)
        dm.setup("fit")
        return dm

    @classmethod
    def from_config(cls, cfg: InstanceConfig, dm: InstanceDataModule) -> "InstanceTask":
        from rsvision.data.raster import read_info

        d = cfg.data
        if dm.val_ds is None:  # no validation data: best.ckpt follows the training loss
            cfg.trainer.monitor, cfg.trainer.mode = "train/epoch_loss", "min"
        paths = dm.train_paths()
        d.root = str(Path(d.root).resolve())
        if d.val_root is not None:
            d.val_root = str(Path(d.val_root).resolve())
        data = dict(classes=dm.classes, bands=None, mean=dm.mean, std=dm.std, img_size=d.img_size,
                    batch_size=d.batch_size, format=dm.format, reader=dict(d.reader),
                    dtype=read_info(paths[0]).dtype if paths else None)
        task = cls(model=cfg.model.build_dict(), data=data, optim=to_plain(cfg.optim), eval=to_plain(cfg.eval))
        if cfg.model.pretrained and not (cfg.trainer.resume and (Path(cfg.trainer.out) / "last.ckpt").exists()):
            task.load_pretrained(cfg.model.pretrained)
        task.validate = dm.val_ds is not None
        return task

    def resolve_config(self, config: Any) -> None:
        super().resolve_config(config)
        d = config.data
        d.classes, d.mean, d.std = self.classes, list(self.hparams.mean), list(self.hparams.std)
        d.format = self.hparams.get("format")

    def trainer_defaults(self) -> dict[str, Any]:
        return {} if getattr(self, "validate", True) else {"limit_val_batches": 0}

    # --- verbs ------------------------------------------------------------------------------------
    def windows(self, window: int | None = None, overlap: int | None = None) -> tuple[int, int]:
        """Window (default ``eval.window``, else the training size) and overlap (``eval.overlap``, else
        200 but at most a quarter of the window)."""
        w = int(window or self.eval_cfg.window or self.hparams.get("img_size", 512))
        o = overlap if overlap is not None else self.eval_cfg.overlap
        return w, int(o if o is not None else min(200, w // 4))

    def scene(self, source: Any, window: int | None = None, overlap: int | None = None,
              nms_iou: float | None = None, score_thr: float | None = None, batch_size: int | None = None,
              progress: Any = False, fast: bool = True, net: nn.Module | None = None):
        """:func:`rsvision.tasks.instance_scene.predict_instances` of one scene with the checkpoint's settings."""
        from rsvision.tasks.instance_scene import predict_instances

        w, o = self.windows(window, overlap)
        e = self.eval_cfg
        return predict_instances(net if net is not None else self.inference_model(fast), source, self.hparams.mean,
                                 self.hparams.std, self.classes, w, o, batch_size,
                                 e.nms_iou if nms_iou is None else nms_iou,
                                 e.score_thr if score_thr is None else score_thr, progress=progress,
                                 train_dtype=self.hparams.get("dtype"))

    def predict(self, inputs: Sequence[Any], out: str | Path | None = None, window: int | None = None,
                overlap: int | None = None, nms_iou: float | None = None, score_thr: float = 0.3,
                classes: Sequence[str] | None = None, max_det: int | None = None, batch_size: int | None = None,
                png: bool = True, json_out: bool = True, geojson: bool = True, labels: bool = True,
                rgb: Sequence[int] | None = None, progress: Any = False, exist_ok: bool = False,
                fast: bool = True) -> Iterator[dict]:
        """Yield ``{"input", "instances" (SceneInstances), "files", "counts"}`` per scene (files, folders,
        globs or arrays), writing ``<stem>_instances.png``, ``<stem>_instances.json`` (pixel outlines) and,
        for georeferenced rasters, ``<stem>.geojson`` (CRS) into ``out`` (new or empty unless ``exist_ok``).
        ``score_thr``, ``classes`` and ``max_det`` filter every output alike."""
        from rsvision.data.raster import expand_inputs
        from rsvision.data.sources import open_source
        from rsvision.outputs import claim_dir, unique_stems
        from rsvision.tasks.instance_scene import write_instance_outputs

        w, o = self.windows(window, overlap)
        batch_size = windows_per_forward(batch_size, self.device)  # checked here, before any work
        if w < 32 or not 0 <= o < w:
            raise ConfigError(f"need --window >= 32 and 0 <= --overlap < --window, got {w} / {o}")
        if classes is not None and not set(classes) <= set(self.classes):
            raise ConfigError(f"--classes: unknown class(es) {', '.join(sorted(set(classes) - set(self.classes)))}; "
                              f"the model's classes are {', '.join(self.classes)}")
        arrays = [x for x in inputs if not isinstance(x, (str, Path))]
        files = expand_inputs([x for x in inputs if isinstance(x, (str, Path))]) if len(arrays) < len(inputs) else []
        stems = [f"scene{i}" for i in range(len(arrays))] + unique_stems(files)
        for f in files:  # every input checked (readable, within budget, bands) before any work
            with open_source(f) as src:
                if src.count != len(self.hparams.mean):
                    raise BandMismatchError(f"raster has {src.count} bands, the model expects "
                                            f"{len(self.hparams.mean)} (checkpoint bands)", path=f)
        net = self.inference_model(fast)
        with claim_dir(out or "predictions", exist_ok) as out:
            for f, stem in zip([*arrays, *files], stems):
                det = self.scene(f, w, o, nms_iou, score_thr, batch_size, progress,
                                 net=net).filtered(score_thr, classes, max_det)
                written = write_instance_outputs(det, out, stem, source=f, png=png, json_out=json_out,
                                                 geojson=geojson, bands=rgb, labels=labels)
                counts = {c: int((det.labels == j).sum()) for j, c in enumerate(self.classes)}
                yield {"input": str(f) if isinstance(f, (str, Path)) else stem, "instances": det,
                       "files": {k: str(v) for k, v in written.items()}, "counts": counts}

    def eval_reader(self, data: str | Path, split: str | None = None, split_file: str | Path | None = None,
                    format: str | None = None):
        """The reader of ``data`` in the training data's layout (``format`` overrides), with the
        checkpoint's classes; ``split`` keeps that split of the run's ``splits.json``."""
        from rsvision.data.instance import reader_paths, reader_spec
        from rsvision.data.multitask_readers import open_reader

        data = Path(data)
        if not data.is_dir():
            raise DataError("no such dataset folder", path=data)
        fmt = format or self.hparams.get("format")
        opts = dict(self.hparams.get("reader") or {})
        spec = reader_spec(data, fmt, opts, None if fmt == "isaid" else self.classes)
        reader = open_reader(spec)
        if list(reader.classes) != self.classes:
            raise ConfigError(f"dataset classes {reader.classes} differ from the checkpoint's {self.classes}",
                              path=data)
        if split is not None:
            from rsvision.data.splits import find_split_file, keep_split, read_splits

            path = find_split_file(getattr(self, "checkpoint_path", None), split_file)
            kept = keep_split(reader_paths(reader), lambda p: p, read_splits(path), split, path)
            reader = open_reader({**spec, "names": [p.stem for p in kept]})
        return reader

    @torch.no_grad()
    def evaluate(self, data: Any, split: str | None = None, split_file: str | Path | None = None,
                 format: str | None = None, window: int | None = None, overlap: int | None = None,
                 nms_iou: float | None = None, max_det: int | None = None, batch_size: int | None = None,
                 progress: Any = None, fast: bool = True) -> dict:
        """COCO mask AP over the whole images of ``data`` (a folder in the training layout), each predicted
        window by window and merged as ``predict`` does, plus per-image error records."""
        from rsvision.data.multitask import make_sample

        reader = self.eval_reader(data, split, split_file, format)
        k = int(max_det or self.eval_cfg.max_det)
        metric = mask_ap_metric(k)
        num_gt = np.zeros(len(self.classes), np.int64)
        net = self.inference_model(fast)
        records = []
        for i in range(len(reader)):
            raw = reader.load(i)
            H, W = raw.image.shape[-2:]
            gt = make_sample(raw, 0, 0, W, H)
            gm = torch.from_numpy(np.asarray(gt["masks"], bool))
            gl = torch.from_numpy(np.asarray(gt["mask_labels"], np.int64))
            num_gt += np.bincount(gl.numpy(), minlength=len(self.classes))[: len(self.classes)]
            det = self.scene(raw.image, window, overlap, nms_iou, None, batch_size, net=net).filtered(max_det=k)
            pm = det.full_masks()
            metric.update([{"masks": pm, "scores": det.scores, "labels": det.labels}], [{"masks": gm, "labels": gl}])
            records.append(error_record(raw.path or i, pm, det.labels, det.scores, gm, gl, self.classes))
            if progress is not None:
                progress(i + 1, len(reader))
        res = mask_ap_results(metric.compute(), self.classes, num_gt.tolist())
        res.update(max_det=k, images=len(reader), per_image=records)
        return res
