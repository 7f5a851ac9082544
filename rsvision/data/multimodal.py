"""Sentinel-1 + Sentinel-2 pairs: BigEarthNet v1.0, reBEN (BigEarthNet v2.0) and SSL4EO-S12 readers.

Each dataset stores one GeoTIFF per band, at 10 / 20 / 60 m for Sentinel-2 and 10 m for Sentinel-1
(VV, VH in dB). A sample is stacked onto **one grid**: that of its first 10 m band (B02, else the
first band asked for). A band already on that grid (same CRS, transform and shape: every S1 band of
BigEarthNet / reBEN, whose bounds equal the S2 ones) is taken unchanged; any other band is
resampled onto it with ``rasterio.warp.reproject`` (bilinear: 20 / 60 m bands upsampled; SSL4EO-S12's
S1, whose EPSG:4326 grid is offset by ~40 m from S2's, is warped onto S2's). S1 is interpolated in
dB as stored. One resampler for every case keeps the geometry exact (GDAL maps pixel areas, not
indices), which ``tests/data/test_multimodal.py`` checks against a torch upsampling of the same band.

Layouts (as in ``../shared/data/multimodal/SOURCES.md``):

* BigEarthNet v1.0: ``BigEarthNet-S2/<s2>/<s2>_<band>.tif``, ``BigEarthNet-S1/<s1>/<s1>_{VV,VH}.tif`` and
  ``pairs.csv`` (``s2_name, s1_name, split, labels_19``; labels joined by ``|``);
* reBEN: ``BigEarthNet-S2/<product>/<patch>/<patch>_<band>.tif`` (product: the patch id without its
  ``_row_col``; for S1 also without ``_<tile>``), same for S1, labels / split / S1 name from the official ``metadata*.parquet``
  (``validation`` is read as ``val``);
* the shared folder's ``index.csv`` (``source, pair_id, split, s1_dir, s2_dir, s1_prefix, s2_prefix, labels_19``):
  every labelled pair of the BigEarthNet v1.0 and reBEN folders below it, read through it (format ``index``);
* SSL4EO-S12: ``s1/<loc>/<product>/{VV,VH}.tif``, ``s2a`` (L2A) or ``s2c`` (L1C) ``/<loc>/<date>/B1..B12.tif``;
  unlabelled; the k-th S1 and k-th S2 acquisition of a location (in date order) form season k.

Targets are the 19-class BigEarthNet nomenclature (:data:`BEN19_CLASSES`, official order) as
multi-hot vectors. Normalisation: per-band mean / std of each modality, computed on the training
split (:func:`rsvision.data.raster.compute_band_stats`) unless given, stored flat in the CONVENTIONS
checkpoint keys ``bands`` (``"<modality>:<band>"``), ``mean``, ``std`` plus ``modalities``.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rsvision.data.raster import check_complete, check_dtype, check_pixel_budget, compute_band_stats, normalize
from rsvision.data.transforms import ResizePolicy, SceneTransform
from rsvision.data.views import MultiCropViews  # noqa: F401  (re-exported: its home before rsvision.data.views)
from rsvision.errors import ConfigError, DataError

__all__ = [
    "BEN19_CLASSES", "S2_BANDS", "S1_BANDS", "DEFAULT_MODALITIES", "PairSample", "read_bigearthnet_v1",
    "read_reben", "read_ssl4eo", "read_dataset", "detect_format", "stack_bands", "MultimodalDataset",
    "MultimodalDataConfig", "MultimodalDataModule", "MultiCropViews", "MultiCropDataset", "SSLDataModule", "PAIR_READERS",
]

#: BigEarthNet's 19-class nomenclature (Sumbul et al. 2021), in the official index order.
BEN19_CLASSES = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands",
    "Inland waters", "Marine waters",
)
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S1_BANDS = ("VV", "VH")
#: Backbone modality -> bands (SkySense V2's defaults; ``hr`` is S2's RGB: no matching high-resolution image exists).
DEFAULT_MODALITIES = {"s2": ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"), "s1": S1_BANDS}
RGB_FROM_S2 = ("B04", "B03", "B02")
_SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class PairSample:
    """One co-registered S1 / S2 sample: band name -> file, split, 19-class label indices (None: unlabelled)."""

    id: str
    split: str
    files: Mapping[str, str]
    labels: Optional[tuple[int, ...]] = None


def _labels(names: Sequence[str], where: str) -> tuple[int, ...]:
    idx = []
    for n in names:
        n = n.strip()
        if n not in BEN19_CLASSES:
            raise DataError(f"label {n!r} is not one of the 19 BigEarthNet classes", path=where)
        idx.append(BEN19_CLASSES.index(n))
    return tuple(sorted(set(idx)))


def _band_files(folder: Path, prefix: str, bands: Sequence[str]) -> dict[str, str]:
    return {b: str(folder / f"{prefix}{b}.tif") for b in bands}


def read_bigearthnet_v1(root: str | Path) -> list[PairSample]:
    """BigEarthNet v1.0 S1 + S2 pairs listed in ``root/pairs.csv``."""
    root = Path(root)
    table = root / "pairs.csv"
    if not table.is_file():
        raise DataError("BigEarthNet v1.0 folder without pairs.csv", path=root)
    out = []
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            s2, s1 = row["s2_name"], row["s1_name"]
            files = {**_band_files(root / "BigEarthNet-S2" / s2, f"{s2}_", [b for b in S2_BANDS if b != "B10"]),
                     **_band_files(root / "BigEarthNet-S1" / s1, f"{s1}_", S1_BANDS)}
            out.append(PairSample(s2, _SPLIT_NAMES[row["split"]], files,
                                  _labels(row["labels_19"].split("|"), str(table))))
    return out


def _product(name: str, s1: bool = False) -> str:
    """reBEN's product folder: the S2 patch id without ``_row_col``; the S1 name also without its ``_<tile>``."""
    return re.sub(r"_[0-9]{2}[A-Z]{3}_\d+_\d+$" if s1 else r"_\d+_\d+$", "", name)


def read_reben(root: str | Path) -> list[PairSample]:
    """reBEN pairs from the official ``metadata.parquet`` (+ the snow / cloud one when present)."""
    import pandas as pd

    root = Path(root)
    tables = [p for p in (root / "metadata.parquet", root / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
              if p.is_file()]
    if not tables:
        raise DataError("reBEN folder without metadata.parquet", path=root)
    meta = pd.concat([pd.read_parquet(p) for p in tables], ignore_index=True)
    out = []
    for row in meta.sort_values("patch_id").itertuples():
        p, s1 = row.patch_id, row.s1_name
        files = {**_band_files(root / "BigEarthNet-S2" / _product(p) / p, f"{p}_", [b for b in S2_BANDS if b != "B10"]),
                 **_band_files(root / "BigEarthNet-S1" / _product(s1, s1=True) / s1, f"{s1}_", S1_BANDS)}
        out.append(PairSample(p, _SPLIT_NAMES[row.split], files, _labels(list(row.labels), str(tables[0]))))
    return out


def read_ssl4eo(root: str | Path, s2_level: str = "s2a") -> list[PairSample]:
    """SSL4EO-S12 locations: season k pairs the k-th S1 and k-th S2 acquisition (date order); all ``train``."""
    root = Path(root)
    if s2_level not in ("s2a", "s2c"):
        raise ConfigError(f"ssl4eo s2_level must be 's2a' (L2A) or 's2c' (L1C), got {s2_level!r}")
    out = []
    for loc in sorted(p for p in (root / "s1").iterdir() if p.is_dir()):
        s1_dirs = sorted((d for d in loc.iterdir() if d.is_dir()), key=lambda d: d.name.split("_")[4])
        s2_dirs = sorted(d for d in (root / s2_level / loc.name).iterdir() if d.is_dir())
        for k, (d1, d2) in enumerate(zip(s1_dirs, s2_dirs)):
            files = {b: str(d2 / f"B{int(b[1:]) if b[1:].isdigit() else b[1:]}.tif") for b in S2_BANDS}
            files = {b: f for b, f in files.items() if Path(f).is_file()}
            files.update({b: str(d1 / f"{b}.tif") for b in S1_BANDS})
            out.append(PairSample(f"{loc.name}_s{k}", "train", files, None))
    if not out:
        raise DataError("no SSL4EO-S12 locations under s1/", path=root)
    return out


def read_index(root: str | Path) -> list[PairSample]:
    """Every labelled pair listed in ``root/index.csv`` (``../shared/data/multimodal``: BigEarthNet v1.0 and
    reBEN together; ``s1_dir`` / ``s2_dir`` relative to ``root``, file ``<dir>/<prefix>_<band>.tif``)."""
    root = Path(root)
    table = root / "index.csv"
    out = []
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            files = {**_band_files(root / row["s2_dir"], f"{row['s2_prefix']}_", [b for b in S2_BANDS if b != "B10"]),
                     **_band_files(root / row["s1_dir"], f"{row['s1_prefix']}_", S1_BANDS)}
            out.append(PairSample(row["pair_id"], _SPLIT_NAMES[row["split"]], files,
                                  _labels(row["labels_19"].split("|"), str(table))))
    return out


def detect_format(root: str | Path) -> str:
    root = Path(root)
    if (root / "index.csv").is_file():
        return "index"
    if (root / "metadata.parquet").is_file():
        return "reben"
    if (root / "pairs.csv").is_file():
        return "bigearthnet_v1"
    if (root / "s1").is_dir() and ((root / "s2a").is_dir() or (root / "s2c").is_dir()):
        return "ssl4eo"
    raise DataError("not a BigEarthNet v1.0, reBEN or SSL4EO-S12 folder (no index.csv, pairs.csv, metadata.parquet or "
                    "s1/ + s2a/)", path=root)


#: the S1 / S2 folder layouts ``read_dataset`` reads (``data.format``; ``auto`` detects one)
PAIR_READERS = {"index": read_index, "bigearthnet_v1": read_bigearthnet_v1, "reben": read_reben, "ssl4eo": read_ssl4eo}


def read_dataset(root: str | Path, fmt: str = "auto", split_file: str | Path | None = None) -> list[PairSample]:
    """The samples of ``root`` (``fmt``: auto | index | bigearthnet_v1 | reben | ssl4eo). ``split_file``
    (``split,path`` rows, ``path`` the pair id, as :func:`rsvision.data.classification.read_split_file`
    reads them) replaces the dataset's own splits; pairs it does not list are dropped."""
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt not in PAIR_READERS:
        raise ConfigError(f"data.format must be auto or one of {sorted(PAIR_READERS)}, got {fmt!r}")
    samples = PAIR_READERS[fmt](root)
    if split_file is None:
        return samples
    from dataclasses import replace

    from rsvision.data.classification import read_split_file

    table = read_split_file(split_file)
    unknown = sorted(set(table) - {s.id for s in samples})
    if unknown:
        raise DataError(f"{len(unknown)} pair id(s) not in {root}, e.g. {unknown[0]}", path=split_file)
    return [replace(s, split=table[s.id]) for s in samples if s.id in table]


def check_bands(sample: PairSample, modalities: Mapping[str, Sequence[str]]) -> None:
    """BandMismatchError naming the modality and its band count when a sample lacks band files of a modality."""
    from rsvision.errors import BandMismatchError

    for m, bands in modalities.items():
        missing = [b for b in bands if b not in sample.files or not Path(sample.files[b]).is_file()]
        if missing:
            raise BandMismatchError(
                f"pair {sample.id!r}: modality {m!r} needs {len(bands)} bands {list(bands)}, found "
                f"{len(bands) - len(missing)} (missing {missing}); --modalities picks a subset of the checkpoint's")


def stack_bands(files: Mapping[str, str], bands: Sequence[str], reference: Optional[str] = None) -> np.ndarray:
    """Read ``bands`` onto the grid of ``reference`` (default: B02, else the first band) -> float32 (C, H, W).

    Each band file is checked as it is opened (pixel budget, a file cut short, real-valued pixels); a
    band whose NaN / inf or footprint leaves part of the grid uncovered is named in the error.
    """
    import rasterio
    from rasterio.warp import Resampling, reproject

    missing = [b for b in bands if b not in files]
    if missing:
        raise DataError(f"bands {missing} are not in this dataset (has {sorted(files)})")
    ref = reference or ("B02" if "B02" in files else bands[0])
    current = files[ref]
    try:
        with rasterio.open(current) as r:
            check_pixel_budget(r.height, r.width, current)
            crs, transform, shape = r.crs, r.transform, r.shape
        out = np.full((len(bands), *shape), np.nan, np.float32)
        for i, b in enumerate(bands):
            current = files[b]
            with rasterio.open(current) as src:
                check_pixel_budget(src.height, src.width, current)
                check_dtype(src.dtypes[0], current)
                check_complete(src, current)
                arr = src.read(1).astype(np.float32)
                if (src.crs, src.transform, src.shape) == (crs, transform, shape):
                    out[i] = arr
                else:
                    reproject(arr, out[i], src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                              dst_crs=crs, dst_nodata=np.nan, resampling=Resampling.bilinear)
    except rasterio.errors.RasterioError as exc:
        raise DataError(f"cannot read band ({exc})", path=current) from exc
    if np.isfinite(out).all():
        return out
    box = _valid_box(np.isfinite(out).all(0))
    if box is None:
        bad = (~np.isfinite(out)).reshape(len(bands), -1).sum(1)
        i = int(bad.argmax())
        raise DataError(f"band {bands[i]}: {bad[i]:,} of {out[i].size:,} pixels of the pair's "
                        f"{shape[1]}x{shape[0]} grid are NaN / inf or not covered by the file", path=files[bands[i]])
    (top, bottom), (left, right) = box
    return np.ascontiguousarray(out[:, top:bottom, left:right])


def _valid_box(valid: np.ndarray) -> Optional[tuple[tuple[int, int], tuple[int, int]]]:
    """Rows / columns of ``valid`` (H, W) left after cropping border lines with invalid pixels (a
    resampled band, e.g. SSL4EO's offset S1, does not cover the reference grid's edge); None when
    that leaves under half a side or invalid pixels remain inside."""
    top, bottom, left, right = 0, valid.shape[0], 0, valid.shape[1]
    while top < bottom and left < right:
        v = valid[top:bottom, left:right]
        bad = {"top": (~v[0]).sum(), "bottom": (~v[-1]).sum(), "left": (~v[:, 0]).sum(), "right": (~v[:, -1]).sum()}
        side, n = max(bad.items(), key=lambda kv: kv[1])
        if not n:
            break
        top, bottom = top + (side == "top"), bottom - (side == "bottom")
        left, right = left + (side == "left"), right - (side == "right")
    if bottom - top < valid.shape[0] / 2 or right - left < valid.shape[1] / 2 or not valid[top:bottom, left:right].all():
        return None
    return (top, bottom), (left, right)


class MultimodalDataset(Dataset):
    """Samples -> ``{"image": {modality: (C, H, W) float}, "label": (19,) multi-hot, "index": i}``.

    Every modality is stacked on the sample's one grid, so one flip / rotation (``SceneTransform``
    on their channel concatenation) moves them together. ``label`` is absent for unlabelled data.
    """

    def __init__(self, samples: Sequence[PairSample], modalities: Mapping[str, Sequence[str]],
                 stats: Optional[Mapping[str, tuple[Sequence[float], Sequence[float]]]] = None,
                 transform: Optional[SceneTransform] = None, cache: bool = True):
        self.samples = list(samples)
        self.modalities = {m: tuple(b) for m, b in modalities.items()}
        self.stats = dict(stats) if stats else None
        self.transform = transform
        self._cache: Optional[list[dict[str, torch.Tensor]]] = None
        if cache:
            self._cache = [self.read(i) for i in range(len(self.samples))]

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> dict[str, torch.Tensor]:
        """Raw (un-normalised) modality stacks of sample ``i`` in native units (S2 DN, S1 dB)."""
        if self._cache is not None:
            return self._cache[i]
        s = self.samples[i]
        return {m: torch.from_numpy(stack_bands(s.files, b)) for m, b in self.modalities.items()}

    def __getitem__(self, i: int) -> dict:
        raw = self.read(i)
        x = {m: normalize(t, *self.stats[m]) if self.stats else t.float() for m, t in raw.items()}
        if self.transform is not None:
            sizes = [t.shape[0] for t in x.values()]
            x = dict(zip(x, torch.split(self.transform(torch.cat(list(x.values()))), sizes)))
        item = {"image": x, "index": i}
        labels = self.samples[i].labels
        if labels is not None:
            y = torch.zeros(len(BEN19_CLASSES))
            y[list(labels)] = 1.0
            item["label"] = y
        return item

    def band_stats(self) -> dict[str, tuple[list[float], list[float]]]:
        """Per-modality per-band mean / std over this dataset's pixels (the training split's)."""
        out = {}
        for m in self.modalities:
            st = compute_band_stats((self.read(i)[m].numpy() for i in range(len(self))), max_pixels_per_image=None)
            out[m] = (list(st.mean), list(st.std))
        return out


@dataclass
class MultimodalDataConfig:
    """``data:`` section for S1 / S2 pairs. ``modalities``: backbone modality name -> band names."""

    root: Optional[str] = None
    format: str = "auto"  # auto | bigearthnet_v1 | reben | ssl4eo
    modalities: dict[str, list[str]] = field(default_factory=lambda: {m: list(b) for m, b in DEFAULT_MODALITIES.items()})
    img_size: int = 120
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    mean: Optional[dict[str, list[float]]] = None  # per modality, native units (None: from the train split)
    std: Optional[dict[str, list[float]]] = None
    batch_size: int = 8
    eval_batch_size: Optional[int] = None
    num_workers: int = 0
    cache: bool = True
    split_file: Optional[str] = None  # split,path (pair id) rows replacing the dataset's own splits


class MultimodalDataModule(L.LightningDataModule):
    """Index + splits (the dataset's own) + statistics + loaders; ``hparams()`` gives the checkpoint's data keys."""

    def __init__(self, cfg: MultimodalDataConfig, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.datasets: dict[str, MultimodalDataset] = {}
        self.stats: Optional[dict[str, tuple[list[float], list[float]]]] = None
        self.classes = list(BEN19_CLASSES)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.datasets:
            return
        c = self.cfg
        if not c.root:
            raise ConfigError("data.root is not set (use --data DIR)")
        known = set(S2_BANDS) | set(S1_BANDS)
        for m, bands in c.modalities.items():
            bad = [b for b in bands if b not in known]
            if bad or not bands:
                raise ConfigError(f"data.modalities.{m}: unknown bands {bad or '(none)'}; known: {sorted(known)}")
        samples = read_dataset(c.root, c.format, c.split_file)
        by_split: dict[str, list[PairSample]] = {}
        for s in samples:
            by_split.setdefault(s.split, []).append(s)
        if not by_split.get("train"):
            raise DataError("the train split is empty", path=c.root)
        policy = ResizePolicy(c.img_size, None, None)
        for name, items in by_split.items():
            tf = SceneTransform(policy, train=name == "train", hflip=c.hflip, vflip=c.vflip, rot90=c.rot90)
            self.datasets[name] = MultimodalDataset(items, c.modalities, None, tf, cache=c.cache)
        if c.mean and c.std:
            self.stats = {m: (list(c.mean[m]), list(c.std[m])) for m in c.modalities}
        else:
            self.stats = self.datasets["train"].band_stats()
        for ds in self.datasets.values():
            ds.stats = self.stats

    def hparams_data(self) -> dict:
        """CONVENTIONS data keys: flat ``bands`` / ``mean`` / ``std`` in modality order, plus ``modalities``."""
        mods = {m: list(b) for m, b in self.cfg.modalities.items()}
        return {"classes": self.classes, "modalities": mods,
                "bands": [f"{m}:{b}" for m, bs in mods.items() for b in bs],
                "mean": [v for m in mods for v in self.stats[m][0]],
                "std": [v for m in mods for v in self.stats[m][1]],
                "img_size": self.cfg.img_size, "gsd": 10.0}

    def split_record(self) -> dict:
        """``splits.json``: the dataset's own splits, each sample named by its S2 B02 file."""
        from rsvision.data.splits import split_record

        files = {k: [s.samples[i].files.get("B02", s.samples[i].id) for i in range(len(s))] for k, s in self.datasets.items()}
        return split_record(files.get("train", []), files.get("val", []), test=files.get("test", []), source="dataset")

    def _loader(self, name: str, train: bool) -> DataLoader:
        from rsvision.data.samplers import SeededRandomSampler

        ds = self.datasets[name]
        bs = self.cfg.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size)
        return DataLoader(ds, batch_size=bs, num_workers=self.cfg.num_workers,
                          sampler=SeededRandomSampler(len(ds), self.seed) if train else None)

    def loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            raise DataError(f"split {split!r} is empty", path=self.cfg.root)
        return self._loader(split, False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val" if "val" in self.datasets else "train", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.datasets else "val", False)


# --- the classification task's "pairs" data format ------------------------------------------------
PAIR_FORMATS = ("pairs", "index", "bigearthnet_v1", "reben")


def _split_flat(values: Optional[Sequence[float]], mods: Mapping[str, Sequence[str]]) -> Optional[dict[str, list[float]]]:
    if not values:
        return None
    n = sum(len(b) for b in mods.values())
    if len(values) != n:
        raise ConfigError(f"data.mean / data.std need {n} values (the bands of {list(mods)} in order), got {len(values)}")
    out, k = {}, 0
    for m, b in mods.items():
        out[m], k = list(values[k:k + len(b)]), k + len(b)
    return out


def pairs_datamodule(data, seed: int = 0) -> MultimodalDataModule:
    """A :class:`MultimodalDataModule` from the classification ``data:`` section (``format: pairs | bigearthnet_v1 | reben``).

    ``mean`` / ``std`` there are flat, in the order of ``modalities`` (as the checkpoint stores them).
    """
    mods = {m: list(b) for m, b in (data.modalities or DEFAULT_MODALITIES).items()}
    fmt = "auto" if data.format == "pairs" else data.format
    cfg = MultimodalDataConfig(root=data.root, format=fmt, modalities=mods, img_size=data.img_size, hflip=data.hflip,
                               vflip=data.vflip, rot90=data.rot90, mean=_split_flat(data.mean, mods),
                               std=_split_flat(data.std, mods), batch_size=data.batch_size,
                               eval_batch_size=data.eval_batch_size, num_workers=data.num_workers, cache=data.cache,
                               split_file=data.split_file)
    dm = MultimodalDataModule(cfg, seed)
    dm.setup("fit")
    return dm


def pairs_eval_dataset(hp: Mapping, root: str | Path | Sequence[PairSample], split: Optional[str] = None,
                       modalities: Optional[Sequence[str]] = None, split_file: str | Path | None = None,
                       cache: bool = True) -> MultimodalDataset:
    """Evaluation dataset of a pairs folder (or samples) with a checkpoint's modalities, statistics and image
    size (``split``: one of the dataset's own splits, or of ``split_file``, default all of it; ``modalities``:
    a subset of the checkpoint's, e.g. S2 only for a model trained on S1 + S2: the missing-modality case)."""
    mods = {m: list(b) for m, b in hp["modalities"].items()}
    mean, std = _split_flat(hp["mean"], mods), _split_flat(hp["std"], mods)
    if modalities:
        unknown = [m for m in modalities if m not in mods]
        if unknown:
            raise ConfigError(f"--modalities {unknown} are not in the checkpoint's {list(mods)}")
        mods = {m: mods[m] for m in modalities}
    samples = read_dataset(root, split_file=split_file) if isinstance(root, (str, Path)) else list(root)
    if split is not None:
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise DataError(f"no samples of split {split!r}", path=split_file or root)
    for s in samples:
        check_bands(s, mods)
    tf = SceneTransform(ResizePolicy(int(hp.get("img_size") or 120), None, None), train=False)
    return MultimodalDataset(samples, mods, {m: (mean[m], std[m]) for m in mods}, tf, cache=cache)


# --- self-supervised views (MultiCropViews lives in rsvision.data.views) ---------------------------
class MultiCropDataset(Dataset):
    """``{"global": [{modality: view}], "local": [...], "global_geom": [(7,)], "local_geom": [...], "index"}``
    of a normalised :class:`MultimodalDataset` (geometries: :mod:`rsvision.data.views`; collated (B, 7)).

    Indexed by :class:`rsvision.data.samplers.SampleKey` ``(index, epoch)``, its draws depend only on
    ``(seed, epoch, index)`` (exact resume with any number of workers); a plain index draws as epoch 0.
    """

    def __init__(self, base: MultimodalDataset, views: MultiCropViews, seed: int = 0):
        self.base, self.views, self.seed = base, views, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key) -> dict:
        from rsvision.data.samplers import sample_rng, split_key

        i, epoch = split_key(key)
        raw = self.base.read(i)
        x = {m: normalize(t, *self.base.stats[m]) for m, t in raw.items()}
        sizes = [t.shape[0] for t in x.values()]
        d = self.views.draw(torch.cat(list(x.values())), sample_rng(self.seed, epoch or 0, i))

        def split(v: torch.Tensor) -> dict[str, torch.Tensor]:
            return dict(zip(x, torch.split(v, sizes)))

        return {"global": [split(v) for v in d["global"]], "local": [split(v) for v in d["local"]],
                "global_geom": d["global_geom"], "local_geom": d["local_geom"], "index": i}


class SSLDataModule(MultimodalDataModule):
    """Unlabelled multi-crop views of S1 / S2 samples: trains on ``train``, validates on ``val`` (else ``train``,
    with the fixed views of epoch 0). Statistics as :class:`MultimodalDataModule` (train split)."""

    def __init__(self, cfg: MultimodalDataConfig, views: MultiCropViews, seed: int = 0, source_size: int = 0):
        super().__init__(cfg, seed)
        self.views, self.source_size = views, source_size

    def crops(self, name: str) -> MultiCropDataset:
        return MultiCropDataset(self.datasets[name], self.views, self.seed)

    def train_dataloader(self) -> DataLoader:
        from rsvision.data.samplers import SeededRandomSampler

        ds = self.crops("train")
        bs = min(self.cfg.batch_size, len(ds))
        return DataLoader(ds, batch_size=bs, num_workers=self.cfg.num_workers, drop_last=True,
                          sampler=SeededRandomSampler(len(ds), self.seed, keys=True))

    def val_dataloader(self) -> DataLoader:
        ds = self.crops("val" if "val" in self.datasets else "train")
        return DataLoader(ds, batch_size=min(self.cfg.eval_batch_size or self.cfg.batch_size, len(ds)),
                          num_workers=self.cfg.num_workers, drop_last=True)
