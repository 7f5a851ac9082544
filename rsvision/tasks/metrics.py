"""Confusion-matrix metrics for classification, segmentation and change detection (CONVENTIONS metric JSON).

Everything derives from one integer confusion matrix ``cm[target, pred]`` so that training
(torchmetrics ``MulticlassConfusionMatrix``, which syncs across processes), ``eval`` over whole
scenes and the tests share a single definition. Values are fractions in [0, 1]; a class that
appears neither in the reference nor in the prediction has no IoU/F1 (``None``) and is left out
of the means, as mmsegmentation's ``nanmean`` does.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def confusion_matrix(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Confusion matrix ``cm[t, p]`` (int64, ``(K, K)``) of label maps of any equal shape.

    Target pixels equal to ``ignore_index`` (or outside ``[0, K)``) are not counted; predictions
    outside ``[0, K)`` are an error because they mean a model / class-list mismatch.
    """
    p = torch.as_tensor(pred).reshape(-1).long()
    t = torch.as_tensor(target).reshape(-1).long()
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in size: {tuple(p.shape)} vs {tuple(t.shape)}")
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    p, t = p[keep], t[keep]
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predicted labels outside [0, {num_classes})")
    cm = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def _div(a: float, b: float) -> float | None:
    return float(a) / float(b) if b > 0 else None


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def segmentation_metrics(cm: np.ndarray | torch.Tensor, classes: Sequence[str]) -> dict:
    """CONVENTIONS ``segment`` JSON from a confusion matrix ``cm[target, pred]``.

    IoU_c = TP / (TP + FP + FN), F1_c = 2 TP / (2 TP + FP + FN), OA = trace / total.
    """
    cm = np.asarray(torch.as_tensor(cm).cpu(), dtype=np.float64)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(classes)} classes")
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    iou = {c: _div(tp[i], tp[i] + fp[i] + fn[i]) for i, c in enumerate(classes)}
    f1 = {c: _div(2 * tp[i], 2 * tp[i] + fp[i] + fn[i]) for i, c in enumerate(classes)}
    return {
        "task": "segment",
        "mIoU": _mean(iou.values()),
        "IoU": iou,
        "F1": f1,
        "mF1": _mean(f1.values()),
        "OA": _div(tp.sum(), cm.sum()),
        "classes": list(classes),
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def change_metrics(cm: np.ndarray | torch.Tensor, change_class: int = 1) -> dict:
    """CONVENTIONS ``change`` JSON (precision, recall, F1, IoU of the change class, OA, kappa).

    ``cm`` is the 2 x 2 matrix ``[[TN, FP], [FN, TP]]`` (rows reference, columns prediction).
    Kappa is Cohen's: (p_o - p_e) / (1 - p_e) with p_e from the row / column marginals.
    """
    cm = np.asarray(torch.as_tensor(cm).cpu(), dtype=np.float64)
    if cm.shape != (2, 2):
        raise ValueError(f"change metrics need a 2 x 2 confusion matrix, got {cm.shape}")
    if change_class == 0:
        cm = cm[::-1, ::-1]
    (tn, fp), (fn, tp) = cm
    n = cm.sum()
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    po = _div(tp + tn, n)
    kappa = None
    if n > 0:
        pe = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
        kappa = 1.0 if pe >= 1.0 else float((po - pe) / (1.0 - pe))
    return {
        "task": "change",
        "precision": precision,
        "recall": recall,
        "F1": f1,
        "IoU": _div(tp, tp + fp + fn),
        "OA": po,
        "kappa": kappa,
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


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
