"""Readers that turn dataset folders into multi-task samples (:class:`rsvision.data.multitask.RawSample`).

* ``dota`` / ``dior``: DOTA labelTxt (``images/`` + ``labelTxt/`` or ``annfiles/``) and DIOR-R
  (``JPEGImages-trainval/`` + ``Annotations/Oriented Bounding Boxes/``) through the detection readers;
  all three label kinds come from the polygons (:func:`rsvision.data.multitask.polygons_to_labels`).
* ``samrs``: SAMRS as MTP trains on it (SOTA / SIOR / FAST): images, grey semantic PNGs (0 =
  background, ``k + 1`` = class ``k``), a COCO instance JSON (polygon or RLE segmentations; category
  names give the classes), and rotated boxes as DOTA labelTxt (SOTA, FAST) or DIOR-R xml (SIOR).
* ``isaid``: ``images/`` + RGB semantic ``masks/`` (iSAID's ``*_instance_color_RGB.png``). The shared
  copy has no instance ids (``*_instance_id_RGB.png`` was not copied), so instances are the connected
  regions of each class (touching objects of one class merge) and boxes their minimum rotated
  rectangles: an approximation of iSAID's instances, exact for isolated objects.

:func:`open_reader` builds one from a config dict (``{"format", "root", ...}``);
:class:`MultiTaskDataModule` zips one loader per dataset, as MTP trains.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np

from rsvision.data.multitask import (
    IGNORE_INDEX, MultiTaskDataset, RawSample, collate_multitask, dataset_batch_sizes, polygon_to_mask,
)
from rsvision.data.raster import is_image_file, read_image
from rsvision.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["PolygonReader", "SAMRSReader", "ISAIDReader", "open_reader", "detect_format", "FORMATS",
           "MultiTaskDataModule"]


def _rgb(img: np.ndarray, path: Path) -> np.ndarray:
    if img.shape[0] == 4 and img.dtype == np.uint8 and path.suffix.lower() == ".png":
        return img[:3]  # RGBA PNG: alpha is not a band (as the detection dataset reads it)
    return img


def _index(names: Sequence[str], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels of the names in ``classes``, bool mask of the names that are in it)."""
    idx = {c: i for i, c in enumerate(classes)}
    keep = np.array([n in idx for n in names], bool)
    return np.array([idx[n] for n in names if n in idx], np.int64), keep


def _images(folder: Path, names: Sequence[str] | None = None) -> list[Path]:
    if not folder.is_dir():
        raise DataError("image folder does not exist", path=folder)
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if names is not None:
        wanted = set(names)
        files = [p for p in files if p.stem in wanted]
    if not files:
        raise DataError("no images", path=folder)
    return files


class PolygonReader:
    """DOTA-format (``fmt="dota"``) or DIOR-R (``fmt="dior"``) folder as multi-task data.

    ``classes``: object classes (default: DOTA-v1.0 / DIOR-R); objects of other classes are skipped.
    """

    def __init__(self, root: str | Path, fmt: str = "dota", classes: Sequence[str] | None = None,
                 names: Sequence[str] | None = None):
        from rsvision.data.detection import _dirs
        from rsvision.data.dota.labels import class_names

        if fmt not in ("dota", "dior"):
            raise ConfigError(f"polygon reader format must be dota or dior, got {fmt!r}")
        self.root, self.fmt = Path(root), fmt
        if not self.root.is_dir():
            raise DataError("dataset folder does not exist", path=self.root)
        self.img_dir, self.ann_dir = _dirs(self.root, fmt)
        if not self.ann_dir.is_dir():
            raise DataError(f"no annotation folder ({self.ann_dir.name}) for format {fmt!r}", path=self.root)
        self.classes = list(classes or class_names("dota1.0" if fmt == "dota" else "dior"))
        self.files = _images(self.img_dir, names)
        self.ext = ".txt" if fmt == "dota" else ".xml"

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> RawSample:
        from rsvision.data.detection import _read_ann

        path = self.files[i]
        ann = self.ann_dir / (path.stem + self.ext)
        polys, names, diff = (_read_ann(ann, self.fmt, self.classes) if ann.is_file()
                              else (np.zeros((0, 8)), [], np.zeros(0, np.int64)))
        labels, keep = _index(names, self.classes)
        return RawSample(_rgb(read_image(path), path), polys[keep], labels, diff[keep], "polys",
                         name=path.stem, path=str(path))


class SAMRSReader:
    """A SAMRS subset (see the module docstring); paths are relative to ``root`` unless absolute.

    ``classes``: object classes in label order (default: the JSON's categories in id order; a SAMRS
    grey mask value ``k + 1`` is class ``k`` of this list). ``rbox_format``: ``dota`` (labelTxt) or ``dior``.
    """

    def __init__(self, root: str | Path, ann_file: str, img_dir: str = "images", seg_dir: str = "segs",
                 rbox_dir: str | None = "rbbtxts", rbox_format: str = "dota", classes: Sequence[str] | None = None,
                 names: Sequence[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError("dataset folder does not exist", path=self.root)
        self.ann_file = self._at(ann_file)
        try:
            coco = json.loads(self.ann_file.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the COCO instance file ({exc})", path=self.ann_file) from exc
        if not isinstance(coco, dict) or "images" not in coco or "categories" not in coco:
            raise DataError("not a COCO instance file (no images / categories)", path=self.ann_file)
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        self.classes = list(classes or [c["name"] for c in cats])
        cat_label = {c["id"]: self.classes.index(c["name"]) for c in cats if c["name"] in self.classes}
        self.img_dir, self.seg_dir = self._at(img_dir), self._at(seg_dir)
        self.rbox_dir = self._at(rbox_dir) if rbox_dir else None
        if rbox_format not in ("dota", "dior"):
            raise ConfigError(f"rbox_format must be dota or dior, got {rbox_format!r}")
        self.rbox_format = rbox_format
        anns: dict[int, list] = {}
        for a in coco.get("annotations", []):
            if a.get("category_id") in cat_label and not a.get("iscrowd", 0):
                anns.setdefault(a["image_id"], []).append((cat_label[a["category_id"]], a.get("segmentation")))
        wanted = set(names) if names is not None else None
        self.items = [(im, anns.get(im["id"], [])) for im in sorted(coco["images"], key=lambda m: m["file_name"])
                      if wanted is None or Path(im["file_name"]).stem in wanted]
        if not self.items:
            raise DataError("no images listed", path=self.ann_file)

    def _at(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.root / q

    def __len__(self) -> int:
        return len(self.items)

    def _mask(self, seg: Any, h: int, w: int) -> np.ndarray:
        if isinstance(seg, list):  # polygons (possibly several parts)
            m = np.zeros((h, w), bool)
            for part in seg:
                m |= polygon_to_mask(part, h, w)
            return m
        if isinstance(seg, dict) and "counts" in seg:
            try:
                from pycocotools import mask as mask_utils
            except ImportError as exc:
                raise ImportError("RLE instance masks need pycocotools (pip install 'rsvision[instance]')") from exc
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            return mask_utils.decode(rle).astype(bool)
        raise DataError(f"unsupported segmentation {type(seg).__name__}", path=self.ann_file)

    def load(self, i: int) -> RawSample:
        from rsvision.data.segmentation import read_mask

        im, anns = self.items[i]
        path = self.img_dir / im["file_name"]
        img = _rgb(read_image(path), path)
        h, w = img.shape[-2:]
        stem = Path(im["file_name"]).stem
        seg_path = next((p for p in (self.seg_dir / f"{stem}.png", self.seg_dir / f"{stem}.tif") if p.is_file()), None)
        if seg_path is None:
            raise DataError(f"no semantic mask for {im['file_name']}", path=self.seg_dir)
        sem = read_mask(seg_path)[0].astype(np.int64)
        bad = (sem != IGNORE_INDEX) & (sem > len(self.classes))
        if bad.any():
            raise DataError(f"semantic values {np.unique(sem[bad])[:5].tolist()} exceed the "
                            f"{len(self.classes)} classes (+ background 0)", path=seg_path)
        masks = np.stack([self._mask(s, h, w) for _, s in anns]) if anns else np.zeros((0, h, w), bool)
        mask_labels = np.array([c for c, _ in anns], np.int64)
        polys, labels, diff = np.zeros((0, 8)), np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self.rbox_dir is not None:
            from rsvision.data.detection import _read_ann

            ann = self.rbox_dir / (stem + (".txt" if self.rbox_format == "dota" else ".xml"))
            if ann.is_file():
                polys, names, diff = _read_ann(ann, self.rbox_format, self.classes)
                labels, keep = _index(names, self.classes)
                polys, diff = polys[keep], diff[keep]
        return RawSample(img, polys, labels, diff, "masks", masks, mask_labels, sem, stem, str(path))


class ISAIDReader:
    """iSAID ``images/`` + RGB ``masks/`` (see the module docstring: instances are derived regions)."""

    def __init__(self, root: str | Path, names: Sequence[str] | None = None, classes: Sequence[str] | None = None):
        from rsvision.data.segmentation import find_pairs, get_encoding

        self.root = Path(root)
        self.encoding = get_encoding("isaid")
        if classes is not None and list(classes) != self.encoding.classes[1:]:
            raise ConfigError("iSAID's classes are fixed by its colour table; leave data.classes unset")
        self.classes = list(self.encoding.classes[1:])  # semantic value k + 1 = class k, 0 = background
        pairs = find_pairs(self.root)
        if names is not None:
            pairs = [p for p in pairs if p[0].stem in set(names)]
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> RawSample:
        from rsvision.data.segmentation import read_mask

        ip, mp = self.pairs[i]
        img = _rgb(read_image(ip), ip)
        sem = self.encoding.decode(read_mask(mp), mp)
        if sem.shape != img.shape[-2:]:
            raise DataError(f"mask is {sem.shape[::-1]} but the image {img.shape[:0:-1]} (W x H)", path=mp)
        return RawSample(img, instances="semantic", semantic=sem, name=ip.stem, path=str(ip))


FORMATS = ("dota", "dior", "samrs", "isaid")


def open_reader(spec: dict[str, Any]) -> Any:
    """A reader from a ``data.datasets`` entry: ``{"format", "root", "classes"?, "names"?, ...format options}``."""
    spec = dict(spec)
    fmt = spec.pop("format", "dota")
    spec.pop("name", None)
    root = spec.pop("root", None)
    if root is None:
        raise ConfigError(f"a {fmt} dataset needs root")
    try:
        if fmt in ("dota", "dior"):
            return PolygonReader(root, fmt, **spec)
        if fmt == "samrs":
            return SAMRSReader(root, **spec)
        if fmt == "isaid":
            return ISAIDReader(root, **spec)
    except TypeError as exc:
        raise ConfigError(f"bad options for a {fmt} dataset: {exc}") from exc
    raise ConfigError(f"unknown multi-task data format {fmt!r}; known: {', '.join(FORMATS)}")


def detect_format(folder: str | Path) -> dict[str, Any]:
    """The reader spec of a dataset folder, from its layout (for ``data.root`` holding several datasets)."""
    d = Path(folder)
    if (d / "labelTxt").is_dir() or (d / "annfiles").is_dir():
        return {"format": "dota", "root": str(d)}
    if (d / "Annotations" / "Oriented Bounding Boxes").is_dir():
        return {"format": "dior", "root": str(d)}
    if (d / "instances.json").is_file():
        return {"format": "samrs", "root": str(d), "ann_file": "instances.json"}
    if (d / "images").is_dir() and (d / "masks").is_dir():
        return {"format": "isaid", "root": str(d)}
    raise DataError("not a multi-task dataset folder (labelTxt/, Annotations/Oriented Bounding Boxes/, "
                    "instances.json or images/ + masks/)", path=d)


class MultiTaskDataModule(L.LightningDataModule):
    """MTP's loaders: one per dataset, zipped (each step takes one batch of every dataset; an epoch ends
    with the shortest), per-dataset batch sizes by :func:`dataset_batch_sizes`.

    ``datasets``: reader specs (:func:`rsvision.data.multitask_readers.open_reader`), each with a
    ``name`` (default: its folder's name) and optional ``repeat`` (crops per image per epoch; ``ratio``
    batch sizes count them). Each loader's order comes from a keyed
    :class:`~rsvision.data.samplers.SeededRandomSampler` of ``(seed, dataset index)``, so a resumed
    run sees the batches the uninterrupted one saw.
    """

    def __init__(self, datasets: Sequence[dict[str, Any]], img_size: int = 512, batch_size: int = 8,
                 batch_mode: str = "avg", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 iof_thr: float = 0.7, flip: bool = True, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if not datasets:
            raise ConfigError("data.datasets is empty: list the multi-task datasets (or give data.root)")
        self.specs = [dict(s) for s in datasets]
        names = [str(s.get("name") or Path(str(s.get("root", f"dataset{i}"))).name) for i, s in enumerate(self.specs)]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.datasets: names must be unique, got {names} (set name: for each)")
        self.names = names
        self.img_size, self.batch_size, self.batch_mode = int(img_size), int(batch_size), batch_mode
        self.mean, self.std, self.iof_thr, self.flip = mean, std, iof_thr, flip
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.train_sets: dict[str, MultiTaskDataset] = {}
        dataset_batch_sizes({"a": 1}, 1, batch_mode)  # a bad batch_mode fails here, before any reading

    def setup(self, stage: str | None = None) -> None:
        if self.train_sets:
            return
        for j, (name, spec) in enumerate(zip(self.names, self.specs)):
            spec = dict(spec)
            repeat = spec.pop("repeat", 1)
            self.train_sets[name] = MultiTaskDataset(open_reader(spec), self.img_size, self.mean, self.std, True,
                                                     self.seed, j, self.iof_thr, self.flip, repeat)
        self.batch_sizes = dataset_batch_sizes({n: len(d) for n, d in self.train_sets.items()}, self.batch_size,
                                               self.batch_mode)

    @property
    def classes(self) -> dict[str, list[str]]:
        self.setup()
        return {n: d.classes for n, d in self.train_sets.items()}

    def train_dataloader(self):
        from lightning.pytorch.utilities import CombinedLoader
        from torch.utils.data import DataLoader

        from rsvision.data.samplers import SeededRandomSampler, mix_seed

        self.setup()
        loaders = {n: DataLoader(d, batch_size=self.batch_sizes[n], collate_fn=collate_multitask,
                                 sampler=SeededRandomSampler(len(d), mix_seed(self.seed, j), keys=True),
                                 num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
                   for j, (n, d) in enumerate(self.train_sets.items())}
        return CombinedLoader(loaders, mode="min_size")
