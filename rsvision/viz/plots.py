"""Training curves from a run's ``metrics.csv`` and confusion-matrix pictures (matplotlib, Agg).

Metric names follow ``<stage>/<name>`` (``train/loss``, ``val/loss``, ``val/acc``...): every
``<name>`` gets one panel with one line per stage, plotted against the epoch when logged per epoch.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["read_metrics_csv", "plot_training_curves", "plot_confusion_matrix"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float, float]]]:
    """``{metric: [(epoch, step, value), ...]}`` from a Lightning CSVLogger file (blank cells skipped)."""
    series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = float(row["epoch"]) if row.get("epoch") not in (None, "") else math.nan
            step = float(row["step"]) if row.get("step") not in (None, "") else math.nan
            for k, v in row.items():
                if k in ("epoch", "step") or v in (None, ""):
                    continue
                try:
                    series[k].append((epoch, step, float(v)))
                except ValueError:
                    continue
    return dict(series)


def _fractional_epochs(arr: np.ndarray) -> np.ndarray:
    """Per-step points -> x in epochs: the i-th of n points logged in epoch e sits at e + (i+1)/n."""
    x = arr[:, 1].astype(float).copy()
    ep = arr[:, 0]
    if np.isnan(ep).any():
        return x
    for e in np.unique(ep):
        idx = np.flatnonzero(ep == e)
        idx = idx[np.argsort(arr[idx, 1], kind="stable")]
        x[idx] = e + (np.arange(len(idx)) + 1) / len(idx)
    return x


def plot_training_curves(metrics_csv: str | Path, out: str | Path, name: str = "curves.png") -> Path | None:
    """Plot every metric of ``metrics_csv``; writes ``out/name`` (``out`` a dir) or ``out`` (a .png).

    Per-step series (``train/loss_step``) are drawn against fractional epochs when possible so that
    they share the x axis with per-epoch series. Returns the PNG path (None when nothing to plot).
    """
    series = read_metrics_csv(metrics_csv)
    if not series:
        return None
    panels: dict[str, dict[str, list]] = defaultdict(dict)
    for key, pts in series.items():
        stage, _, metric = key.partition("/") if "/" in key else ("", "", key)
        metric = metric.removesuffix("_epoch").removesuffix("_step") if metric else key
        panels[metric][key] = pts
    plt = _plt()
    n = len(panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (metric, lines) in zip(axes.flat, sorted(panels.items())):
        for label, pts in sorted(lines.items()):
            arr = np.asarray(pts, dtype=float)
            epochs = arr[:, 0][~np.isnan(arr[:, 0])]
            per_step = label.endswith("_step") or len(np.unique(epochs)) < len(arr)
            x = _fractional_epochs(arr) if per_step else arr[:, 0] + 1  # epoch e ends at x = e + 1
            style = dict(lw=0.8, alpha=0.6) if per_step else dict(marker="o", ms=3)
            ax.plot(x, arr[:, 2], label=label + (" (step)" if per_step else ""), **style)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    path = out if out.suffix.lower() == ".png" else out / name
    from rsvision.outputs import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_confusion_matrix(cm: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str], out: str | Path,
                          normalize: bool = True, title: str = "Confusion matrix") -> Path:
    """Confusion matrix (rows = true class, columns = predicted) as a PNG; cells show counts.

    With ``normalize`` the colours are row-normalised (recall per class) so small classes stay
    readable; the numbers in the cells are always the raw counts.
    """
    cm = np.asarray(cm, dtype=np.int64)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {k} classes")
    colours = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    plt = _plt()
    size = max(4.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(colours, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=list(classes), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:
        thresh = (colours.max() if colours.size else 0) / 2
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if colours[i, j] > thresh else "black")
    fig.tight_layout()
    from rsvision.outputs import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out
