"""Rotated-detection datasets: DOTA-format folders (full images or ``dota split`` patches), DIOR-R, HRSC2016.

Each item is ``{"image": (C, H, W) float32 raw pixels, "boxes": (N, 5) le90 (cx, cy, w, h, a) px,
"labels": (N,) int64, "difficult": (N,) int64, "name": str, "path": str}``; transforms
(:mod:`rsvision.data.det_transforms`) then normalise. :func:`collate_detection` pads a batch to a
multiple of 32 and returns ``(images (B, C, H, W), targets list[dict], metas list[dict])`` (the
model's input contract). Annotation parsing is the DOTA toolchain's (:mod:`rsvision.data.dota`);
polygon -> le90 conversion is ``rsvision.ops.poly2obb``.

Why a flag for images without objects: MMRotate drops them for training (``filter_empty_gt``),
but evaluation must see every image, and hard-negative patches help on background-heavy scenes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rsvision.data.raster import is_image_file, read_image
from rsvision.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["DetectionDataset", "collate_detection", "pad_to_multiple", "find_ann_dir", "MIN_BOX_SIZE"]

MIN_BOX_SIZE = 2.0  # boxes thinner than this (px) are dropped, as MMRotate's poly2obb_np does


def find_ann_dir(root: str | Path) -> Path | None:
    """``annfiles/`` (``dota split`` output) or ``labelTxt/`` under ``root``, whichever exists."""
    root = Path(root)
    for name in ("annfiles", "labelTxt"):
        if (root / name).is_dir():
            return root / name
    return None


def _read_ann(path: Path, fmt: str, classes: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(polys (N, 8) float64, class names, difficult (N,)) through the DOTA toolchain readers."""
    if fmt == "dota":
        from rsvision.data.dota.labels import read_label_txt

        ann = read_label_txt(path, on_error="skip")  # classes filtered by the caller, silently
    elif fmt == "dior":
        from rsvision.data.dota.dior import read_dior_xml

        ann = read_dior_xml(path, on_error="skip")
    elif fmt == "hrsc":
        from rsvision.data.dota.hrsc import read_hrsc_xml

        ann = read_hrsc_xml(path, on_error="skip")
    else:
        raise DataError(f"unknown annotation format {fmt!r} (dota, dior, hrsc)", path=path)
    polys = np.asarray(ann.polys, dtype=np.float64).reshape(-1, 8)
    return polys, list(ann.classes), np.asarray(ann.difficult, dtype=np.int64).reshape(-1)


class DetectionDataset(Dataset):
    """Images of a folder with DOTA labelTxt / DIOR-R xml / HRSC2016 xml annotations.

    Args:
        img_dir: image folder (``images/`` of a DOTA split, ``JPEGImages-trainval/`` ...).
        ann_dir: annotation folder; ``None`` for an unlabelled folder (prediction).
        classes: class names; the label of an object is the index of its class here. Objects of
            other classes are skipped (the DOTA reader warns with file:line).
        fmt: ``"dota"`` (``<stem>.txt``), ``"dior"`` or ``"hrsc"`` (``<stem>.xml``).
        transforms: callable on the sample dict (see :mod:`rsvision.data.det_transforms`).
        keep_empty: keep images without (valid) objects; default drops them (training).
        bands: 0-based band indices to read (None: all).
        names: restrict to these image stems (split files).
    """

    def __init__(self, img_dir: str | Path, ann_dir: str | Path | None, classes: Sequence[str], fmt: str = "dota",
                 transforms: Callable[[dict], dict] | None = None, keep_empty: bool = False,
                 bands: Sequence[int] | None = None, names: Sequence[str] | None = None):
        self.img_dir = Path(img_dir)
        self.ann_dir = Path(ann_dir) if ann_dir is not None else None
        self.classes = list(classes)
        self.fmt = fmt
        self.transforms = transforms
        self.bands = list(bands) if bands is not None else None
        if not self.img_dir.is_dir():
            raise DataError("image folder does not exist", path=self.img_dir)
        if self.ann_dir is not None and not self.ann_dir.is_dir():
            raise DataError("annotation folder does not exist", path=self.ann_dir)
        files = sorted(p for p in self.img_dir.iterdir() if is_image_file(p))
        if names is not None:
            wanted = set(names)
            files = [p for p in files if p.stem in wanted]
        ext = ".txt" if fmt == "dota" else ".xml"
        idx = {c: i for i, c in enumerate(self.classes)}
        self.items: list[tuple[Path, np.ndarray, np.ndarray, np.ndarray]] = []
        dropped = 0
        for p in files:
            boxes = np.zeros((0, 5), np.float32)
            labels = np.zeros((0,), np.int64)
            diff = np.zeros((0,), np.int64)
            if self.ann_dir is not None:
                ann = self.ann_dir / (p.stem + ext)
                if not ann.is_file():
                    log.warning("%s: no annotation file %s, treated as empty", p, ann.name)
                else:
                    polys, names_, diff = _read_ann(ann, fmt, self.classes)
                    keep = np.array([n in idx for n in names_], dtype=bool)
                    boxes, labels, diff = self._to_boxes(polys[keep], [n for n, k in zip(names_, keep) if k], diff[keep], idx)
            if len(boxes) == 0 and not keep_empty and self.ann_dir is not None:
                dropped += 1
                continue
            self.items.append((p, boxes, labels, diff))
        if dropped:
            log.info("%s: dropped %d images without objects (keep_empty=False)", self.img_dir, dropped)
        if not self.items:
            raise DataError("no usable images (with objects, unless keep_empty)", path=self.img_dir)

    @staticmethod
    def _to_boxes(polys: np.ndarray, names: list[str], diff: np.ndarray, idx: dict[str, int]):
        from rsvision.ops import poly2obb

        if len(polys) == 0:
            return np.zeros((0, 5), np.float32), np.zeros((0,), np.int64), np.zeros((0,), np.int64)
        obb = poly2obb(torch.as_tensor(polys, dtype=torch.float64), "le90").numpy()
        ok = np.isfinite(obb).all(1) & (obb[:, 2] >= MIN_BOX_SIZE) & (obb[:, 3] >= MIN_BOX_SIZE)
        labels = np.array([idx[n] for n in names], dtype=np.int64)
        return obb[ok].astype(np.float32), labels[ok], diff[ok]

    def __len__(self) -> int:
        return len(self.items)

    def num_objects(self) -> np.ndarray:
        """Objects per class over the dataset (before augmentation)."""
        counts = np.zeros(len(self.classes), np.int64)
        for _, _, labels, _ in self.items:
            np.add.at(counts, labels, 1)
        return counts

    def __getitem__(self, i: int) -> dict:
        path, boxes, labels, diff = self.items[i]
        img = read_image(path, self.bands)
        if self.bands is None and img.shape[0] == 4 and img.dtype == np.uint8 and path.suffix.lower() == ".png":
            img = img[:3]  # RGBA PNG: alpha is not a band
        sample = {
            "image": torch.from_numpy(img.astype(np.float32)),
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "difficult": torch.from_numpy(diff.copy()),
            "name": path.stem,
            "path": str(path),
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


def pad_to_multiple(images: Sequence[torch.Tensor], multiple: int = 32, value: float = 0.0) -> torch.Tensor:
    """Stack ``(C, H_i, W_i)`` images into ``(B, C, H, W)``, padded bottom/right to a multiple of ``multiple``."""
    H = max(int(im.shape[-2]) for im in images)
    W = max(int(im.shape[-1]) for im in images)
    H, W = -(-H // multiple) * multiple, -(-W // multiple) * multiple
    return torch.stack([F.pad(im, (0, W - im.shape[-1], 0, H - im.shape[-2]), value=value) for im in images])


def collate_detection(batch: Sequence[dict], multiple: int = 32):
    """Batch samples: padded images, per-image ``{"boxes", "labels"}`` targets and metadata."""
    images = pad_to_multiple([b["image"] for b in batch], multiple)
    targets = [{"boxes": b["boxes"].float(), "labels": b["labels"].long(), "image_size": tuple(b["image"].shape[-2:])}
               for b in batch]
    metas = [{k: v for k, v in b.items() if k not in ("image", "boxes", "labels")}
             | {"shape": tuple(b["image"].shape[-2:])} for b in batch]
    return images, targets, metas
