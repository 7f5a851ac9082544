"""Reading one image file as a ``(C, H, W)`` array, and per-band normalisation.

Any of JPEG / PNG / BMP / TIFF / GeoTIFF, any band count, uint8 / uint16 / int / float. TIFF
(and anything PIL cannot open) goes through rasterio, so multispectral GeoTIFFs keep all their
bands; other formats through PIL. Pixel values stay in their native units and dtype: the
normalisation (:func:`normalize`) uses per-band mean/std in those same units, so uint8 RGB,
uint16 Sentinel-2 and float reflectance are handled alike and the statistics stored in a
checkpoint are exactly what ``predict`` must apply. A corrupt or truncated file raises
:class:`~rsvision.errors.DataError` naming it (callers may catch it to skip the file).

Large scenes are *not* read here: use :mod:`rsvision.data.tiling` (windowed reads).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rsvision.errors import BandMismatchError, DataError

__all__ = [
    "IMAGE_EXTENSIONS", "RasterInfo", "is_image_file", "read_image", "read_info",
    "compute_band_stats", "normalize", "BandStats",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".jp2")
_RASTERIO_EXT = (".tif", ".tiff", ".jp2", ".img", ".vrt")


def is_image_file(path: str | Path) -> bool:
    """True when the suffix is a supported image / raster format (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class RasterInfo:
    """Header facts of an image file, read without decoding the pixels."""

    count: int
    height: int
    width: int
    dtype: str


def _pil_to_array(img, path) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if mode == "1" else "RGB")
    elif mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)[None]
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
    return arr


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decodes now: raises OSError on truncated data
            return _pil_to_array(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image ({type(exc).__name__}: {exc})", path=path) from exc


def read_rasterio(path: Path, bands: Sequence[int] | None = None) -> np.ndarray:
    """``(C, H, W)`` of any GDAL-readable raster (GeoTIFF, ENVI, ...), with rsvision's errors."""
    try:
        import rasterio
    except ImportError as exc:  # pragma: no cover - rasterio is a dev / geo extra
        raise DataError("reading TIFF / GeoTIFF needs rasterio (pip install rsvision[geo])", path=path) from exc
    try:
        with warnings.catch_warnings(), rasterio.open(path) as src:
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            idx = None if bands is None else [int(b) + 1 for b in bands]
            if idx is not None and max(idx) > src.count:
                raise BandMismatchError(f"asked for bands {list(bands)} but the file has {src.count}", path=path)
            return src.read(idx)
    except BandMismatchError:
        raise
    except Exception as exc:  # rasterio raises RasterioIOError / CPLE_* on corrupt data
        raise DataError(f"cannot read raster ({type(exc).__name__}: {exc})", path=path) from exc


def read_image(path: str | Path, bands: Sequence[int] | None = None) -> np.ndarray:
    """Read a whole image as a ``(C, H, W)`` array in its native dtype.

    Args:
        path: JPEG / PNG / BMP / TIFF / GeoTIFF ... file.
        bands: 0-based band indices to keep, in this order (None: all bands).

    Raises:
        DataError: missing, corrupt or truncated file (the message names it).
        BandMismatchError: ``bands`` asks for a band the file does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such image file", path=path)
    if path.suffix.lower() in _RASTERIO_EXT:
        return read_rasterio(path, bands)
    arr = _read_pil(path)
    if bands is not None:
        if max(bands) >= arr.shape[0]:
            raise BandMismatchError(f"asked for bands {list(bands)} but the file has {arr.shape[0]}", path=path)
        arr = arr[list(bands)]
    return arr


def read_info(path: str | Path) -> RasterInfo:
    """Band count, size and dtype from the header (cheap: used to check band counts up front)."""
    path = Path(path)
    if path.suffix.lower() in _RASTERIO_EXT:
        try:
            import rasterio

            with warnings.catch_warnings(), rasterio.open(path) as src:
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                return RasterInfo(src.count, src.height, src.width, str(src.dtypes[0]))
        except Exception as exc:
            raise DataError(f"cannot read raster header ({type(exc).__name__}: {exc})", path=path) from exc
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode, (w, h) = img.mode, img.size
            bands = len(img.getbands())
    except Exception as exc:
        raise DataError(f"cannot read image header ({type(exc).__name__}: {exc})", path=path) from exc
    if mode == "P":
        bands = 3
    dtype = {"I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I": "int32", "F": "float32"}.get(mode, "uint8")
    return RasterInfo(bands, h, w, dtype)


@dataclass(frozen=True)
class BandStats:
    """Per-band mean and standard deviation, in the images' native units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def compute_band_stats(images: Iterable[np.ndarray | str | Path], max_pixels_per_image: int | None = 65536,
                       seed: int = 0) -> BandStats:
    """Per-band mean/std over ``images`` (arrays ``(C, H, W)`` or paths), in float64.

    Computed once from the training split and stored in the checkpoint. To stay fast on big
    images, at most ``max_pixels_per_image`` pixels of each image are sampled (seeded; None: all).
    All images must have the same band count.
    """
    rng = np.random.default_rng(seed)
    n = 0
    s = s2 = None
    count = None
    for item in images:
        arr = read_image(item) if isinstance(item, (str, Path)) else np.asarray(item)
        if arr.ndim == 2:
            arr = arr[None]
        c = arr.shape[0]
        if count is None:
            count, s, s2 = c, np.zeros(c), np.zeros(c)
        elif c != count:
            where = item if isinstance(item, (str, Path)) else None
            raise BandMismatchError(f"image has {c} bands, expected {count}", path=where)
        flat = arr.reshape(c, -1)
        if max_pixels_per_image and flat.shape[1] > max_pixels_per_image:
            flat = flat[:, rng.choice(flat.shape[1], max_pixels_per_image, replace=False)]
        flat = flat.astype(np.float64)
        s += flat.sum(1)
        s2 += (flat * flat).sum(1)
        n += flat.shape[1]
    if not n:
        raise DataError("no images to compute band statistics from")
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    std = np.where(std > 1e-12, std, 1.0)  # a constant band must not divide by zero
    return BandStats(tuple(float(m) for m in mean), tuple(float(v) for v in std))


def normalize(arr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(arr - mean) / std`` per band of a ``(C, H, W)`` array -> float32.

    Raises BandMismatchError when the band count differs from the statistics' (e.g. an RGB
    checkpoint applied to a 4-band raster).
    """
    arr = np.asarray(arr)
    c = arr.shape[0]
    if len(mean) != c or len(std) != c:
        raise BandMismatchError(f"image has {c} bands but the normalisation has {len(mean)}")
    m = np.asarray(mean, dtype=np.float32).reshape(c, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(c, 1, 1)
    return (arr.astype(np.float32) - m) / s
