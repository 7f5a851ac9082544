"""Change-detection data: bi-temporal folders and labelled scenes, as ``(2, C, H, W)`` pairs.

Layouts:

- LEVIR-CD / WHU-CD / DSIFN: ``root/A/<name>``, ``root/B/<name>``, ``root/label/<name>`` with
  0 / 255 (or 0 / 1) masks; A, B and label files share a stem, any raster format / band count.
- A *scene*: two co-registered rasters (GeoTIFF, ENVI, ...) plus either a dense label raster or
  sparse reference samples, e.g. the Taizhou Landsat pair: ``change.bmp`` / ``unchanged.bmp``
  mark labelled changed / unchanged pixels; every other pixel is ``ignore_index``.

Labels are int64 ``(H, W)``: 0 unchanged, 1 changed, ``ignore_index`` unlabelled.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rsvision.data.raster import IMAGE_EXTENSIONS, read_image
from rsvision.data.samplers import split_key
from rsvision.data.segmentation import (
    CropDataModule, as_list, augment_flips, crop_rng, random_crop, read_mask, split_files,
)
from rsvision.errors import ConfigError, DataError

__all__ = [
    "CHANGE_CLASSES", "ChangeItem", "find_change_triplets", "find_sparse_scene", "find_change_items",
    "read_binary_label", "sparse_label", "split_label", "ChangeDataset", "ChangeDataConfig", "ChangeDataModule",
]

CHANGE_CLASSES = ["unchanged", "changed"]
_SKIP_EXT = {".hdr", ".aux", ".xml", ".txt", ".md", ".json", ".ovr", ".prj", ".tfw", ".wld"}


@dataclass
class ChangeItem:
    """One bi-temporal sample: two image paths and a label (path or ready ``(H, W)`` array)."""

    a: Path
    b: Path
    label: Path | np.ndarray | None
    name: str = ""


def read_binary_label(path: str | Path) -> np.ndarray:
    """0 / 255 (or 0 / 1) change mask -> ``(H, W)`` int64 in {0, 1}."""
    raw = read_mask(path)
    if raw.ndim == 3:
        raw = raw.max(0)  # RGB-saved binary masks
    return (raw > 0).astype(np.int64)


def sparse_label(changed: str | Path | np.ndarray, unchanged: str | Path | np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Sparse reference samples -> label: 1 where ``changed`` > 0, 0 where ``unchanged`` > 0, else ignore."""
    c = read_binary_label(changed) if not isinstance(changed, np.ndarray) else (changed > 0)
    u = read_binary_label(unchanged) if not isinstance(unchanged, np.ndarray) else (unchanged > 0)
    if c.shape != u.shape:
        raise DataError(f"change / unchanged sample masks differ in size: {c.shape} vs {u.shape}",
                        path=changed if not isinstance(changed, np.ndarray) else None)
    lab = np.full(c.shape, ignore_index, np.int64)
    lab[u > 0] = 0
    lab[c > 0] = 1  # overlaps (none in Taizhou) count as change
    return lab


def split_label(label: np.ndarray, val_fraction: float, axis: int = 1, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Spatial hold-out of one scene: train labels before, validation labels after a cut along ``axis``.

    Cutting a scene in two blocks (not random pixels) keeps neighbouring, correlated pixels on one
    side, so validation measures generalisation rather than interpolation.
    """
    n = label.shape[axis]
    cut = int(round(n * (1 - val_fraction)))
    train, val = label.copy(), label.copy()
    sl_val = [slice(None)] * 2
    sl_val[axis] = slice(cut, None)
    sl_tr = [slice(None)] * 2
    sl_tr[axis] = slice(0, cut)
    train[tuple(sl_val)] = ignore_index
    val[tuple(sl_tr)] = ignore_index
    return train, val


def _files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS + (".img",)}


def find_change_triplets(root: str | Path, a: str = "A", b: str = "B", label: str | None = "label") -> list[ChangeItem]:
    """LEVIR-CD style ``A/ B/ label/`` folders -> items sorted by name (label optional for predict)."""
    root = Path(root)
    dirs = {k: root / v for k, v in (("A", a), ("B", b), ("label", label)) if v is not None}
    for d in dirs.values():
        if not d.is_dir():
            raise DataError(f"expected folder {d.name!r} (layout: {a}/, {b}/, {label}/)", path=d)
    fa, fb = _files(dirs["A"]), _files(dirs["B"])
    fl = _files(dirs["label"]) if "label" in dirs else {}
    if not fa:
        raise DataError("no image files", path=dirs["A"])
    problems = [n for n in fa if n not in fb or ("label" in dirs and n not in fl)]
    if problems:
        raise DataError(f"{len(problems)} pair(s) lack a B image or a label: {problems[:5]}", path=root)
    return [ChangeItem(fa[n], fb[n], fl.get(n), n) for n in fa]


def find_sparse_scene(root: str | Path, changed: str = "change.bmp", unchanged: str = "unchanged.bmp",
                      t1: str | None = None, t2: str | None = None, ignore_index: int = 255) -> ChangeItem:
    """A folder with two rasters and sparse ``change`` / ``unchanged`` sample masks (Taizhou layout).

    ``t1`` / ``t2`` name the two dates' files; by default the two remaining rasters in name order
    (ENVI data files without an extension are found through their ``.hdr`` / ``.HDR`` header).
    """
    root = Path(root)
    cp, up = root / changed, root / unchanged
    for p in (cp, up):
        if not p.is_file():
            raise DataError("missing sparse reference mask", path=p)
    if t1 is None or t2 is None:
        cands = sorted(p for p in root.iterdir() if p.is_file() and p not in (cp, up)
                       and p.suffix.lower() not in _SKIP_EXT
                       and (p.suffix.lower() in IMAGE_EXTENSIONS + (".img",) or p.with_suffix(".hdr").exists()
                            or p.with_name(p.name + ".HDR").exists() or p.with_name(p.name + ".hdr").exists()))
        if len(cands) != 2:
            raise DataError(f"expected exactly two image rasters beside {changed}, found {[c.name for c in cands]}; "
                            "name them with t1 / t2", path=root)
        t1p, t2p = cands
    else:
        t1p, t2p = root / t1, root / t2
    return ChangeItem(t1p, t2p, sparse_label(cp, up, ignore_index), root.name)


def find_change_items(root: str | Path, **kwargs: Any) -> list[ChangeItem]:
    """Detect the layout of ``root``: ``A/ B/ label/`` folders or a sparse-sample scene."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("change-detection data folder not found", path=root)
    if (root / "A").is_dir():
        return find_change_triplets(root, **{k: v for k, v in kwargs.items() if k in ("a", "b", "label")})
    if (root / kwargs.get("changed", "change.bmp")).is_file():
        return [find_sparse_scene(root, **{k: v for k, v in kwargs.items()
                                           if k in ("changed", "unchanged", "t1", "t2", "ignore_index")})]
    raise DataError("unknown change-detection layout: expected A/ B/ label/ folders or change.bmp / unchanged.bmp", path=root)


class ChangeDataset(Dataset):
    """``{"image": float32 (2, C, h, w), "mask": int64 (h, w), "path": str}`` per item.

    ``crop_size`` takes random crops (``samples_per_image`` per item and epoch: one scene can give a
    whole epoch of crops); ``augment`` adds flips / rotations and swaps the dates at random (change
    is symmetric) and an independent per-date, per-band gain of up to ``jitter`` (illumination
    differences are not change), all drawn from :func:`~rsvision.data.segmentation.crop_rng` (keyed
    by ``(seed, epoch, index)`` for the training sampler's keys). Without ``crop_size`` items are
    returned whole.
    """

    def __init__(self, items: Sequence[ChangeItem], crop_size: int | None = None, augment: bool = False,
                 bands: Sequence[int] | None = None, ignore_index: int = 255, cache: bool = True,
                 samples_per_image: int = 1, seed: int = 0, jitter: float = 0.1):
        self.items = list(items)
        self.jitter = float(jitter)
        if not self.items:
            raise DataError("change-detection dataset is empty")
        self.crop_size, self.augment = crop_size, augment
        self.bands = list(bands) if bands is not None else None
        self.ignore_index = ignore_index
        self.cache = cache
        self.samples_per_image = max(1, int(samples_per_image)) if crop_size else 1
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items) * self.samples_per_image

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        it = self.items[i]
        a, b = read_image(it.a, self.bands), read_image(it.b, self.bands)
        if a.shape != b.shape:
            raise DataError(f"dates differ in shape: {a.shape} ({it.a.name}) vs {b.shape}", path=it.b)
        if it.label is None:
            lab = np.full(a.shape[-2:], self.ignore_index, np.int64)
        elif isinstance(it.label, np.ndarray):
            lab = it.label
        else:
            lab = read_binary_label(it.label)
        if lab.shape != a.shape[-2:]:
            raise DataError(f"label is {lab.shape} but the images are {a.shape[-2:]}",
                            path=it.label if isinstance(it.label, Path) else it.a)
        pair = np.stack([a, b], 0)
        if self.cache:
            self._cache[i] = (pair, lab)
        return pair, lab

    def __getitem__(self, key) -> dict[str, Any]:
        idx, epoch = split_key(key)
        i = idx % len(self.items)
        pair, lab = self.load(i)
        if self.crop_size or self.augment:
            rng = crop_rng(self.seed, idx, epoch, self.augment)  # every draw below: one per-sample stream
            if self.crop_size:
                pair, lab = random_crop([pair, lab], self.crop_size, rng, [0, self.ignore_index])
            if self.augment:
                pair, lab = augment_flips([pair, lab], rng)
                if rng.random() < 0.5:
                    pair = pair[::-1]
                if self.jitter > 0:  # independent per-date gain: illumination differences are not change
                    gain = 1 + rng.uniform(-self.jitter, self.jitter, (2, pair.shape[1], 1, 1))
                    pair = pair.astype(np.float32) * gain.astype(np.float32)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(pair, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(lab, dtype=np.int64)),
            "path": str(self.items[i].a),
        }


# --- configuration and the datamodule ----------------------------------------------------------
@dataclass
class ChangeDataConfig:
    """``data:`` section. ``root`` / ``val_root``: folders (or lists) with ``A/ B/ label/`` or a sparse scene.

    Without ``val_root``, pairs are split by file with ``val_fraction``; a single scene (Taizhou) is
    split spatially: the last ``val_fraction`` of its columns (``split_axis: 1``) or rows validate.
    """

    root: Any = None
    val_root: Any = None
    ignore_index: int = 255
    img_size: int = 256
    batch_size: int = 8
    val_fraction: float = 0.25
    split_axis: int = 1
    samples_per_image: int = 1
    bands: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    num_workers: int = 0
    a: str = "A"
    b: str = "B"
    label: str = "label"
    changed: str = "change.bmp"
    unchanged: str = "unchanged.bmp"


class ChangeDataModule(CropDataModule):
    """Random augmented crops of training pairs; whole validation pairs."""

    def __init__(self, cfg: ChangeDataConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.train_items, self.val_items = self._split()

    def _items(self, roots) -> list[ChangeItem]:
        c = self.cfg
        kw = dict(a=c.a, b=c.b, label=c.label, changed=c.changed, unchanged=c.unchanged, ignore_index=c.ignore_index)
        return [it for r in as_list(roots) for it in find_change_items(r, **kw)]

    def _split(self) -> tuple[list, list]:
        c = self.cfg
        if not as_list(c.root):
            raise ConfigError("no training data: set data.root (--data DIR)")
        if c.val_root:
            return self._items(c.root), self._items(c.val_root)
        items = self._items(c.root)
        scenes = [it for it in items if isinstance(it.label, np.ndarray)]
        if len(items) == 1 and scenes:  # one labelled scene: spatial hold-out
            tr, va = split_label(scenes[0].label, c.val_fraction, c.split_axis, c.ignore_index)
            it = scenes[0]
            return [ChangeItem(it.a, it.b, tr, it.name)], [ChangeItem(it.a, it.b, va, it.name)]
        return split_files(items, c.val_fraction, self.seed)

    def stat_images(self):
        return [p for it in self.train_items[:16] for p in (it.a, it.b)]  # both dates

    def split_record(self) -> dict:
        """What ``train`` writes to ``splits.json`` (items keyed by their date-A file)."""
        from rsvision.data.splits import split_record

        c = self.cfg
        spatial = len(self.train_items) == 1 and isinstance(self.train_items[0].label, np.ndarray)
        extra = dict(axis=c.split_axis, val_fraction=c.val_fraction) if spatial else {}
        return split_record([it.a for it in self.train_items], [it.a for it in self.val_items],
                            "spatial" if spatial else "files", **extra)

    def setup(self, stage: str | None = None) -> None:
        c = self.cfg
        self.train_ds = ChangeDataset(self.train_items, c.img_size, True, c.bands, c.ignore_index,
                                      samples_per_image=c.samples_per_image, seed=self.seed)
        self.val_ds = ChangeDataset(self.val_items, None, False, c.bands, c.ignore_index)
