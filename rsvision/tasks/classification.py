"""Scene classification as a Lightning task: any timm or rsvision backbone, single- or multi-label.

The checkpoint's ``hyper_parameters`` are everything ``predict`` needs (CONVENTIONS): model name and
config, class names, band indices and count, per-band mean/std (pixel units), image size, resize
policy and eval size. :func:`load_classifier` rebuilds the model from them alone (``weights_only=True``).

Training: AdamW (no weight decay on norms / biases), linear warmup then cosine per step, label
smoothing, optional mixup / cutmix (on soft targets, so also multi-label) and an EMA of the weights
that, when enabled, is the model validated, checkpointed for ``predict`` and evaluated.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

import rsvision  # noqa: F401  (registers lsknet_* / haksnet_* with timm)
from rsvision.data.classification import ClassificationDataConfig
from rsvision.errors import CheckpointError
from rsvision.tasks.common import TrainerOptions, budget_progress

__all__ = [
    "ModelConfig", "OptimConfig", "ClassifyConfig", "ClassificationTask", "mix_batch",
    "classification_metrics", "multilabel_metrics", "evaluate", "dihedral_tta", "load_classifier", "FORMAT_VERSION",
]

FORMAT_VERSION = 1


@dataclass
class ModelConfig:
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
class OptimConfig:
    """``optim:`` section."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Beta(alpha, alpha) mixup; 0 disables
    cutmix: float = 0.0  # Beta(alpha, alpha) cutmix; 0 disables
    mix_prob: float = 1.0
    ema: bool = False
    ema_decay: float = 0.998
    # "epochs": cosine over max_epochs; "time": cosine over the trainer's max_time budget (or over
    # max_epochs if that comes first), so a time-limited run ends annealed whatever the machine speed
    schedule: str = "epochs"


def _classify_trainer() -> TrainerOptions:
    return TrainerOptions(out="runs/classify", monitor="val/acc", mode="max")


@dataclass
class ClassifyConfig:
    """A whole ``rsvision classify train`` config (see ``configs/rsscn7_*.yaml``)."""

    data: ClassificationDataConfig = field(default_factory=ClassificationDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerOptions = field(default_factory=_classify_trainer)


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float, prob: float = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (chosen 50/50 when both are on) of ``x (N,C,H,W)`` with its reversed batch.

    ``y`` are soft targets ``(N, K)``; the returned targets mix by the (cut-area-corrected) lambda.
    """
    if (mixup <= 0 and cutmix <= 0) or float(torch.rand(())) >= prob or len(x) < 2:
        return x, y
    use_cut = cutmix > 0 and (mixup <= 0 or float(torch.rand(())) < 0.5)
    alpha = cutmix if use_cut else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    xr, yr = x.flip(0), y.flip(0)
    if use_cut:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (1,))), int(torch.randint(0, w, (1,)))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = xr[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        x = lam * x + (1 - lam) * xr
    return x, lam * y + (1 - lam) * yr


def classification_metrics(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """CONVENTIONS classify JSON from a confusion matrix (rows true, columns predicted).

    AA averages the per-class accuracies (recalls) of classes present in the evaluated set;
    kappa is Cohen's kappa.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    support = cm.sum(1)
    diag = np.diag(cm)
    per = np.where(support > 0, diag / np.maximum(support, 1), np.nan)
    po = diag.sum() / max(n, 1)
    pe = float((cm.sum(0) * support).sum()) / max(n, 1) ** 2
    kappa = (po - pe) / (1 - pe) if pe < 1 else 1.0
    return {
        "task": "classify",
        "overall_accuracy": float(po),
        "average_accuracy": float(np.nanmean(per)) if (support > 0).any() else 0.0,
        "kappa": float(kappa),
        "num_samples": n,
        "per_class": {c: {"accuracy": None if np.isnan(a) else float(a), "support": int(s)}
                      for c, a, s in zip(classes, per, support)},
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


def multilabel_metrics(probs: torch.Tensor, targets: torch.Tensor, classes: Sequence[str],
                       threshold: float = 0.5) -> dict[str, Any]:
    """CONVENTIONS multi-label JSON: macro mAP over classes with positives, micro / macro F1."""
    from torchmetrics.functional.classification import multilabel_average_precision, multilabel_f1_score

    k = len(classes)
    t = targets.long()
    ap = multilabel_average_precision(probs, t, num_labels=k, average="none")
    f1 = multilabel_f1_score(probs, t, num_labels=k, threshold=threshold, average="none")
    support = t.sum(0)
    has = support > 0
    return {
        "task": "classify",
        "multilabel": True,
        "mAP": float(ap[has].mean()) if has.any() else 0.0,
        "f1_micro": float(multilabel_f1_score(probs, t, num_labels=k, threshold=threshold, average="micro")),
        "f1_macro": float(f1[has].mean()) if has.any() else 0.0,
        "num_samples": int(len(t)),
        "per_class": {c: {"AP": float(ap[i]) if has[i] else None, "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "classes": list(classes),
    }


class ClassificationTask(L.LightningModule):
    """LightningModule over ``timm.create_model(model["name"], num_classes=, in_chans=)``.

    All arguments are plain types and stored as ``hyper_parameters``; ``data`` keeps the resize
    policy (``img_size``, ``resize``, ``eval_size``) and band selection that ``predict`` applies.
    """

    def __init__(self, model: dict[str, Any], classes: Sequence[str], in_chans: int, mean: Sequence[float],
                 std: Sequence[float], img_size: int, resize: int | None = None,
                 bands: Sequence[int] | None = None, multilabel: bool = False,
                 optim: dict[str, Any] | None = None, task: str = "classify", format_version: int = FORMAT_VERSION,
                 eval_size: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.classes = list(classes)
        self.multilabel = bool(multilabel)
        self.optim_cfg = OptimConfig(**(optim or {}))
        if self.optim_cfg.schedule not in ("epochs", "time"):
            from rsvision.errors import ConfigError

            raise ConfigError(f"optim.schedule must be 'epochs' or 'time', got {self.optim_cfg.schedule!r}")
        m = ModelConfig(**{k: v for k, v in model.items() if k in ModelConfig.__dataclass_fields__})
        extra = dict(m.kwargs)
        if m.drop_path_rate is not None:
            extra["drop_path_rate"] = m.drop_path_rate
        try:
            self.model = timm.create_model(m.name, pretrained=False, num_classes=len(self.classes),
                                           in_chans=in_chans, drop_rate=m.drop_rate, **extra)
        except RuntimeError as exc:  # timm: "Unknown model"
            raise CheckpointError(f"cannot build model {m.name!r}: {exc}") from exc
        self.channels_last = bool(m.channels_last or m.fast)
        if m.fast:
            from rsvision.models.fast import optimize_for_training

            try:
                self.model = optimize_for_training(self.model, inplace=True)
            except TypeError as exc:
                from rsvision.errors import ConfigError

                raise ConfigError(f"model.fast: {exc} (it applies to LSKNet / HAKSNet models only)") from exc
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema: nn.Module | None = None
        if self.optim_cfg.ema:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self._val_cm: torch.Tensor | None = None

    # --- model --------------------------------------------------------------------------------
    def net(self) -> nn.Module:
        """The network used for evaluation / prediction (the EMA when enabled)."""
        return self.ema if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net()(self._fmt(x))

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def load_pretrained(self, path: str | Path):
        """Load backbone / classifier weights (any format rsvision.models.load_checkpoint takes)."""
        from rsvision.models import load_checkpoint

        report = load_checkpoint(self.model, path)
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())
        return report

    # --- training -----------------------------------------------------------------------------
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
        bs = len(x)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        if not self.multilabel:
            self.log("train/acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True,
                     batch_size=bs, sync_dist=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=bs)
        return loss

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is None:
            return
        # warm the decay up so that a short run's EMA is not dominated by random init weights
        d = min(self.optim_cfg.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        ema_p, p = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema_p, p, 1 - d)
        for be, b in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(b)

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
        self.log("val/loss", loss, on_epoch=True, batch_size=len(x), sync_dist=True)

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

    def configure_optimizers(self):
        o = self.optim_cfg
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=o.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        warm = int(round(o.warmup_epochs * total / epochs))

        by_time = o.schedule == "time"

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            t = min((step - warm) / max(total - warm, 1), 1.0)
            if by_time:
                t = max(t, budget_progress(self._trainer) or 0.0)
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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


def evaluate(task: ClassificationTask, loader, device: str | torch.device = "cpu",
             progress: bool = False, tta: bool = False) -> dict[str, Any]:
    """Metrics JSON (CONVENTIONS) of ``task`` over a loader of ``{"image", "label"}`` batches.

    ``tta``: average the probabilities over the 8 flips / 90-degree rotations (``dihedral_tta``).
    """
    net = task.net().to(device).eval()
    k = len(task.classes)
    cm = torch.zeros(k, k, dtype=torch.long)
    probs, targets = [], []
    it = loader
    if progress:
        from rich.progress import track

        it = track(loader, description="evaluating", transient=True)
    for batch in it:
        x = task._fmt(batch["image"].to(device))
        with torch.no_grad():
            if tta:
                p = dihedral_tta(lambda t: net(task._fmt(t)), x, task.multilabel).cpu()
            else:
                logits = net(x).float().cpu()
                p = torch.sigmoid(logits) if task.multilabel else logits
        y = batch["label"]
        if task.multilabel:
            probs.append(p)
            targets.append(y)
        else:
            cm += torch.bincount(y * k + p.argmax(-1), minlength=k * k).view(k, k)
    if task.multilabel:
        return multilabel_metrics(torch.cat(probs), torch.cat(targets), task.classes)
    return classification_metrics(cm.numpy(), task.classes)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> ClassificationTask:
    """Rebuild a :class:`ClassificationTask` from an rsvision checkpoint alone (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path=path) from exc
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or hp.get("task") != "classify":
        raise CheckpointError("not an rsvision classification checkpoint (no classify hyper_parameters)", path=path)
    task = ClassificationTask(**hp)
    try:
        task.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit {hp['model'].get('name')}: {exc}", path=path) from exc
    return task.eval()


# --- library entry points used by the CLI, the demo and tests --------------------------------------
def _eval_dataset(task: ClassificationTask, samples, skip_bad: bool = False, eval_size: int | None = None):
    from rsvision.data.classification import SceneDataset
    from rsvision.data.transforms import ResizePolicy, SceneTransform

    hp = task.hparams
    size = eval_size or hp.get("eval_size")  # checkpoints from before eval_size have none
    tf = SceneTransform(ResizePolicy(hp.img_size, hp.resize, eval_size=size), train=False)
    return SceneDataset(samples, len(task.classes), tf, hp.mean, hp.std, hp.bands, task.multilabel, skip_bad,
                        in_chans=hp.in_chans)


def eval_dataset(task: ClassificationTask, data: str | Path, split_file: str | Path | None = None,
                 split: str | None = None, skip_bad: bool = False, eval_size: int | None = None):
    """Dataset of ``data`` (class folders, or a multi-label CSV) with the checkpoint's classes,
    bands, normalisation and resize policy; optionally only ``split`` of ``split_file``.
    ``eval_size`` overrides the checkpoint's (whole image resized to it), e.g. to pick it on val."""
    from rsvision.data.classification import (Sample, _rel, read_multilabel_csv, read_split_file,
                                              scan_class_folders)
    from rsvision.errors import DataError

    data = Path(data)
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


@torch.inference_mode()
def predict_images(task: ClassificationTask, paths: Sequence[str | Path], batch_size: int = 16,
                   top_k: int = 5, device: str | torch.device = "cpu", skip_bad: bool = False) -> list[dict]:
    """Top-k ``[{"path", "top": [(class, prob), ...], "probs": [...]}]`` per readable image.

    Unreadable images raise DataError naming the file, or are reported with ``"error"`` under
    ``skip_bad``. Multi-label checkpoints give independent sigmoid probabilities.
    """
    from rsvision.data.classification import Sample
    from rsvision.errors import DataError

    ds = _eval_dataset(task, [Sample(str(p), 0) for p in paths])
    net = task.net().to(device).eval()
    out: list[dict] = []
    batch, metas = [], []

    def flush():
        if not batch:
            return
        logits = net(task._fmt(torch.stack(batch).to(device))).float().cpu()
        probs = torch.sigmoid(logits) if task.multilabel else logits.softmax(-1)
        for meta, p in zip(metas, probs):
            v, i = p.topk(min(top_k, len(task.classes)))
            meta.update(top=[(task.classes[j], float(q)) for q, j in zip(v, i)], probs=p.tolist())
            out.append(meta)
        batch.clear()
        metas.clear()

    for i, p in enumerate(paths):
        try:
            img = ds[i]["image"]
        except DataError as exc:
            if not skip_bad:
                raise
            out.append({"path": str(p), "error": str(exc)})
            continue
        batch.append(img)
        metas.append({"path": str(p)})
        if len(batch) >= batch_size:
            flush()
    flush()
    return out


def train_classifier(cfg: ClassifyConfig, **trainer_overrides: Any) -> dict[str, Any]:
    """Train per ``cfg`` into the run directory ``cfg.trainer.out``, then score the best checkpoint
    on the test split (``test_metrics.json`` + ``confusion_matrix.png``). Returns
    ``{"best", "last", "test"}``. ``trainer_overrides`` go to ``lightning.Trainer``."""
    from dataclasses import asdict

    from rsvision.data.classification import ClassificationDataModule
    from rsvision.tasks.common import LAST, build_trainer, fit, set_threads, write_config, write_json

    t = cfg.trainer
    set_threads(t.threads)
    L.seed_everything(t.seed, workers=True, verbose=False)  # model init below is part of the run
    out = Path(t.out)
    dm = ClassificationDataModule(cfg.data, seed=t.seed, run_dir=out)
    dm.setup("fit")
    d = cfg.data
    if d.multilabel and t.monitor in ("val/acc", "val/aa", "val/kappa"):
        t.monitor, t.mode = "val/mAP", "max"  # single-label metrics do not exist for multi-label
    d.classes, d.mean, d.std = list(dm.classes), list(dm.mean), list(dm.std)
    d.split_file = str(dm.split_file.resolve())
    d.root = str(Path(d.root).resolve()) if d.root else None
    d.csv = str(Path(d.csv).resolve()) if d.csv else None
    write_config(out, cfg)
    task = ClassificationTask(model=asdict(cfg.model), classes=dm.classes, in_chans=dm.in_chans, mean=dm.mean,
                              std=dm.std, img_size=d.img_size, resize=d.resize, bands=d.bands,
                              multilabel=d.multilabel, optim=asdict(cfg.optim), eval_size=d.eval_size)
    resuming = t.resume and (out / LAST).exists()
    if cfg.model.pretrained and not resuming:
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"pretrained weights {cfg.model.pretrained}:\n{task.load_pretrained(cfg.model.pretrained)}")
    trainer = build_trainer(t, **trainer_overrides)
    best = fit(trainer, task, dm, t)
    result: dict[str, Any] = {"best": best, "last": str(out / LAST) if (out / LAST).exists() else None}
    if not trainer.is_global_zero:
        return result
    ckpt = best if best and Path(best).exists() else result["last"]
    if ckpt is None:
        return result
    split = "test" if "test" in dm.datasets else "val"
    if split in dm.datasets:
        model = load_classifier(ckpt)
        metrics = evaluate(model, dm.loader(split))
        metrics.update(split=split, checkpoint=str(ckpt))
        write_json(metrics, out / f"{split}_metrics.json")
        if not task.multilabel:
            from rsvision.viz.plots import plot_confusion_matrix

            plot_confusion_matrix(metrics["confusion_matrix"], dm.classes, out / "confusion_matrix.png",
                                  title=f"{split} split, OA {100 * metrics['overall_accuracy']:.1f}%")
        result[split] = metrics
    return result
