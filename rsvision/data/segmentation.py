"""Semantic segmentation data: image / mask folder pairs, mask encodings, datasets.

Three mask encodings cover the common datasets (all map to class indices ``0..K-1`` plus an
``ignore_index``):

- ``index`` with ``reduce_zero_label``: LoveDA (0 = no data, 1-7 classes) and ISPRS tiles as
  converted by mmsegmentation (0 = boundary / ignore, 1-6 classes): 0 -> ignore, v -> v - 1.
- ``index`` without it: the value is the class (PNG ``L`` or palette ``P`` masks, GeoTIFF).
- ``rgb``: a colour table (original ISPRS Potsdam / Vaihingen labels, iSAID); colours not in the
  table raise a :class:`DataError` naming the file, unless listed in ``ignore_colours``.

Images go through :func:`rsvision.data.raster.read_image`, so any band count and dtype works;
values stay in native units and the task normalises them with the checkpoint's band statistics.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rsvision.data.raster import IMAGE_EXTENSIONS, compute_band_stats, read_image
from rsvision.data.samplers import SeededRandomSampler, sample_rng, split_key
from rsvision.errors import ConfigError, DataError

__all__ = [
    "MaskEncoding", "PRESETS", "get_encoding", "read_mask", "find_pairs", "SegmentationDataset",
    "random_crop", "augment_flips", "crop_rng", "as_list", "split_files", "SegmentDataConfig", "CropDataModule", "SegmentationDataModule",
]

log = logging.getLogger(__name__)

_MASK_EXT = IMAGE_EXTENSIONS + (".img",)


@dataclass
class MaskEncoding:
    """How raw mask files map to class indices (see the module docstring)."""

    classes: list[str]
    kind: str = "index"  # index | rgb
    reduce_zero_label: bool = False
    colours: list[list[int]] | None = None  # rgb: colour of each raw index, in raw-index order
    ignore_colours: list[list[int]] = field(default_factory=list)
    ignore_index: int = 255
    palette: list[list[int]] | None = None  # display colours per class (overlays, GeoTIFF colour map)
    colour_tolerance: int = 0  # rgb: map a colour within this max-channel distance to the nearest entry

    def __post_init__(self) -> None:
        if self.kind not in ("index", "rgb"):
            raise ConfigError(f"mask encoding kind must be 'index' or 'rgb', got {self.kind!r}")
        if self.kind == "rgb" and not self.colours:
            raise ConfigError("an 'rgb' mask encoding needs a colour table (colours)")
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < len(self.classes):
            raise ConfigError(f"ignore_index {self.ignore_index} must be in [num_classes, 255]")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def decode(self, raw: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        """Raw mask (``(1|3|4, H, W)`` or ``(H, W)``) -> ``(H, W)`` int64 class indices / ignore."""
        raw = np.asarray(raw)
        if self.kind == "rgb":
            if raw.ndim != 3 or raw.shape[0] < 3:
                raise DataError(f"expected an RGB-coded mask, got shape {raw.shape}", path=path)
            key = (raw[0].astype(np.int64) << 16) | (raw[1].astype(np.int64) << 8) | raw[2].astype(np.int64)
            uniq, inv = np.unique(key, return_inverse=True)
            table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(self.colours)}
            ign = {(r << 16) | (g << 8) | b for r, g, b in self.ignore_colours}
            lut = np.full(len(uniq), -2, np.int64)
            cols = np.asarray(self.colours, np.int64).reshape(-1, 3)
            for j, k in enumerate(uniq.tolist()):
                lut[j] = table.get(k, -1 if k in ign else -2)
                if lut[j] == -2 and self.colour_tolerance > 0:  # lossy / resampled label files
                    rgb = np.array([(k >> 16) & 255, (k >> 8) & 255, k & 255])
                    dist = np.abs(cols - rgb).max(1)
                    if dist.min() <= self.colour_tolerance:
                        lut[j] = int(dist.argmin())
            if (lut == -2).any():
                bad = [((k >> 16) & 255, (k >> 8) & 255, k & 255) for k in uniq[lut == -2][:5].tolist()]
                raise DataError(f"mask colours {bad} are not in the colour table", path=path)
            idx = lut[inv.reshape(key.shape)]
        else:
            if raw.ndim == 3:
                if raw.shape[0] != 1:
                    raise DataError(f"index mask must have one band, got {raw.shape[0]} "
                                    "(RGB-coded masks need kind: rgb and a colour table)", path=path)
                raw = raw[0]
            idx = raw.astype(np.int64)
        out = idx.copy()
        if self.reduce_zero_label:
            out = idx - 1
            out[idx == 0] = self.ignore_index
        out[idx == -1] = self.ignore_index
        bad = (out != self.ignore_index) & ((out < 0) | (out >= self.num_classes))
        if bad.any():
            vals = np.unique(raw[bad] if raw.ndim == 2 else idx[bad])[:8].tolist()
            raise DataError(
                f"mask values {vals} are outside the {self.num_classes} classes "
                f"(reduce_zero_label={self.reduce_zero_label}, ignore_index={self.ignore_index})", path=path)
        return out

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_LOVEDA = ["background", "building", "road", "water", "barren", "forest", "agricultural"]
_ISPRS = ["impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"]
_ISPRS_RGB = [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]]
_ISAID = ["background", "ship", "storage_tank", "baseball_diamond", "tennis_court", "basketball_court",
          "ground_track_field", "bridge", "large_vehicle", "small_vehicle", "helicopter", "swimming_pool",
          "roundabout", "soccer_ball_field", "plane", "harbor"]
_ISAID_RGB = [[0, 0, 0], [0, 0, 63], [0, 63, 63], [0, 63, 0], [0, 63, 127], [0, 63, 191], [0, 63, 255],
              [0, 127, 63], [0, 127, 127], [0, 0, 127], [0, 0, 191], [0, 0, 255], [0, 191, 127],
              [0, 127, 191], [0, 127, 255], [0, 100, 155]]

#: Named encodings: ``data.mask: loveda`` in a config (or a dict of :class:`MaskEncoding` fields).
PRESETS: dict[str, dict[str, Any]] = {
    "loveda": dict(classes=_LOVEDA, reduce_zero_label=True, palette=[
        [255, 255, 255], [255, 0, 0], [255, 255, 0], [0, 0, 255], [159, 129, 183], [0, 255, 0], [255, 195, 128]]),
    # ISPRS Potsdam / Vaihingen converted by mmsegmentation (0 = eroded boundary / ignore).
    "isprs": dict(classes=_ISPRS, reduce_zero_label=True, palette=_ISPRS_RGB),
    # Original ISPRS RGB labels; black (eroded "noBoundary" borders) is ignored.
    "isprs_rgb": dict(classes=_ISPRS, kind="rgb", colours=_ISPRS_RGB, ignore_colours=[[0, 0, 0]], palette=_ISPRS_RGB),
    # iSAID semantic colour masks (16 classes with background, as mmsegmentation evaluates them).
    "isaid": dict(classes=_ISAID, kind="rgb", colours=_ISAID_RGB, palette=_ISAID_RGB),
    # Binary 0 / 255 masks (building footprints, water, ...).
    "binary": dict(classes=["background", "foreground"], kind="index"),
}


def get_encoding(spec: str | dict | MaskEncoding | None, classes: Sequence[str] | None = None,
                 ignore_index: int | None = None) -> MaskEncoding:
    """A :class:`MaskEncoding` from a preset name, a dict of its fields, or class names alone."""
    if isinstance(spec, MaskEncoding):
        enc = spec
    else:
        if spec is None:
            if not classes:
                raise ConfigError("segmentation data needs a mask preset (data.mask) or class names (data.classes)")
            d: dict[str, Any] = {"classes": list(classes)}
        elif isinstance(spec, str):
            if spec not in PRESETS:
                raise ConfigError(f"unknown mask preset {spec!r}; known: {sorted(PRESETS)}")
            d = dict(PRESETS[spec])
        elif isinstance(spec, dict):
            d = dict(PRESETS.get(spec.get("preset", ""), {}))
            d.update({k: v for k, v in spec.items() if k != "preset"})
        else:
            raise ConfigError(f"bad mask encoding {spec!r}")
        if classes:
            d["classes"] = list(classes)
        unknown = set(d) - {f.name for f in dataclasses.fields(MaskEncoding)}
        if unknown:
            raise ConfigError(f"unknown mask encoding key(s) {sorted(unknown)}")
        enc = MaskEncoding(**d)
    if ignore_index is not None and ignore_index != enc.ignore_index:
        enc = dataclasses.replace(enc, ignore_index=int(ignore_index))
    return enc


def read_mask(path: str | Path) -> np.ndarray:
    """Raw mask ``(C, H, W)``; palette (``P``) PNGs keep their *indices* (not their colours)."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".gif", ".bmp"):
        from PIL import Image

        try:
            with Image.open(path) as img:
                if img.mode == "P":
                    return np.asarray(img)[None]
        except Exception as exc:
            raise DataError(f"cannot read mask ({type(exc).__name__}: {exc})", path=path) from exc
    return read_image(path)


def _files(folder: Path, exts: Sequence[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts:
            out.setdefault(p.stem, p)
    return out


def find_pairs(root: str | Path, images: str = "images", masks: str = "masks",
               mask_suffixes: Sequence[str] = ("", "_mask", "_label", "_instance_color_RGB")) -> list[tuple[Path, Path]]:
    """``root/images/<name>.*`` matched to ``root/masks/<name><suffix>.*``; sorted by name.

    Raises DataError for a missing folder, an empty one, or an image without a mask.
    """
    root = Path(root)
    idir, mdir = root / images, root / masks
    for d in (idir, mdir):
        if not d.is_dir():
            raise DataError(f"expected folder {d.name!r} (layout: {images}/ and {masks}/)", path=d)
    imgs = _files(idir, IMAGE_EXTENSIONS + (".img",))
    msks = _files(mdir, _MASK_EXT)
    if not imgs:
        raise DataError("no image files", path=idir)
    pairs, missing = [], []
    for stem, ip in imgs.items():
        mp = next((msks[stem + s] for s in mask_suffixes if stem + s in msks), None)
        if mp is None:
            missing.append(ip.name)
        else:
            pairs.append((ip, mp))
    if missing:
        raise DataError(f"{len(missing)} image(s) have no mask in {mdir}: {missing[:5]}", path=idir)
    return pairs


def random_crop(arrays: Sequence[np.ndarray], size: int, rng: np.random.Generator, fill: Sequence[float]) -> list[np.ndarray]:
    """Same random ``size`` x ``size`` crop of arrays sharing their last two dims; pads with ``fill``."""
    h, w = arrays[0].shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        arrays = [np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)], constant_values=f) for a, f in zip(arrays, fill)]
        h, w = arrays[0].shape[-2:]
    y0 = int(rng.integers(0, h - size + 1))
    x0 = int(rng.integers(0, w - size + 1))
    return [a[..., y0 : y0 + size, x0 : x0 + size] for a in arrays]


def augment_flips(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Random horizontal / vertical flip and 90-degree rotation, the same for every array."""
    k = int(rng.integers(0, 4))
    hf, vf = rng.random() < 0.5, rng.random() < 0.5
    out = []
    for a in arrays:
        if hf:
            a = a[..., :, ::-1]
        if vf:
            a = a[..., ::-1, :]
        out.append(np.ascontiguousarray(np.rot90(a, k, axes=(-2, -1))))
    return out


def crop_rng(seed: int, index: int, epoch: int | None, augment: bool) -> np.random.Generator:
    """The generator of one sample's crop position and augmentations.

    Training (``augment``) with a :class:`~rsvision.data.samplers.SampleKey` from the training
    sampler: a function of ``(seed, epoch, index)`` only, so a resumed run draws what the
    uninterrupted one drew, whatever the batch order or worker. Augmenting without an epoch (a
    plain index, e.g. a user's own loader): fresh draws from torch's global generator (seeded by
    ``seed_everything``, distinct per DataLoader worker). Fixed crops without ``augment``: ``(seed, index)``.
    """
    if not augment:
        return np.random.default_rng((seed, index))
    if epoch is not None:
        return sample_rng(seed, epoch, index)
    return np.random.default_rng(int(torch.randint(0, 2**62, ())))


class SegmentationDataset(Dataset):
    """``{"image": float32 (C, h, w) native units, "mask": int64 (h, w), "path": str}`` per pair.

    ``crop_size`` takes a random crop per access (training; images smaller than it are padded with
    zeros / ignore); ``augment`` adds flips and 90-degree rotations, drawn per sample by
    :func:`crop_rng` (index with a :class:`~rsvision.data.samplers.SampleKey` for draws keyed by
    ``(seed, epoch, index)``). Without ``crop_size`` whole images are returned (evaluation). ``bands`` are 0-based band indices to keep. ``cache`` keeps
    decoded files in memory (small datasets read once per epoch otherwise).
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], encoding: MaskEncoding, crop_size: int | None = None,
                 augment: bool = False, bands: Sequence[int] | None = None, cache: bool = True,
                 samples_per_image: int = 1, seed: int = 0, region: tuple[int, float, float] | None = None):
        self.pairs = list(pairs)
        if not self.pairs:
            raise DataError("segmentation dataset is empty")
        self.region = region
        self.encoding = encoding
        self.crop_size = crop_size
        self.augment = augment
        self.bands = list(bands) if bands is not None else None
        self.cache = cache
        self.samples_per_image = max(1, int(samples_per_image)) if crop_size else 1
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.pairs) * self.samples_per_image

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        ip, mp = self.pairs[i]
        img = read_image(ip, self.bands)
        mask = self.encoding.decode(read_mask(mp), mp)
        if img.shape[-2:] != mask.shape:
            raise DataError(f"image is {img.shape[-2:]} but its mask {mp.name} is {mask.shape}", path=ip)
        if self.region is not None:  # spatial hold-out: labels outside [f0, f1) of one axis are ignored
            axis, f0, f1 = self.region
            n = mask.shape[axis]
            keep = np.zeros(n, bool)
            keep[int(round(n * f0)) : int(round(n * f1))] = True
            mask = np.where(keep[:, None] if axis == 0 else keep[None, :], mask, self.encoding.ignore_index)
        if self.cache:
            self._cache[i] = (img, mask)
        return img, mask

    def __getitem__(self, key) -> dict[str, Any]:
        idx, epoch = split_key(key)
        i = idx % len(self.pairs)
        img, mask = self.load(i)
        if self.crop_size or self.augment:
            rng = crop_rng(self.seed, idx, epoch, self.augment)
            if self.crop_size:
                img, mask = random_crop([img, mask], self.crop_size, rng, [0, self.encoding.ignore_index])
            if self.augment:
                img, mask = augment_flips([img, mask], rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "path": str(self.pairs[i][0]),
        }


# --- configuration, splits and the datamodule ------------------------------------------------
@dataclass
class SegmentDataConfig:
    """``data:`` section. ``root`` / ``val_root`` may be lists of folders with ``images/`` + ``masks/``.

    Without ``val_root``, ``root/train`` + ``root/val`` are used when present, else the files are
    split with ``val_fraction`` (seeded); ``split: spatial`` instead keeps every image in both sets
    and validates on the last ``val_fraction`` of each image's rows (``split_axis: 0``) or columns,
    for datasets of a few large tiles. ``mask`` is a preset (``loveda``, ``isprs``, ``isprs_rgb``,
    ``isaid``, ``binary``) or a dict of :class:`rsvision.data.segmentation.MaskEncoding` fields.
    """

    root: Any = None
    val_root: Any = None
    mask: Any = None
    classes: list[str] | None = None
    ignore_index: int = 255
    img_size: int = 256
    batch_size: int = 8
    val_fraction: float = 0.25
    split: str = "files"  # files | spatial
    split_axis: int = 0
    samples_per_image: int = 1
    bands: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    num_workers: int = 0
    images: str = "images"
    masks: str = "masks"


def as_list(x: Any) -> list:
    """None -> [], a list / tuple -> list, anything else -> [x] (config fields that take one or many)."""
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


def split_files(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split into (train, val); one item serves both (a warning says so)."""
    if len(items) < 2:
        log.warning("only %d sample: validating on the training data", len(items))
        return list(items), list(items)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    val = sorted(order[:n_val])
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in val]


class CropDataModule(L.LightningDataModule):
    """Per-pixel datamodule base: random augmented training crops, whole validation images (batch 1).

    Subclasses split their items in ``__init__``, build ``train_ds`` / ``val_ds`` in ``setup`` and name
    the images band statistics are computed from in :meth:`stat_images`.
    """

    def __init__(self, cfg, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = cfg, seed

    def stat_images(self):
        raise NotImplementedError

    def band_stats(self) -> tuple[list[float], list[float]]:
        """Per-band mean / std of the training images (config values win)."""
        if self.cfg.mean is not None and self.cfg.std is not None:
            return list(self.cfg.mean), list(self.cfg.std)
        st = compute_band_stats(read_image(p, self.cfg.bands) for p in self.stat_images())
        return list(st.mean), list(st.std)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by ``(seed, epoch)``; the sampler's keys make every crop / flip a function of
        ``(seed, epoch, index)`` (:func:`crop_rng`), so a resumed run repeats the uninterrupted one."""
        ds = self.train_ds
        return DataLoader(ds, self.cfg.batch_size, sampler=SeededRandomSampler(len(ds), self.seed, keys=True),
                          num_workers=self.cfg.num_workers, drop_last=len(ds) > self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, 1, shuffle=False, num_workers=self.cfg.num_workers)


class SegmentationDataModule(CropDataModule):
    """Train crops (random, augmented) and whole validation images from :class:`SegmentDataConfig`."""

    def __init__(self, cfg: SegmentDataConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.encoding = get_encoding(cfg.mask, cfg.classes, cfg.ignore_index)
        self.train_pairs, self.val_pairs = self._split()

    def _pairs(self, roots) -> list:
        return [p for r in as_list(roots) for p in find_pairs(r, self.cfg.images, self.cfg.masks)]

    def _split(self) -> tuple[list, list]:
        c = self.cfg
        if not as_list(c.root):
            raise ConfigError("no training data: set data.root (--data DIR)")
        if c.val_root:
            return self._pairs(c.root), self._pairs(c.val_root)
        roots = [Path(r) for r in as_list(c.root)]
        if all((r / "train").is_dir() and (r / "val").is_dir() for r in roots):
            return self._pairs([r / "train" for r in roots]), self._pairs([r / "val" for r in roots])
        if c.split == "spatial":
            pairs = self._pairs(roots)
            return pairs, list(pairs)
        if c.split != "files":
            raise ConfigError(f"data.split must be 'files' or 'spatial', got {c.split!r}")
        return split_files(self._pairs(roots), c.val_fraction, self.seed)

    def stat_images(self):
        return [p for p, _ in self.train_pairs[:32]]

    def split_record(self) -> dict:
        """What ``train`` writes to ``splits.json`` (``eval --split`` reads it back)."""
        from rsvision.data.splits import split_record

        c = self.cfg
        if c.split == "spatial" and not c.val_root:
            return split_record([p for p, _ in self.train_pairs], [p for p, _ in self.val_pairs], "spatial",
                                axis=c.split_axis, val_fraction=c.val_fraction)
        return split_record([p for p, _ in self.train_pairs], [p for p, _ in self.val_pairs])

    def num_bands(self) -> int:
        return len(self.band_stats()[0])

    def setup(self, stage: str | None = None) -> None:
        c = self.cfg
        tr_reg = va_reg = None
        if c.split == "spatial" and not c.val_root:
            tr_reg, va_reg = (c.split_axis, 0.0, 1 - c.val_fraction), (c.split_axis, 1 - c.val_fraction, 1.0)
        self.train_ds = SegmentationDataset(self.train_pairs, self.encoding, c.img_size, True, c.bands,
                                            samples_per_image=c.samples_per_image, seed=self.seed, region=tr_reg)
        self.val_ds = SegmentationDataset(self.val_pairs, self.encoding, None, False, c.bands, region=va_reg)
