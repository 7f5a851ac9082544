"""Multi-task labels: one image with its semantic mask, instance masks and rotated boxes (MTP, SAMRS).

A multi-task sample (what :class:`MultiTaskDataset` yields and :func:`collate_multitask` batches)::

    {"image": (C, H, W) float32 (normalised), "semantic": (H, W) int64 (0 = background, k + 1 = class k,
     ignore_index where unknown / padded), "masks": (M, H, W) uint8, "mask_labels": (M,) int64,
     "boxes": (N, 5) le90 (cx, cy, w, h, a) px, "labels": (N,) int64, "difficult": (N,), "name", "path"}

Instances and boxes are two lists because SAMRS stores them apart (COCO instances, DOTA / DIOR-R
boxes); labels derived from polygons give the same objects in the same order in both.

The converter (:func:`polygons_to_labels`) turns DOTA-format polygons into all three kinds, so any
DOTA / DIOR-R folder is multi-task data: instance = the filled polygon (pixel centres inside it,
:func:`polygon_to_mask`), semantic = the instances painted by class, largest first so that small
objects lying on large ones (vehicles on a bridge, ships in a harbour) stay visible, boxes as
:class:`rsvision.data.detection.DetectionDataset` makes them (``poly2obb`` le90, boxes thinner than
``MIN_BOX_SIZE`` dropped with their instance). Cropping follows MMRotate's splitter: an object belongs
to a window when at least ``iof_thr`` of its area lies inside (its box is kept whole, its mask is
cut by the window); the semantic mask paints every object that touches the window.

Readers of the folder formats are in :mod:`rsvision.data.multitask_readers`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["polygon_to_mask", "polygons_to_masks", "paint_semantic", "polygons_to_labels", "IGNORE_INDEX"]

IGNORE_INDEX = 255


def polygon_to_mask(poly: Sequence[float] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Fill one polygon ``(x1, y1, ..., xk, yk)`` (any k >= 3, pixels, even-odd rule) into ``(H, W)`` bool.

    A pixel ``(row i, column j)`` is inside when its centre ``(j + 0.5, i + 0.5)`` is, the convention
    of :mod:`rsvision.data.synthetic.objects` and of shapely's ``contains_xy`` on pixel centres, so a
    mask's pixel count is the polygon's area up to its boundary pixels. Parts outside the image are cut.
    """
    mask = np.zeros((int(height), int(width)), bool)
    p = np.asarray(poly, np.float64).reshape(-1, 2)
    if len(p) < 3 or not np.isfinite(p).all():
        return mask
    r0 = max(int(np.floor(p[:, 1].min() - 0.5)), 0)
    r1 = min(int(np.ceil(p[:, 1].max() + 0.5)), int(height))
    if r0 >= r1 or width <= 0:
        return mask
    y = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5  # row centres (R, 1)
    xa, ya = p[:, 0][None], p[:, 1][None]
    xb, yb = np.roll(p[:, 0], -1)[None], np.roll(p[:, 1], -1)[None]
    cross = ((ya <= y) & (y < yb)) | ((yb <= y) & (y < ya))  # half-open: a vertex counts once
    t = (y - ya) / np.where(yb != ya, yb - ya, 1.0)
    xs = np.sort(np.where(cross, xa + t * (xb - xa), np.inf), axis=1)
    n = cross.sum(1)
    diff = np.zeros((r1 - r0, int(width) + 1), np.int32)
    for k in range(0, int(n.max(initial=0)), 2):  # spans between crossing pairs (k, k + 1)
        rows = np.nonzero(n > k + 1)[0]
        if not len(rows):
            break
        lo = np.clip(np.ceil(xs[rows, k] - 0.5), 0, width).astype(np.int64)
        hi = np.clip(np.ceil(xs[rows, k + 1] - 0.5), 0, width).astype(np.int64)
        np.add.at(diff, (rows, lo), 1)
        np.add.at(diff, (rows, hi), -1)
    mask[r0:r1] = np.cumsum(diff[:, :-1], axis=1) > 0
    return mask


def polygons_to_masks(polys: Sequence[Sequence[float]] | np.ndarray, height: int, width: int) -> np.ndarray:
    """``(N, 2k)`` polygons (or a list of polygons of any length) -> ``(N, H, W)`` bool instance masks."""
    out = np.zeros((len(polys), int(height), int(width)), bool)
    for i, p in enumerate(polys):
        out[i] = polygon_to_mask(p, height, width)
    return out


def paint_semantic(masks: np.ndarray, labels: Sequence[int], height: int, width: int,
                   background: int = 0) -> np.ndarray:
    """Paint ``(N, H, W)`` instance masks by class: pixel value ``label + 1``, ``background`` elsewhere.

    Largest instances first, so where two overlap the smaller one wins (it would vanish otherwise).
    """
    sem = np.full((int(height), int(width)), background, np.int64)
    if len(masks) == 0:
        return sem
    areas = masks.reshape(len(masks), -1).sum(1)
    for i in np.argsort(-areas, kind="stable"):
        sem[masks[i]] = int(labels[i]) + 1
    return sem


def _boxes(polys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """le90 boxes of ``(N, 8)`` polygons and which to keep (the detection datasets' rule)."""
    from rsvision.data.detection import polys_to_boxes

    return polys_to_boxes(polys)


def polygons_to_labels(polys: np.ndarray, labels: Sequence[int], height: int, width: int,
                       difficult: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """DOTA-format ``(N, 8)`` polygons with class indices -> all three label kinds of one image.

    Returns ``{"semantic" (H, W) int64, "masks" (M, H, W) bool, "mask_labels" (M,), "boxes" (M, 5)
    float32 le90, "labels" (M,), "difficult" (M,)}``: instances and boxes of the same M objects (those
    whose box is at least ``MIN_BOX_SIZE`` wide, as the detection datasets keep); the semantic mask
    paints all N polygons (see :func:`paint_semantic`).
    """
    polys = np.asarray(polys, np.float64).reshape(-1, 8)
    labels = np.asarray(labels, np.int64).reshape(-1)
    diff = np.zeros(len(polys), np.int64) if difficult is None else np.asarray(difficult, np.int64).reshape(-1)
    if len(labels) != len(polys) or len(diff) != len(polys):
        raise ValueError(f"{len(polys)} polygons but {len(labels)} labels / {len(diff)} difficult flags")
    masks = polygons_to_masks(polys, height, width)
    boxes, keep = _boxes(polys)
    return {"semantic": paint_semantic(masks, labels, height, width), "masks": masks[keep],
            "mask_labels": labels[keep], "boxes": boxes, "labels": labels[keep], "difficult": diff[keep]}
