"""Scene classification as a Lightning task: any timm or rsvision backbone, single- or multi-label.

The checkpoint's ``hyper_parameters`` are everything ``predict`` needs (CONVENTIONS): model name and
config, class names, band indices and count, per-band mean/std (pixel units), image size, resize
policy and eval size; :func:`rsvision.tasks.load_task` rebuilds the task from them alone.

Training: AdamW (timm's parameter groups: no weight decay on norms / biases), linear warmup then
cosine per step (:mod:`rsvision.config`), label smoothing, optional mixup / cutmix (timm's
``Mixup``, on soft targets, so also multi-label) and an EMA of the weights (timm's ``ModelEmaV3``)
that, when enabled, is the model validated, checkpointed for ``predict`` and evaluated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn

import rsvision  # noqa: F401  (registers lsknet_* / haksnet_* with timm)
from rsvision.config import OptimConfig
from rsvision.data.classification import ClassificationDataConfig, ClassificationDataModule
from rsvision.errors import CheckpointError, ConfigError
from rsvision.tasks.base import BaseTask, RunResult, register_task
from rsvision.tasks.common import TrainerOptions
from rsvision.tasks.metrics import classification_metrics, multilabel_metrics

__all__ = [
    "ClassifyModelConfig", "ClassifyOptimConfig", "ClassifyConfig", "ClassificationTask", "mix_batch",
    "classification_metrics", "multilabel_metrics", "dihedral_tta", "eval_dataset",
]


@dataclass
class ClassifyModelConfig:
    """``model:`` section: any ``timm.create_model`` name (rsvision backbones are registered)."""

    name: str = "resnet18"
    pretrained: str | None = None  # backbone or classifier checkpoint (rsvision.models.load_checkpoint)
    drop_rate: float = 0.0
    drop_path_rate: float | None = None
    channels_last: bool = False  # NHWC memory format: ~20% faster LSKNet training on CPU
    # LSKNet / HAKSNet only: rsvision.models.optimize_for_training (same parameters and keys,
    # gradients equal up to float noise; ~1.5x faster train steps on CPU). Implies channels_last.
    fast: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClassifyOptimConfig(OptimConfig):
    """``optim:`` section: the shared one plus label smoothing, mixup / cutmix and the weight EMA."""

    no_decay_norm_bias: bool = True
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Beta(alpha, alpha) mixup; 0 disables
    cutmix: float = 0.0  # Beta(alpha, alpha) cutmix; 0 disables
    mix_prob: float = 1.0
    ema: bool = False
    ema_decay: float = 0.998
    aux_loss_weight: float = 0.01  # models exposing ``aux_loss`` after a forward (skysense_v2_*: MoE balance)


def _classify_trainer() -> TrainerOptions:
    return TrainerOptions(out="runs/classify", monitor="val/acc", mode="max")


@dataclass
class ClassifyConfig:
    """A whole ``rsvision classify train`` config (see ``configs/rsscn7_*.yaml``)."""

    data: ClassificationDataConfig = field(default_factory=ClassificationDataConfig)
    model: ClassifyModelConfig = field(default_factory=ClassifyModelConfig)
    optim: ClassifyOptimConfig = field(default_factory=ClassifyOptimConfig)
    trainer: TrainerOptions = field(default_factory=_classify_trainer)


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float, prob: float = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (chosen 50/50 when both are on) of ``x (N,C,H,W)`` with its reversed batch.

    ``y`` are soft targets ``(N, K)``; the returned targets mix by the (cut-area-corrected) lambda.
    timm's ``Mixup`` does the work (its multi-label path with no smoothing mixes any soft targets);
    it pairs sample i with N-1-i, so odd batches (a last partial batch) are left unmixed.
    """
    if (mixup <= 0 and cutmix <= 0) or len(x) < 2 or len(x) % 2:
        return x, y
    mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, label_smoothing=0.0,
                  num_classes=y.shape[1], multi_label=True)
    return mixer(x.clone(), y)


class _EMA(ModelEmaV3):
    """timm's EMA with the decay warmed up as ``min(decay, (1 + step) / (10 + step))``, so a short
    run's average is not dominated by the random initial weights."""

    def get_decay(self, step: int | None = None) -> float:
        return self.decay if step is None else min(self.decay, (1 + step) / (10 + step))


@register_task
class ClassificationTask(BaseTask):
    """LightningModule over ``timm.create_model(model["name"], num_classes=, in_chans=)``.

    ``data`` holds ``classes``, ``in_chans``, ``mean``, ``std`` (pixel units), ``img_size`` and the
    resize policy (``resize``, ``eval_size``), ``bands`` and ``multilabel``: what ``predict`` applies.
    """

    name = "classify"
    config_class = ClassifyConfig
    optim_class = ClassifyOptimConfig
    monitor, mode = "val/acc", "max"

    def __init__(self, model: dict[str, Any], data: dict[str, Any], optim: dict[str, Any] | None = None):
        data = {"resize": None, "bands": None, "multilabel": False, "eval_size": None, "dtype": None, **data}
        super().__init__(model, data, optim)
        self.classes = list(self.hparams.classes)
        self.multilabel = bool(self.hparams.get("multilabel", False))
        self.ema: _EMA | None = None
        if self.optim_cfg.ema:
            self.ema = _EMA(self.model, decay=self.optim_cfg.ema_decay, exclude_buffers=True)
            self.ema.requires_grad_(False).train()  # its modes follow the task's, as the model's do
        self._val_cm: torch.Tensor | None = None

    def configure_model(self) -> nn.Module:
        hp = self.hparams
        m = ClassifyModelConfig(**{k: v for k, v in hp.model.items() if k in ClassifyModelConfig.__dataclass_fields__})
        extra = dict(m.kwargs)
        if m.drop_path_rate is not None:
            extra["drop_path_rate"] = m.drop_path_rate
        if hp.get("modalities"):  # S1 / S2 pairs: the backbone declares the data's modalities and bands
            extra.setdefault("modalities", dict(hp.modalities))
        try:
            net = timm.create_model(m.name, pretrained=False, num_classes=len(hp.classes), in_chans=hp.in_chans,
                                    drop_rate=m.drop_rate, **extra)
        except (RuntimeError, TypeError) as exc:  # timm: "Unknown model"; a model without modality inputs
            raise CheckpointError(f"cannot build model {m.name!r}: {exc}") from exc
        self.channels_last = bool(m.channels_last or m.fast)
        if m.fast:
            from rsvision.models.fast import optimize_for_training

            try:
                net = optimize_for_training(net, inplace=True)
            except TypeError as exc:
                raise ConfigError(f"model.fast: {exc} (it applies to LSKNet / HAKSNet models only)") from exc
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    # --- checkpoints ------------------------------------------------------------------------------
    @classmethod
    def upgrade_hparams(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """First release: ``ClassificationTask(model, classes, in_chans, ..., optim, task, format_version)``."""
        optim = dict(hp.get("optim") or {})
        if "warmup_epochs" in optim:  # format 1: warmup in epochs, schedule "epochs" | "time"
            optim.pop("warmup_epochs")
            optim["schedule"] = {"epochs": "cosine"}.get(optim.get("schedule", "cosine"), optim.get("schedule"))
        hp["optim"] = optim
        return hp

    def upgrade_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Format 1 kept the EMA as a bare copy (``ema.<key>``); timm's EMA nests it (``ema.module.<key>``)."""
        if any(k.startswith("ema.") and not k.startswith("ema.module.") for k in sd):
            sd = {("ema.module." + k[4:] if k.startswith("ema.") else k): v for k, v in sd.items()}
        return sd

    def load_pretrained(self, path: str | Path):
        """Load backbone / classifier weights (any format rsvision.models.load_checkpoint takes)."""
        from rsvision.models import load_checkpoint

        report = load_checkpoint(self.model, path)
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())
        return report

    # --- model ------------------------------------------------------------------------------------
    def net(self) -> nn.Module:
        """The network used for evaluation / prediction (the EMA when enabled)."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net()(self._fmt(x))

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, dict):  # {modality: tensor} (pairs)
            return x
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # --- training ---------------------------------------------------------------------------------
    def _soft_targets(self, y: torch.Tensor) -> torch.Tensor:
        k = len(self.classes)
        ls = self.optim_cfg.label_smoothing
        if self.multilabel:
            return y.float() * (1 - ls) + ls / 2
        return F.one_hot(y, k).float() * (1 - ls) + ls / k

    def _loss(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, soft)
        return torch.sum(-soft * F.log_softmax(logits, -1), -1).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["image"], batch["label"]
        o = self.optim_cfg
        xm, soft = mix_batch(x, self._soft_targets(y), o.mixup, o.cutmix, o.mix_prob)
        logits = self.model(self._fmt(xm))
        loss = self._loss(logits, soft)
        aux = getattr(self.model, "aux_loss", None)
        if isinstance(aux, torch.Tensor) and aux.requires_grad and o.aux_loss_weight:
            self.log("train/aux_loss", aux.detach(), on_step=True, on_epoch=True, batch_size=len(y))
            loss = loss + o.aux_loss_weight * aux
        bs = len(y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        if not self.multilabel:
            self.log("train/acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True,
                     batch_size=bs, sync_dist=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def on_validation_epoch_start(self) -> None:
        k = len(self.classes)
        self._val_cm = torch.zeros(k, k, dtype=torch.long, device=self.device)
        self._val_probs: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, y = batch["image"], batch["label"]
        logits = self(x)
        if self.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, y.float())
            self._val_probs.append(torch.sigmoid(logits).cpu())
            self._val_targets.append(y.cpu())
        else:
            loss = F.cross_entropy(logits, y)
            k = len(self.classes)
            self._val_cm += torch.bincount(y * k + logits.argmax(-1), minlength=k * k).view(k, k)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.multilabel:
            probs, t = torch.cat(self._val_probs), torch.cat(self._val_targets)
            m = multilabel_metrics(probs, t, self.classes)
            vals = {"val/mAP": m["mAP"], "val/f1_micro": m["f1_micro"], "val/f1_macro": m["f1_macro"]}
        else:
            cm = self.all_gather(self._val_cm)
            cm = cm.sum(0) if cm.ndim == 3 else cm
            m = classification_metrics(cm.cpu().numpy(), self.classes)
            vals = {"val/acc": m["overall_accuracy"], "val/aa": m["average_accuracy"], "val/kappa": m["kappa"]}
        for k, v in vals.items():
            self.log(k, float(v), on_epoch=True, rank_zero_only=False)

    # --- training recipe ----------------------------------------------------------------------------
    @classmethod
    def build_datamodule(cls, cfg: ClassifyConfig) -> ClassificationDataModule:
        if cfg.data.format != "images":
            from rsvision.data.multimodal import pairs_datamodule

            return pairs_datamodule(cfg.data, seed=cfg.trainer.seed)
        dm = ClassificationDataModule(cfg.data, seed=cfg.trainer.seed, run_dir=Path(cfg.trainer.out))
        dm.setup("fit")
        return dm

    @classmethod
    def from_config(cls, cfg: ClassifyConfig, dm: ClassificationDataModule) -> "ClassificationTask":
        d, t = cfg.data, cfg.trainer
        if d.multilabel and t.monitor in ("val/acc", "val/aa", "val/kappa"):
            t.monitor, t.mode = "val/mAP", "max"  # single-label metrics do not exist for multi-label
        if d.format != "images":
            data = cls._pairs_data(cfg, dm)
        else:
            d.classes, d.mean, d.std = list(dm.classes), list(dm.mean), list(dm.std)
            d.split_file = str(dm.split_file.resolve())
            d.root = str(Path(d.root).resolve()) if d.root else None
            d.csv = str(Path(d.csv).resolve()) if d.csv else None
            from rsvision.data.raster import read_info

            data = dict(classes=dm.classes, in_chans=dm.in_chans, mean=dm.mean, std=dm.std, img_size=d.img_size,
                        resize=d.resize, bands=d.bands, multilabel=d.multilabel, eval_size=d.eval_size,
                        dtype=read_info(dm.splits["train"][0].path).dtype)
        task = cls(model=asdict(cfg.model), data=data, optim=asdict(cfg.optim))
        if cfg.model.pretrained and not (t.resume and (Path(t.out) / "last.ckpt").exists()):
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"pretrained weights {cfg.model.pretrained}:\n{task.load_pretrained(cfg.model.pretrained)}")
        return task

    @staticmethod
    def _pairs_data(cfg: ClassifyConfig, dm: Any) -> dict[str, Any]:
        """S1 / S2 pairs: 19-class multi-label, the datamodule's modality bands and statistics (flat)."""
        d, t = cfg.data, cfg.trainer
        if cfg.optim.mixup or cfg.optim.cutmix:
            raise ConfigError("optim.mixup / optim.cutmix are not supported with S1 / S2 pairs (data.format)")
        d.multilabel, t.monitor, t.mode = True, ("val/mAP" if t.monitor in (None, "val/acc") else t.monitor), "max"
        data = {**dm.hparams_data(), "in_chans": None, "multilabel": True, "resize": None, "eval_size": None}
        d.classes, d.mean, d.std = list(data["classes"]), list(data["mean"]), list(data["std"])
        d.modalities, d.root = data["modalities"], str(Path(d.root).resolve())
        d.split_file = str(Path(d.split_file).resolve()) if d.split_file else None
        return data

    def after_fit(self, cfg: ClassifyConfig, dm: ClassificationDataModule, result: RunResult) -> None:
        """Score the best checkpoint on the test split (else val): ``<split>_metrics.json`` + confusion PNG."""
        from rsvision.tasks.base import load_task
        from rsvision.tasks.common import write_json

        split = "test" if "test" in dm.datasets else "val"
        if split not in dm.datasets:
            return
        task = load_task(result.checkpoint)
        metrics = task.evaluate(dm.loader(split))
        metrics.update(split=split, checkpoint=str(result.checkpoint))
        write_json(metrics, result.run_dir / f"{split}_metrics.json")
        if not task.multilabel:
            from rsvision.viz.plots import plot_confusion_matrix

            plot_confusion_matrix(metrics["confusion_matrix"], dm.classes, result.run_dir / "confusion_matrix.png",
                                  title=f"{split} split, OA {100 * metrics['overall_accuracy']:.1f}%")
        result.test = metrics

    # --- verbs ------------------------------------------------------------------------------------
    def evaluate(self, data: Any, split: str | None = None, split_file: str | Path | None = None,
                 batch_size: int = 32, tta: bool = False, eval_size: int | None = None, skip_bad: bool = False,
                 progress: bool = False, fast: bool = True, modalities: Sequence[str] | None = None) -> dict[str, Any]:
        """Metrics JSON (CONVENTIONS) over ``data``: class folders or a multi-label CSV (optionally one
        ``split`` of ``split_file``, default ``splits.csv`` beside the checkpoint), a dataset or a loader.

        ``tta``: average the probabilities over the 8 flips / 90-degree rotations (``dihedral_tta``).
        ``fast``: the optimised inference copy of LSKNet / HAKSNet models (:meth:`inference_model`).
        """
        from torch.utils.data import DataLoader, Dataset

        loader = data
        if isinstance(data, (str, Path)):
            if (split is not None and split_file is None and getattr(self, "checkpoint_path", None) is not None
                    and not self.hparams.get("modalities")):  # pairs: the dataset's own splits unless a file is named
                split_file = self.checkpoint_path.parent / "splits.csv"
            data = eval_dataset(self, data, split_file, split, skip_bad, eval_size, modalities)
        if isinstance(data, Dataset):
            loader = DataLoader(data, batch_size=batch_size)
        net = self.inference_model(fast)
        device = self.device
        k = len(self.classes)
        cm = torch.zeros(k, k, dtype=torch.long)
        probs, targets, per_image = [], [], []
        it = loader
        if progress:
            from rsvision.progress import track

            it = track(loader, "evaluating")
        for batch in it:
            x = batch["image"]
            x = {m: v.to(device) for m, v in x.items()} if isinstance(x, dict) else self._fmt(x.to(device))
            if tta and isinstance(x, dict):
                raise ConfigError("--tta is not supported for S1 / S2 pairs")
            with torch.no_grad():
                if tta:
                    p = dihedral_tta(lambda t: net(self._fmt(t)), x, self.multilabel).cpu()
                else:
                    logits = net(x).float().cpu()
                    p = torch.sigmoid(logits) if self.multilabel else logits.softmax(-1)
            y = batch["label"]
            if self.multilabel:
                probs.append(p)
                targets.append(y)
            else:
                pred = p.argmax(-1)
                cm += torch.bincount(y * k + pred, minlength=k * k).view(k, k)
                per_image += _records(loader, batch, y, pred, p, self.classes, len(per_image))
        if self.multilabel:
            return multilabel_metrics(torch.cat(probs), torch.cat(targets), self.classes)
        return {**classification_metrics(cm.numpy(), self.classes), "per_image": per_image}

    @torch.inference_mode()
    def predict(self, inputs: Sequence[str | Path], out: str | Path | None = None, batch_size: int = 16,
                top_k: int = 5, skip_bad: bool = False, progress: bool = False, exist_ok: bool = False,
                fast: bool = True, tta: bool | None = None, score_thr: float | None = None,
                modalities: Sequence[str] | None = None) -> Iterator[dict]:
        """Yield ``{"input", "top": [(class, prob), ...], "labels": [...], "probs": [...]}`` per image
        (files, folders, globs). ``labels``: the classes scoring >= ``score_thr`` (default 0.5 for
        multi-label checkpoints, else the top-1 class). ``tta``: average over the 8 flips / rotations.

        Unreadable images raise DataError naming the file, or yield ``{"input", "error"}`` under
        ``skip_bad``. Multi-label checkpoints give independent sigmoid probabilities. With ``out`` (new or
        empty unless ``exist_ok``), ``predictions.json`` and ``predictions.csv`` (top-1) are written there
        at the end.

        S1 / S2 pair checkpoints take pair folders (:func:`rsvision.data.multimodal.resolve_pairs`: a dataset
        root, a folder inside one, a loose folder of band files); each record also names the pair (``id``)
        and the ``modalities`` used (``modalities``: a subset of the checkpoint's, default all of them).
        """
        import contextlib

        from rsvision.outputs import claim_dir

        if batch_size < 1 or top_k < 1:
            raise ConfigError(f"--batch-size and --top-k must be >= 1, got {batch_size} and {top_k}")
        if modalities and not self.hparams.get("modalities"):
            raise ConfigError("--modalities applies to S1 / S2 pair checkpoints only")
        with claim_dir(out, exist_ok) if out is not None else contextlib.nullcontext():
            yield from self._predict(inputs, out, batch_size, top_k, skip_bad, fast, bool(tta), score_thr, modalities)

    def _predict(self, inputs, out, batch_size, top_k, skip_bad, fast, tta=False, score_thr=None,
                 modalities=None) -> Iterator[dict]:
        from rsvision.data.classification import Sample
        from rsvision.data.raster import expand_inputs

        if self.hparams.get("modalities"):
            from rsvision.data.multimodal import pairs_eval_dataset
            from rsvision.data.pair_inputs import resolve_pairs

            if tta:
                raise ConfigError("--tta is not supported for S1 / S2 pairs")
            ds = pairs_eval_dataset(self.hparams, resolve_pairs(inputs), modalities=modalities, cache=False)
            used = list(ds.modalities)
            paths = [s.files.get("B02") or next(iter(s.files.values())) for s in ds.samples]
            metas = [{"input": str(Path(p).parent), "path": str(Path(p).parent), "id": s.id, "modalities": used}
                     for p, s in zip(paths, ds.samples)]
        else:
            paths = expand_inputs(inputs)
            ds = _eval_dataset(self, [Sample(str(p), 0) for p in paths])
            metas = [{"input": str(p), "path": str(p)} for p in paths]
        yield from self._predict_dataset(ds, metas, out, batch_size, top_k, skip_bad, fast, tta, score_thr)

    def _predict_dataset(self, ds, all_metas: list[dict], out, batch_size, top_k, skip_bad, fast, tta, score_thr
                         ) -> Iterator[dict]:
        from rsvision.errors import DataError

        net = self.inference_model(fast)
        batch: list[torch.Tensor] = []
        metas: list[dict] = []
        results: list[dict] = []

        def flush() -> Iterator[dict]:
            if batch:
                x = (torch.stack(batch).to(self.device) if isinstance(batch[0], torch.Tensor) else
                     {m: torch.stack([b[m] for b in batch]).to(self.device) for m in batch[0]})
                if tta:
                    probs = dihedral_tta(lambda t: net(self._fmt(t)), x, self.multilabel).float().cpu()
                else:
                    logits = net(self._fmt(x)).float().cpu()
                    probs = torch.sigmoid(logits) if self.multilabel else logits.softmax(-1)
                thr = score_thr if score_thr is not None else (0.5 if self.multilabel else None)
                for meta, p in zip(metas, probs):
                    v, i = p.topk(min(top_k, len(self.classes)))
                    chosen = ([c for c, q in zip(self.classes, p.tolist()) if q >= thr] if thr is not None
                              else [self.classes[int(p.argmax())]])
                    meta.update(top=[(self.classes[j], float(q)) for q, j in zip(v, i)], labels=chosen,
                                probs=p.tolist())
                    yield meta
            batch.clear()
            metas.clear()

        for i, meta in enumerate(all_metas):
            try:
                img = ds[i]["image"]
            except DataError as exc:
                if not skip_bad:
                    raise
                results.append({**meta, "error": str(exc)})
                yield results[-1]
                continue
            batch.append(img)
            metas.append(dict(meta))
            if len(batch) >= batch_size:
                for r in flush():
                    results.append(r)
                    yield r
        for r in flush():
            results.append(r)
            yield r
        if out is not None:
            _write_predictions(self, results, Path(out))


def _write_predictions(task: ClassificationTask, preds: list[dict], out: Path) -> None:
    import csv

    from rsvision.outputs import atomic_write
    from rsvision.tasks.common import write_json

    write_json({"task": "classify", "classes": task.classes, "multilabel": task.multilabel, "predictions": preds},
               out / "predictions.json")
    pairs = bool(task.hparams.get("modalities"))
    with atomic_write(out / "predictions.csv", newline="") as f:
        w = csv.writer(f)
        if pairs:  # one row per pair: predicted labels and every class probability
            w.writerow(["id", "path", "modalities", "labels", *task.classes])
        else:
            w.writerow(["path", "class", "probability"])
        for p in preds:
            if "top" not in p:
                continue
            if pairs:
                w.writerow([p["id"], p["path"], "+".join(p["modalities"]), "|".join(p["labels"]),
                            *(f"{q:.6f}" for q in p["probs"])])
            else:
                w.writerow([p["path"], p["top"][0][0], f"{p['top'][0][1]:.6f}"])


@torch.inference_mode()
def dihedral_tta(net: nn.Module, x: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Mean class probabilities over the 8 flips / 90-degree rotations of ``x`` (B, C, H, W) -> (B, K).

    Overhead scenes have no canonical orientation, so the average is the natural test-time
    augmentation; it is invariant to any of the 8 transforms of the input (tested).
    """
    act = torch.sigmoid if multilabel else (lambda t: t.softmax(-1))
    out = 0
    for flip in (False, True):
        xf = x.flip(-1) if flip else x
        for k in range(4):
            out = out + act(net(torch.rot90(xf, k, (-2, -1))).float())
    return out / 8


# --- evaluation data ------------------------------------------------------------------------------
def _records(loader, batch: dict, y, pred, p, classes: Sequence[str], start: int) -> list[dict]:
    """Per-image records of one single-label batch (:mod:`rsvision.tasks.per_image`): the image path where
    the dataset has ``samples``, else its index."""
    from rsvision.tasks.per_image import record

    samples = getattr(getattr(loader, "dataset", None), "samples", None)
    idx = batch.get("index")
    idx = idx.tolist() if isinstance(idx, torch.Tensor) else list(range(start, start + len(y)))
    out = []
    for i, t, q, pr in zip(idx, y.tolist(), pred.tolist(), p.tolist()):
        image = samples[i].path if samples is not None and 0 <= i < len(samples) else int(i)
        out.append(record(image, true=classes[t], pred=classes[q], score=float(pr[q]), p_true=float(pr[t])))
    return out


def _eval_dataset(task: "ClassificationTask", samples, skip_bad: bool = False, eval_size: int | None = None):
    from rsvision.data.classification import SceneDataset
    from rsvision.data.transforms import ResizePolicy, SceneTransform

    hp = task.hparams
    size = eval_size or hp.get("eval_size")  # checkpoints from before eval_size have none
    tf = SceneTransform(ResizePolicy(hp.img_size, hp.resize, eval_size=size), train=False)
    return SceneDataset(samples, len(task.classes), tf, hp.mean, hp.std, hp.bands, task.multilabel, skip_bad,
                        in_chans=hp.in_chans, train_dtype=hp.get("dtype"))


def eval_dataset(task: "ClassificationTask", data: str | Path, split_file: str | Path | None = None,
                 split: str | None = None, skip_bad: bool = False, eval_size: int | None = None,
                 modalities: Sequence[str] | None = None):
    """Dataset of ``data`` (class folders, or a multi-label CSV) with the checkpoint's classes,
    bands, normalisation and resize policy; optionally only ``split`` of ``split_file``.
    ``eval_size`` overrides the checkpoint's (whole image resized to it), e.g. to pick it on val."""
    from rsvision.data.classification import Sample, _rel, read_multilabel_csv, read_split_file, scan_class_folders
    from rsvision.errors import DataError

    data = Path(data)
    if task.hparams.get("modalities"):
        from rsvision.data.multimodal import pairs_eval_dataset

        return pairs_eval_dataset(task.hparams, data, split, modalities, split_file)
    if data.suffix.lower() == ".csv":
        samples, _ = read_multilabel_csv(data, None, task.classes)
        root = data.parent
    else:
        samples, found = scan_class_folders(data, None, skip_bad)
        index = {c: i for i, c in enumerate(task.classes)}
        unknown = [c for c in found if c not in index]
        if unknown:
            raise DataError(f"class folder(s) {unknown} not in the checkpoint's classes {task.classes}", path=data)
        samples = [Sample(s.path, index[found[s.target]]) for s in samples]
        root = data
    if split is not None:
        if split_file is None:
            raise DataError("--split needs a split file (--split-file)", path=data)
        table = read_split_file(split_file)
        samples = [s for s in samples if table.get(_rel(s.path, root)) == split]
        if not samples:
            raise DataError(f"no images of split {split!r} under {data}", path=split_file)
    ds = _eval_dataset(task, samples, skip_bad, eval_size)
    return ds.cache() if skip_bad else ds  # decode up front: bad files dropped, not substituted
