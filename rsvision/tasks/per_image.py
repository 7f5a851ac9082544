"""Per-image records of an eval: what made each image good or bad, per class (the viewer's worst examples).

Every task's ``evaluate`` adds ``"per_image": [record, ...]`` to its metric JSON (an extra key, allowed by
CONVENTIONS). A record names its image (``"image"``: its absolute path, ``"id"``: its stem)
and, per task:

* classify (single-label): ``"true"``, ``"pred"`` (class names), ``"score"`` (probability of ``pred``) and
  ``"p_true"`` (probability of the true class): a class's worst examples are its images with the lowest
  ``p_true``;
* segment / change: ``"IoU": {class: float | null}`` of that image (null where the class is neither in
  the truth nor in the prediction): the lowest first;
* detect: ``"errors": {class: int}`` = ``"FP"`` (false positives) + ``"missed"`` (undetected non-difficult
  ground truth) at the eval's IoU threshold, for the classes the image has ground truth or detections
  of: the most errors first.

A JSON with more than :data:`rsvision.outputs.PER_IMAGE_INLINE_MAX` records keeps none inline: they go
to ``<json stem>.per_image.jsonl`` beside it (:func:`rsvision.outputs.spill_per_image`, applied by
:func:`rsvision.tasks.common.write_json`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["record", "iou_record"]


def record(image: Any, **values: Any) -> dict:
    """``{"image", "id", **values}`` for one image: a path (made absolute, so the JSON means the same file
    from any folder) or an index where the dataset has no paths."""
    if isinstance(image, int):
        return {"image": str(image), "id": str(image), **values}
    return {"image": os.path.abspath(image), "id": Path(image).stem, **values}


def iou_record(image: Any, cm: np.ndarray, classes: Sequence[str]) -> dict:
    """The record of a segment / change image from its confusion matrix ``cm[target, pred]``."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return record(image, IoU={c: (float(tp[i] / union[i]) if union[i] > 0 else None) for i, c in enumerate(classes)})
