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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import lightning as L
from torch.utils.data import DataLoader, Dataset

from rsvision.data.raster import is_image_file, read_image
from rsvision.data.samplers import SeededRandomSampler, seeded, split_key
from rsvision.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["DetectionDataset", "collate_detection", "pad_to_multiple", "find_ann_dir", "MIN_BOX_SIZE", "polys_to_boxes",
           "DetectDataConfig", "DetectionDataModule", "resolve_classes"]

MIN_BOX_SIZE = 2.0  # boxes thinner than this (px) are dropped, as MMRotate's poly2obb_np does


def polys_to_boxes(polys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 8)`` polygons -> ``(K, 5)`` float32 le90 boxes (``rsvision.ops.poly2obb``) and the ``(N,)``
    bool mask of the K kept: finite and at least ``MIN_BOX_SIZE`` on both sides."""
    from rsvision.ops import poly2obb

    polys = np.asarray(polys, np.float64).reshape(-1, 8)
    if len(polys) == 0:
        return np.zeros((0, 5), np.float32), np.zeros((0,), bool)
    obb = poly2obb(torch.as_tensor(polys, dtype=torch.float64), "le90").numpy()
    ok = np.isfinite(obb).all(1) & (obb[:, 2] >= MIN_BOX_SIZE) & (obb[:, 3] >= MIN_BOX_SIZE)
    return obb[ok].astype(np.float32), ok


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
        seed: keys the random transforms of a :class:`~rsvision.data.samplers.SampleKey` index:
            they then run inside :func:`~rsvision.data.samplers.seeded` ``(seed, epoch, index)``, so
            their draws depend on that key only (a plain index: the global streams, as drawn).
    """

    def __init__(self, img_dir: str | Path, ann_dir: str | Path | None, classes: Sequence[str], fmt: str = "dota",
                 transforms: Callable[[dict], dict] | None = None, keep_empty: bool = False,
                 bands: Sequence[int] | None = None, names: Sequence[str] | None = None, seed: int = 0):
        self.seed = int(seed)
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
        if len(polys) == 0:
            return np.zeros((0, 5), np.float32), np.zeros((0,), np.int64), np.zeros((0,), np.int64)
        boxes, ok = polys_to_boxes(polys)
        labels = np.array([idx[n] for n in names], dtype=np.int64)
        return boxes, labels[ok], diff[ok]

    def __len__(self) -> int:
        return len(self.items)

    def num_objects(self) -> np.ndarray:
        """Objects per class over the dataset (before augmentation)."""
        counts = np.zeros(len(self.classes), np.int64)
        for _, _, labels, _ in self.items:
            np.add.at(counts, labels, 1)
        return counts

    def __getitem__(self, key) -> dict:
        i, epoch = split_key(key)
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
            if epoch is None:
                sample = self.transforms(sample)
            else:
                with seeded(self.seed, 10, epoch, i):  # torch / numpy / python draws: of this key only
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


# --- configuration and the datamodule ----------------------------------------------------------
@dataclass
class DetectDataConfig:
    """The ``data:`` section. ``root`` holds ``train/`` and ``val/`` (each ``images/`` + ``annfiles/``
    or ``labelTxt/``), or give ``train_dir`` / ``val_dir`` explicitly."""

    root: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    format: str = "dota"  # dota | dior | hrsc
    classes: list[str] | None = None  # default: the dataset's class list (DOTA-v1.0 for "dota")
    bands: list[int] | None = None
    mean: list[float] | None = None  # None: ImageNet RGB in 0-255 units
    std: list[float] | None = None
    img_size: int = 1024
    batch_size: int = 2
    num_workers: int = 2
    keep_empty: bool = False
    rect_classes: list[str] = field(default_factory=lambda: ["storage-tank", "roundabout"])
    flip: bool = True
    rotate_p: float = 0.5
    val_split: float = 0.0  # >0: hold out this fraction of train when there is no val dir
    train_list: str | None = None  # text file of image stems (HRSC/DIOR ImageSets/*.txt); None: all images
    val_list: str | None = None


def resolve_classes(cfg: DetectDataConfig) -> list[str]:
    """The class list: explicit ``data.classes`` or the format's published list."""
    if cfg.classes:
        return list(cfg.classes)
    from rsvision.data.dota.labels import class_names

    return list(class_names({"dota": "dota1.0", "dior": "dior", "hrsc": "hrsc"}[cfg.format]))


def _read_list(path: str | None) -> list[str] | None:
    """Image stems, one per line (ImageSets files); None when no list is given."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError("image list file not found", path=p)
    return [Path(line.strip()).stem for line in p.read_text().splitlines() if line.strip()]


def _dirs(d: str | Path, fmt: str) -> tuple[Path, Path]:
    d = Path(d)
    if fmt == "dota":
        ann = find_ann_dir(d)
        return d / "images", (ann if ann is not None else d / "labelTxt")
    if fmt == "dior":
        return d / "JPEGImages-trainval", d / "Annotations" / "Oriented Bounding Boxes"
    return d / "AllImages", d / "Annotations"


class DetectionDataModule(L.LightningDataModule):
    """Train / val rotated-detection loaders with the published augmentations and pad-to-32 collate.

    ``seed`` (the run's ``trainer.seed``; None: the one ``lightning.seed_everything`` last set, else 0)
    orders the training samples per epoch and keys their flips / rotations per ``(epoch, image)``.
    """

    def __init__(self, cfg: DetectDataConfig, class_names: Sequence[str], seed: int | None = None):
        super().__init__()
        self.cfg = cfg
        self._seed = seed
        self.class_names = list(class_names)
        self.mean = cfg.mean or [123.675, 116.28, 103.53]
        self.std = cfg.std or [58.395, 57.12, 57.375]

    @property
    def seed(self) -> int:
        if self._seed is not None:
            return int(self._seed)
        import os

        return int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything(trainer.seed) in train()

    def _train_dir(self) -> Path:
        d = self.cfg.train_dir or (Path(self.cfg.root) / "train" if self.cfg.root else None)
        if d is None:
            raise ConfigError("data: need root (with train/) or train_dir")
        if not Path(d).exists() and self.cfg.root and Path(self.cfg.root).exists():
            return Path(self.cfg.root)
        return Path(d)

    def _val_dir(self) -> Path | None:
        d = self.cfg.val_dir or (Path(self.cfg.root) / "val" if self.cfg.root else None)
        return Path(d) if d is not None and Path(d).exists() else None

    def setup(self, stage: str | None = None) -> None:
        from rsvision.data import det_transforms as T

        c = self.cfg
        rect = [self.class_names.index(n) for n in c.rect_classes if n in self.class_names]
        tr = T.train_transforms(self.mean, self.std, rect, None, c.flip, c.rotate_p)
        ev = T.eval_transforms(self.mean, self.std)
        img, ann = _dirs(self._train_dir(), c.format)
        self.train_ds = DetectionDataset(img, ann, self.class_names, c.format, tr, c.keep_empty, c.bands,
                                         _read_list(c.train_list), self.seed)
        vd = self._val_dir()
        if vd is None and c.val_list:  # HRSC / DIOR: one image folder, split by ImageSets lists
            vd = self._train_dir()
        if vd is not None:
            vimg, vann = _dirs(vd, c.format)
            self.val_ds = DetectionDataset(vimg, vann, self.class_names, c.format, ev, True, c.bands,
                                           _read_list(c.val_list))
        elif c.val_split > 0:
            import numpy as np

            names = [p.stem for p, *_ in self.train_ds.items]
            rng = np.random.default_rng(0)
            n_val = max(1, int(round(len(names) * c.val_split)))
            val_names = set(rng.choice(names, n_val, replace=False).tolist())
            self.train_ds = DetectionDataset(img, ann, self.class_names, c.format, tr, c.keep_empty, c.bands,
                                             [n for n in names if n not in val_names], self.seed)
            self.val_ds = DetectionDataset(img, ann, self.class_names, c.format, ev, True, c.bands, sorted(val_names))
        else:
            self.val_ds = None

    def split_record(self) -> dict:
        """What ``train`` writes to ``splits.json``: the training / validation images (patches when the
        data is split into patches; ``detect eval --split`` matches full images by patch name prefix)."""
        from rsvision.data.splits import split_record

        if getattr(self, "train_ds", None) is None:
            self.setup("fit")
        return split_record([p for p, *_ in self.train_ds.items],
                            [p for p, *_ in self.val_ds.items] if self.val_ds is not None else [])

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        # training: order by (seed, epoch), keys (index, epoch) -> augmentations of that key only (resumable)
        sampler = SeededRandomSampler(len(ds), self.seed, keys=True) if shuffle else None
        return DataLoader(ds, batch_size=self.cfg.batch_size, sampler=sampler, num_workers=self.cfg.num_workers,
                          collate_fn=collate_detection, persistent_workers=self.cfg.num_workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, True)

    def val_dataloader(self):
        return self._loader(self.val_ds, False) if self.val_ds is not None else []
