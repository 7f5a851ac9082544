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

Readers of the folder formats and the datamodule are in :mod:`rsvision.data.multitask_readers`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rsvision.data.samplers import sample_rng, split_key
from rsvision.errors import ConfigError

__all__ = [
    "polygon_to_mask", "polygons_to_masks", "paint_semantic", "polygons_to_labels", "regions_to_instances",
    "RawSample", "make_sample", "MultiTaskDataset", "collate_multitask", "dataset_batch_sizes", "IGNORE_INDEX",
]

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


# --- one sample: crop, flip, convert ------------------------------------------------------------------
@dataclass
class RawSample:
    """One image as a reader loads it, before cropping: pixels plus whatever labels the format has.

    ``instances`` says where instance masks come from: ``"polys"`` (the box polygons: DOTA / DIOR-R),
    ``"masks"`` (``masks`` / ``mask_labels``: SAMRS's COCO instances) or ``"semantic"`` (connected
    regions of each class of ``semantic``: iSAID as shared, whose instance ids are not available).
    ``semantic`` None: painted from the polygons.
    """

    image: np.ndarray  # (C, H, W) native dtype
    polys: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))  # (N, 8) box polygons
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray | None = None
    instances: str = "polys"
    masks: np.ndarray | None = None  # (M, H, W) bool
    mask_labels: np.ndarray | None = None
    semantic: np.ndarray | None = None  # (H, W) int64: 0 background, k + 1 class k, IGNORE_INDEX
    name: str = ""
    path: str = ""


def _crop(a: np.ndarray, x0: int, y0: int, w: int, h: int, fill: int | float = 0) -> np.ndarray:
    """``a[..., y0:y0+h, x0:x0+w]``, padded with ``fill`` where the window leaves the array."""
    H, W = a.shape[-2:]
    out = np.full(a.shape[:-2] + (h, w), fill, a.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if sx1 > sx0 and sy1 > sy0:
        out[..., sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = a[..., sy0:sy1, sx0:sx1]
    return out


def _flip(a: np.ndarray, hflip: bool, vflip: bool) -> np.ndarray:
    if hflip:
        a = a[..., ::-1]
    if vflip:
        a = a[..., ::-1, :]
    return np.ascontiguousarray(a)


def regions_to_instances(semantic: np.ndarray, min_pixels: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instances of a semantic mask: each 8-connected region of a class (``(M, H, W)`` bool, class
    indices ``(M,)``) and the polygon ``(M, 8)`` of its minimum rotated rectangle, pixel extents included.

    Touching objects of one class merge into one region: the best a mask without instance ids allows.
    """
    try:
        from scipy import ndimage
    except ImportError as exc:  # pragma: no cover - scipy is in the dev / instance extras
        raise ImportError("deriving instances from a semantic mask needs scipy (pip install scipy)") from exc
    import shapely

    masks, labels, polys = [], [], []
    for v in np.unique(semantic):
        if v == 0 or v == IGNORE_INDEX:
            continue
        comp, _ = ndimage.label(semantic == v, structure=np.ones((3, 3), bool))
        for j, sl in enumerate(ndimage.find_objects(comp), start=1):
            local = comp[sl] == j
            ys, xs = np.nonzero(local)
            if sl is None or len(ys) < min_pixels:
                continue
            m = np.zeros(semantic.shape, bool)
            m[sl] = local
            rows = np.nonzero(local.any(1))[0]  # the hull of every pixel's corners: each row's outer pixels
            left = local[rows].argmax(1)
            right = local.shape[1] - 1 - local[rows, ::-1].argmax(1)
            y, x0, x1 = rows + sl[0].start, left + sl[1].start, right + sl[1].start + 1
            corners = np.concatenate([np.stack([x, y + dy], 1) for x in (x0, x1) for dy in (0, 1)])
            rect = shapely.minimum_rotated_rectangle(shapely.multipoints(corners.astype(np.float64)))
            ring = np.asarray(rect.exterior.coords)[:4] if rect.geom_type == "Polygon" else None
            if ring is None:
                continue
            masks.append(m)
            labels.append(int(v) - 1)
            polys.append(ring.reshape(8))
    H, W = semantic.shape
    return (np.asarray(masks, bool).reshape(-1, H, W), np.asarray(labels, np.int64),
            np.asarray(polys, np.float64).reshape(-1, 8))


def make_sample(raw: RawSample, x0: int, y0: int, w: int, h: int, hflip: bool = False, vflip: bool = False,
                iof_thr: float = 0.7) -> dict[str, Any]:
    """The multi-task labels of the window ``[x0, x0 + w) x [y0, y0 + h)`` of ``raw``, then flipped.

    Returns numpy arrays keyed as the module docstring (image in native units, not normalised).
    """
    from rsvision.data.dota.split import window_objects
    from rsvision.data.tiling import Window

    img = _flip(_crop(raw.image, x0, y0, w, h), hflip, vflip)
    polys = np.asarray(raw.polys, np.float64).reshape(-1, 8)
    labels = np.asarray(raw.labels, np.int64).reshape(-1)
    diff = np.zeros(len(polys), np.int64) if raw.difficult is None else np.asarray(raw.difficult, np.int64)
    keep = window_objects(polys, [Window(x0, y0, w, h)], iof_thr)[0][0] if len(polys) else np.zeros(0, np.int64)
    local = polys - np.tile([x0, y0], 4)
    if hflip:
        local[:, 0::2] = w - local[:, 0::2]
    if vflip:
        local[:, 1::2] = h - local[:, 1::2]
    if raw.semantic is not None:
        sem = _flip(_crop(raw.semantic, x0, y0, w, h, IGNORE_INDEX), hflip, vflip)
    else:  # every object touching the window is painted, not only those kept as instances
        xs, ys = local[:, 0::2], local[:, 1::2]
        touch = np.nonzero((xs.max(1) > 0) & (xs.min(1) < w) & (ys.max(1) > 0) & (ys.min(1) < h))[0]
        sem = paint_semantic(polygons_to_masks(local[touch], h, w), labels[touch], h, w)
    boxes, box_ok = _boxes(local[keep])
    box_labels, box_diff = labels[keep][box_ok], diff[keep][box_ok]
    if raw.instances == "polys":
        masks, mask_labels = polygons_to_masks(local[keep][box_ok], h, w), box_labels
    elif raw.instances == "masks":
        full = np.asarray(raw.masks, bool)
        cut = _flip(_crop(full, x0, y0, w, h, False), hflip, vflip)
        area = full.reshape(len(full), -1).sum(1)
        vis = cut.reshape(len(cut), -1).sum(1) >= np.maximum(iof_thr * area, 1)
        masks, mask_labels = cut[vis], np.asarray(raw.mask_labels, np.int64)[vis]
    elif raw.instances == "semantic":
        masks, mask_labels, rects = regions_to_instances(sem)
        boxes, ok = _boxes(rects)  # rectangles around pixel corners: whole pixels included
        masks, mask_labels, box_labels = masks[ok], mask_labels[ok], mask_labels[ok]
        box_diff = np.zeros(len(boxes), np.int64)
    else:
        raise ValueError(f"RawSample.instances must be polys | masks | semantic, got {raw.instances!r}")
    return {"image": img, "semantic": sem, "masks": masks, "mask_labels": mask_labels, "boxes": boxes,
            "labels": box_labels, "difficult": box_diff, "name": raw.name, "path": raw.path}


# --- dataset, collate, batch sizes ------------------------------------------------------------------
class MultiTaskDataset(Dataset):
    """Crops of ``img_size`` (random with flips in training, centred otherwise) of a reader's images.

    ``reader``: ``len(reader)``, ``reader.load(i) -> RawSample``, ``reader.classes`` (object classes;
    semantic classes are ``["background", *classes]``). Keys from a keyed
    :class:`~rsvision.data.samplers.SeededRandomSampler` draw the crop and flips from
    ``sample_rng(seed, epoch, index, stream)``: a resumed run repeats them exactly. ``repeat``: crops
    of every image per epoch (a one-image dataset zipped with larger ones would otherwise end every
    epoch, and so write checkpoints, after one step). ``stream``
    separates the datasets of one multi-task run.
    """

    def __init__(self, reader: Any, img_size: int = 512, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, train: bool = True, seed: int = 0, stream: int = 0,
                 iof_thr: float = 0.7, flip: bool = True, repeat: int = 1):
        if int(repeat) < 1:
            raise ConfigError(f"data.datasets: repeat must be >= 1, got {repeat}")
        self.reader, self.img_size, self.train, self.repeat = reader, int(img_size), bool(train), int(repeat)
        self.mean = np.asarray(mean if mean is not None else [123.675, 116.28, 103.53], np.float32)
        self.std = np.asarray(std if std is not None else [58.395, 57.12, 57.375], np.float32)
        self.seed, self.stream, self.iof_thr, self.flip = int(seed), int(stream), float(iof_thr), bool(flip)

    @property
    def classes(self) -> list[str]:
        return list(self.reader.classes)

    def __len__(self) -> int:
        return len(self.reader) * self.repeat

    def __getitem__(self, key) -> dict[str, Any]:
        i, epoch = split_key(key)  # i < len(reader) * repeat: each repeat of an image draws its own crop
        raw = self.reader.load(i % len(self.reader))
        H, W = raw.image.shape[-2:]
        s = self.img_size
        if self.train:
            rng = sample_rng(self.seed, epoch or 0, i, self.stream)
            x0, y0 = int(rng.integers(0, max(W - s, 0) + 1)), int(rng.integers(0, max(H - s, 0) + 1))
            hf, vf = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if self.flip else (False, False)
        else:
            x0, y0, hf, vf = max(W - s, 0) // 2, max(H - s, 0) // 2, False, False
        out = make_sample(raw, x0, y0, s, s, hf, vf, self.iof_thr)
        if len(self.mean) != out["image"].shape[0]:
            raise ValueError(f"{raw.path}: {out['image'].shape[0]} bands but mean / std have {len(self.mean)}")
        img = (out["image"].astype(np.float32) - self.mean[:, None, None]) / self.std[:, None, None]
        H0, W0 = min(H - y0, s), min(W - x0, s)  # the crop's part inside the image
        img[:, H0:, :] = 0.0  # padding is the mean (0 after normalisation), as the detection collate pads
        img[:, :, W0:] = 0.0
        t = torch.from_numpy
        return {"image": t(np.ascontiguousarray(img)), "semantic": t(out["semantic"].astype(np.int64)),
                "masks": t(out["masks"].astype(np.uint8)), "mask_labels": t(out["mask_labels"]),
                "boxes": t(out["boxes"].astype(np.float32)), "labels": t(out["labels"]),
                "difficult": t(out["difficult"]), "name": raw.name, "path": raw.path}


def collate_multitask(batch: Sequence[dict]) -> dict[str, Any]:
    """``{"image" (B, C, S, S), "semantic" (B, S, S), "targets": [{"boxes", "labels", "masks", "mask_labels",
    "image_size"}], "names"}`` (every crop has the dataset's ``img_size``)."""
    return {"image": torch.stack([b["image"] for b in batch]), "semantic": torch.stack([b["semantic"] for b in batch]),
            "targets": [{k: b[k] for k in ("boxes", "labels", "masks", "mask_labels")}
                        | {"image_size": tuple(b["image"].shape[-2:])} for b in batch],
            "names": [b["name"] for b in batch]}


def dataset_batch_sizes(sizes: dict[str, int], batch_size: int, mode: str = "avg") -> dict[str, int]:
    """Per-dataset batch sizes of one step (MTP's ``batch_mode``): ``avg`` splits ``batch_size`` equally,
    ``ratio`` in proportion to the dataset sizes (floored, as MTP does; at least 1 each)."""
    if mode not in ("avg", "ratio"):
        raise ValueError(f"batch_mode must be avg or ratio, got {mode!r}")
    if not sizes:
        raise ValueError("no datasets")
    total = sum(sizes.values())
    if mode == "avg":
        return {k: max(1, int(batch_size // len(sizes))) for k in sizes}
    return {k: max(1, int(batch_size * n / max(total, 1))) for k, n in sizes.items()}

