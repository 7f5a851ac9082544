"""Scene-classification data: folder-per-class and CSV multi-label datasets, split files, datamodule.

* Folder-per-class (UC Merced, AID, NWPU-RESISC45, EuroSAT, RSSCN7): ``root/<class>/<image>``,
  any format :func:`rsvision.data.raster.read_image` reads (JPEG / PNG / TIFF / multi-band GeoTIFF).
* CSV multi-label (BigEarthNet style): ``path,labels`` with labels joined by ``;`` (or ``|``), or
  ``path,<class_1>,<class_2>,...`` with 0/1 columns; paths relative to the CSV's folder or ``root``.
* Splits: seeded, stratified train / val / test written once to a CSV split file
  (``split,path,label``) and read back on later runs, so every run and ``eval`` see the same test set.
* Normalisation: per-band mean / std given in the config, or computed once from the training split
  (they go into the checkpoint). Resizing follows :class:`rsvision.data.transforms.ResizePolicy`.
* Bad files: a corrupt / truncated image or a wrong band count raises ``DataError`` naming the file;
  with ``skip_bad`` it is dropped with a warning instead. With ``cache`` (default) every image is
  decoded (and resized) once at setup, so problems surface before training, never half way.
"""
from __future__ import annotations

import csv
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rsvision.data.raster import IMAGE_EXTENSIONS, compute_band_stats, normalize, prepare_pixels, read_image, value_scale
from rsvision.data.transforms import ResizePolicy, SceneTransform, resize
from rsvision.errors import BandMismatchError, ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = [
    "Sample", "ClassificationDataConfig", "scan_class_folders", "read_multilabel_csv", "stratified_split",
    "write_split_file", "read_split_file", "load_or_create_splits", "SceneDataset", "ClassificationDataModule",
    "SPLITS",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image and its target: a class index, or a tuple of class indices (multi-label)."""

    path: str
    target: int | tuple[int, ...]


@dataclass
class ClassificationDataConfig:
    """The ``data:`` section of a classification config."""

    root: str | None = None
    csv: str | None = None  # multi-label CSV; its paths are relative to `root` (default: the CSV's folder)
    multilabel: bool = False
    classes: list[str] | None = None  # default: sorted folder names / CSV columns
    # images (class folders / csv) | pairs, index, bigearthnet_v1, reben: S1 / S2 pairs (rsvision.data.multimodal,
    # multi-label; pairs: detected, index: a folder with index.csv; split_file then lists pair ids)
    format: str = "images"
    modalities: dict[str, list[str]] | None = None  # pairs: backbone modality -> bands (default S2 10 bands + S1)
    split_file: str | None = None  # read when it exists, else written (default: <run dir>/splits.csv)
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: int = 0
    img_size: int = 224
    resize: int | None = None  # whole image resized to this first (None: img_size), see ResizePolicy
    scale: list[float] | None = field(default_factory=lambda: [0.5, 1.0])  # random-resized-crop area
    eval_size: int | None = None  # val/test/predict: whole image resized to this (None: centre crop img_size)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    jitter: float = 0.0  # train: per-band gain / offset jitter (normalised units), see SceneTransform
    bands: list[int] | None = None  # 0-based band indices to read (None: all)
    mean: list[float] | None = None  # per band, in pixel units (None: computed on the train split)
    std: list[float] | None = None
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 0
    cache: bool = True
    skip_bad: bool = False

    def policy(self) -> ResizePolicy:
        return ResizePolicy(self.img_size, self.resize, tuple(self.scale) if self.scale else None,
                            eval_size=self.eval_size)


# --- indexing ---------------------------------------------------------------------------------------
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def scan_class_folders(root: str | Path, classes: Sequence[str] | None = None,
                       skip_bad: bool = False) -> tuple[list[Sample], list[str]]:
    """Index ``root/<class>/<image>``. Empty (or missing, when ``classes`` is given) class folders
    raise DataError, or are dropped with a warning under ``skip_bad``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", path=root)
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = list(classes) if classes else found
    if not names:
        raise DataError("no class folders (expected root/<class>/<image>)", path=root)
    samples: list[Sample] = []
    kept: list[str] = []
    for name in names:
        d = root / name
        files = _image_files(d) if d.is_dir() else []
        if not files:
            msg = "class folder is missing" if not d.is_dir() else "class folder has no images"
            if not skip_bad:
                raise DataError(msg, path=d)
            warnings.warn(f"{d}: {msg}; class skipped", stacklevel=2)
            continue
        idx = len(kept)
        kept.append(name)
        samples += [Sample(str(p), idx) for p in files]
    return samples, kept


def _split_labels(text: str) -> list[str]:
    for sep in (";", "|", ","):
        if sep in text:
            return [t.strip() for t in text.split(sep) if t.strip()]
    return [t for t in text.split() if t]


def read_multilabel_csv(path: str | Path, root: str | Path | None = None,
                        classes: Sequence[str] | None = None) -> tuple[list[Sample], list[str]]:
    """Read a multi-label CSV (see module docstring). Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("label CSV not found", path=path)
    base = Path(root) if root else path.parent
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError("empty label CSV", path=path)
    header = [h.strip() for h in rows[0]]
    if not header or header[0].lower() not in ("path", "image", "file", "filename"):
        raise DataError("first column must be 'path' (header line)", path=path, line=1)
    raw: list[tuple[str, list[str]]] = []
    if len(header) == 2 and header[1].lower() in ("labels", "label", "tags"):
        for n, r in enumerate(rows[1:], start=2):
            if not r or not r[0].strip():
                continue
            if len(r) < 2:
                raise DataError("expected path,labels", path=path, line=n)
            raw.append((r[0].strip(), _split_labels(",".join(r[1:]))))
        names = list(classes) if classes else sorted({lab for _, labs in raw for lab in labs})
    else:
        names = header[1:]
        for n, r in enumerate(rows[1:], start=2):
            if not r or not r[0].strip():
                continue
            if len(r) != len(header):
                raise DataError(f"expected {len(header)} columns, got {len(r)}", path=path, line=n)
            try:
                raw.append((r[0].strip(), [c for c, v in zip(names, r[1:]) if float(v) > 0.5]))
            except ValueError as exc:
                raise DataError(f"label columns must be 0/1 ({exc})", path=path, line=n) from exc
        if classes:
            names = list(classes)
    index = {c: i for i, c in enumerate(names)}
    samples = []
    for p, labs in raw:
        unknown = [lab for lab in labs if lab not in index]
        if unknown:
            raise DataError(f"unknown class(es) {unknown} for {p}", path=path)
        samples.append(Sample(str(base / p), tuple(sorted(index[lab] for lab in labs))))
    return samples, names


# --- splits -----------------------------------------------------------------------------------------
def stratified_split(targets: Sequence[int | tuple[int, ...]], fractions: Sequence[float] = (0.6, 0.2, 0.2),
                     seed: int = 0) -> list[str]:
    """Split name (``train``/``val``/``test``) per sample, stratified by class (multi-label: by the
    first label). Each class is shuffled with ``seed`` and cut by the rounded cumulative fractions."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ConfigError(f"split fractions must be three non-negative numbers, got {list(fractions)}")
    fr = np.asarray(fractions, dtype=float) / float(sum(fractions))
    keys = [t[0] if isinstance(t, tuple) and t else (-1 if isinstance(t, tuple) else t) for t in targets]
    out = [""] * len(keys)
    rng = np.random.default_rng(seed)
    for k in sorted(set(keys)):
        idx = np.flatnonzero(np.asarray(keys) == k)
        idx = idx[rng.permutation(len(idx))]
        cuts = np.round(np.cumsum(fr) * len(idx)).astype(int)
        for i, j in enumerate(idx):
            out[j] = SPLITS[int(np.searchsorted(cuts, i, side="right"))] if i < cuts[-1] else SPLITS[-1]
    return out


def _rel(path: str, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def write_split_file(path: str | Path, samples: Sequence[Sample], splits: Sequence[str], root: str | Path,
                     classes: Sequence[str]) -> Path:
    """Write ``split,path,label`` rows (paths relative to ``root``; labels joined by ``;``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label"])
        for s, sp in zip(samples, splits):
            t = s.target if isinstance(s.target, tuple) else (s.target,)
            w.writerow([sp, _rel(s.path, Path(root)), ";".join(classes[i] for i in t)])
    os.replace(tmp, path)  # atomic: several DDP ranks may write the same file
    return path


def read_split_file(path: str | Path) -> dict[str, str]:
    """``{relative path: split}`` from a split file; errors name the file and line."""
    path = Path(path)
    out: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["split", "path"]:
            raise DataError("not a split file (header must start with split,path)", path=path, line=1)
        for n, r in enumerate(reader, start=2):
            if not r:
                continue
            if r[0] not in SPLITS:
                raise DataError(f"unknown split {r[0]!r} (expected train, val or test)", path=path, line=n)
            out[r[1]] = r[0]
    return out


def load_or_create_splits(samples: Sequence[Sample], root: str | Path, split_file: str | Path,
                          classes: Sequence[str], fractions: Sequence[float] = (0.6, 0.2, 0.2),
                          seed: int = 0) -> dict[str, list[Sample]]:
    """Read ``split_file`` when it exists (files it lists that are gone raise DataError; files it
    does not list are ignored with a warning), otherwise split and write it."""
    split_file = Path(split_file)
    root = Path(root)
    if split_file.exists():
        table = read_split_file(split_file)
        by_rel = {_rel(s.path, root): s for s in samples}
        missing = [p for p in table if p not in by_rel]
        if missing:
            raise DataError(f"{len(missing)} listed image(s) not in the dataset, e.g. {missing[0]}", path=split_file)
        extra = len(by_rel) - len(table)
        if extra > 0:
            warnings.warn(f"{split_file}: {extra} dataset image(s) are not in the split file and are ignored",
                          stacklevel=2)
        out: dict[str, list[Sample]] = {k: [] for k in SPLITS}
        for rel, sp in table.items():
            out[sp].append(by_rel[rel])
        return out
    names = stratified_split([s.target for s in samples], fractions, seed)
    write_split_file(split_file, samples, names, root, classes)
    return {k: [s for s, n in zip(samples, names) if n == k] for k in SPLITS}


# --- dataset ----------------------------------------------------------------------------------------
class SceneDataset(Dataset):
    """Images -> ``{"image": (C, S, S) float, "label": long | float multi-hot, "index": int}``.

    Images are read, checked for band count, resized to the policy's base size (that is what
    ``cache`` keeps, as float16 in pixel units), normalised, then transformed.
    """

    def __init__(self, samples: Sequence[Sample], num_classes: int, transform: SceneTransform,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 bands: Sequence[int] | None = None, multilabel: bool = False, skip_bad: bool = False,
                 in_chans: int | None = None, train_dtype: str | None = None):
        self.samples = list(samples)
        self.train_dtype = train_dtype  # images of another dtype are rescaled to its range (value_scale)
        self.num_classes, self.transform = num_classes, transform
        self.mean, self.std = mean, std
        self.bands, self.multilabel, self.skip_bad = bands, multilabel, skip_bad
        self.in_chans = in_chans if in_chans is not None else (len(mean) if mean is not None else None)
        self._cache: list[torch.Tensor] | None = None
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> torch.Tensor:
        """Raw image ``i`` resized to the base size, float32 in pixel units (raises DataError)."""
        if self._cache is not None:
            return self._cache[i].float()
        s = self.samples[i]
        arr, valid = read_image(s.path, self.bands, with_mask=True)
        if self.in_chans is not None and arr.shape[0] != self.in_chans:
            raise BandMismatchError(f"image has {arr.shape[0]} bands, expected {self.in_chans}", path=s.path)
        if self.in_chans is None:
            self.in_chans = arr.shape[0]
        # Once the band means are known (eval / predict) nodata, NaN and inf pixels read as the means
        # (0 after normalisation) and an image without a usable pixel is bad; before (the training
        # statistics) NaN / inf make a training image bad, nodata values are taken as they are.
        known = self.mean is not None
        x, ok = prepare_pixels(arr, valid if known else None, self.mean,
                               value_scale(str(arr.dtype), self.train_dtype), s.path)
        if not ok.all():
            if not known:
                raise DataError(f"{int((~ok).sum())} NaN / inf pixels in a training image", path=s.path)
            warnings.warn(f"{s.path}: {int((~ok).sum())} nodata / NaN / inf pixels read as the band means",
                          stacklevel=2)
        return resize(torch.from_numpy(x), self.transform.policy.base_size)

    def cache(self) -> "SceneDataset":
        """Decode every image now; bad ones raise, or are dropped with a warning under ``skip_bad``."""
        imgs, keep = [], []
        for i, s in enumerate(self.samples):
            try:
                imgs.append(self.read(i).to(torch.float16))
                keep.append(s)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self.skipped.append(s.path)
                warnings.warn(f"skipping bad image: {exc}", stacklevel=2)
        self.samples, self._cache = keep, imgs
        if not self.samples:
            raise DataError("no readable images left in this split")
        return self

    def target(self, i: int) -> torch.Tensor:
        t = self.samples[i].target
        if self.multilabel:
            y = torch.zeros(self.num_classes)
            y[list(t if isinstance(t, tuple) else (t,))] = 1.0
            return y
        return torch.tensor(t if isinstance(t, int) else t[0], dtype=torch.long)

    def __getitem__(self, i: int) -> dict:
        try:
            img = self.read(i)
        except DataError as exc:
            if not self.skip_bad:
                raise
            self.skipped.append(self.samples[i].path)
            warnings.warn(f"skipping bad image: {exc}", stacklevel=2)
            return self[(i + 1) % len(self)]
        if self.mean is not None:
            img = normalize(img, self.mean, self.std, path=self.samples[i].path)
        return {"image": self.transform(img), "label": self.target(i), "index": i}


# --- datamodule -------------------------------------------------------------------------------------
class ClassificationDataModule(L.LightningDataModule):
    """Index + split + statistics + loaders for one classification dataset.

    Call :meth:`setup` before building the model: it fixes ``classes``, ``in_chans``, ``mean`` and
    ``std`` (which go into the checkpoint). ``run_dir`` is where the split file goes by default.
    """

    def __init__(self, cfg: ClassificationDataConfig, seed: int = 0, run_dir: str | Path | None = None):
        super().__init__()
        self.cfg, self.seed, self.run_dir = cfg, seed, run_dir
        self.classes: list[str] = []
        self.splits: dict[str, list[Sample]] = {}
        self.datasets: dict[str, SceneDataset] = {}
        self.mean: list[float] | None = list(cfg.mean) if cfg.mean else None
        self.std: list[float] | None = list(cfg.std) if cfg.std else None
        self.in_chans: int | None = None
        self._ready = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def split_file(self) -> Path:
        if self.cfg.split_file:
            return Path(self.cfg.split_file)
        return Path(self.run_dir or ".") / "splits.csv"

    def index(self) -> tuple[list[Sample], list[str], Path]:
        c = self.cfg
        if c.csv:
            root = Path(c.root) if c.root else Path(c.csv).parent
            samples, classes = read_multilabel_csv(c.csv, root, c.classes)
            return samples, classes, root
        if not c.root:
            raise ConfigError("data.root is not set (use --data DIR)")
        samples, classes = scan_class_folders(c.root, c.classes, c.skip_bad)
        return samples, classes, Path(c.root)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        c = self.cfg
        samples, self.classes, root = self.index()
        self.splits = load_or_create_splits(samples, root, self.split_file, self.classes, c.split, c.split_seed)
        if not self.splits["train"]:
            raise DataError("the train split is empty", path=self.split_file)
        policy = c.policy()
        for name, items in self.splits.items():
            if not items:
                continue
            tf = SceneTransform(policy, train=name == "train", hflip=c.hflip, vflip=c.vflip, rot90=c.rot90,
                                jitter=c.jitter)
            ds = SceneDataset(items, len(self.classes), tf, None, None, c.bands, c.multilabel, c.skip_bad,
                              in_chans=self.in_chans or (len(self.mean) if self.mean else None))
            if c.cache:
                ds.cache()
            elif ds.in_chans is None:
                ds.read(0)  # fixes the band count from the first training image
            self.in_chans = self.in_chans or ds.in_chans
            self.datasets[name] = ds
        train = self.datasets["train"]
        if self.mean is None or self.std is None:
            imgs = (train.read(i).numpy() for i in range(len(train)))
            stats = compute_band_stats(imgs, seed=self.seed)
            self.mean, self.std = list(stats.mean), list(stats.std)
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise BandMismatchError(f"data.mean/std have {len(self.mean)} values but images have {self.in_chans} bands")
        for ds in self.datasets.values():
            ds.mean, ds.std, ds.in_chans = self.mean, self.std, self.in_chans
        self._ready = True

    def _loader(self, name: str, train: bool) -> DataLoader:
        from rsvision.data.samplers import SeededRandomSampler

        ds = self.datasets[name]
        bs = self.cfg.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size)
        return DataLoader(
            ds, batch_size=bs, num_workers=self.cfg.num_workers,
            sampler=SeededRandomSampler(len(ds), self.seed) if train else None,
            drop_last=train and len(ds) >= 2 * bs,  # mixup/cutmix pair samples: avoid a tiny last batch
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val" if "val" in self.datasets else "train", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.datasets else "val", False)

    def loader(self, split: str) -> DataLoader:
        """Evaluation loader of any split (``train`` without augmentation)."""
        if split not in self.datasets:
            raise DataError(f"split {split!r} is empty", path=self.split_file)
        if split == "train":
            ds = self.datasets["train"]
            c = self.cfg
            ev = SceneDataset(ds.samples, ds.num_classes, SceneTransform(c.policy(), False), ds.mean, ds.std,
                              ds.bands, ds.multilabel, ds.skip_bad, ds.in_chans)
            ev._cache = ds._cache
            return DataLoader(ev, batch_size=self.cfg.eval_batch_size or self.cfg.batch_size)
        return self._loader(split, False)
