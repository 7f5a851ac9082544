"""Reading one image file as a ``(C, H, W)`` array, and per-band normalisation.

Any of JPEG / PNG / BMP / TIFF / GeoTIFF, any band count, uint8 / uint16 / int / float. TIFF
(and anything PIL cannot open) goes through rasterio, so multispectral GeoTIFFs keep all their
bands; other formats through PIL. Pixel values stay in their native units and dtype: the
normalisation (:func:`normalize`) uses per-band mean/std in those same units, so uint8 RGB,
uint16 Sentinel-2 and float reflectance are handled alike and the statistics stored in a
checkpoint are exactly what ``predict`` must apply. A corrupt or truncated file raises
:class:`~rsvision.errors.DataError` naming it (callers may catch it to skip the file).

Large scenes are read window by window through a *source* (:func:`open_source`): a
:class:`RasterSource` (any GDAL raster, lazily, with its nodata / alpha mask), an
:class:`ArraySource` (an in-memory array) or a :class:`PairSource` (two co-registered dates);
windows come from :mod:`rsvision.data.tiling`.
"""
from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from rsvision.data.tiling import Window
from rsvision.errors import BandMismatchError, DataError

__all__ = [
    "IMAGE_EXTENSIONS", "RasterInfo", "is_image_file", "read_image", "read_info",
    "compute_band_stats", "normalize", "BandStats", "expand_inputs", "ArraySource", "RasterSource", "PairSource", "open_source",
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
    if path.suffix.lower() in _RASTERIO_EXT or path.suffix.lower() not in IMAGE_EXTENSIONS:
        return read_rasterio(path, bands)  # GeoTIFF, and any other GDAL format (ENVI, ...)
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


def normalize(x: np.ndarray | torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor, path: str | Path | None = None) -> np.ndarray | torch.Tensor:
    """``(x - mean) / std`` per band, bands on axis -3 (``(C, H, W)``, ``(B, C, H, W)``, pairs) -> float32.

    The one place rsvision normalises pixels: every task stores per-band mean / std in native units
    in its checkpoint and applies them through here, for numpy arrays and tensors (on their device).
    Raises BandMismatchError when the band count differs from the statistics' (e.g. an RGB
    checkpoint applied to a 4-band raster).
    """
    c = x.shape[-3] if x.ndim >= 3 else 1
    if len(mean) != c or len(std) != c:
        raise BandMismatchError(f"image has {c} bands but the normalisation has {len(mean)}", path=path)
    if isinstance(x, torch.Tensor):
        m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        return (x.float() - m) / s
    m = np.asarray(mean, dtype=np.float32).reshape(c, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(c, 1, 1)
    return (np.asarray(x).astype(np.float32) - m) / s


def expand_inputs(inputs: Sequence[str | Path], extensions: Sequence[str] | None = None,
                  recursive: bool = False) -> list[Path]:
    """Files, folders (their image files, sorted) and glob patterns -> de-duplicated file list.

    Raises DataError naming the first input that matches nothing.
    """
    exts = {e.lower() for e in (IMAGE_EXTENSIONS if extensions is None else extensions)}
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        rp = p.resolve()
        if rp not in seen:
            seen.add(rp)
            out.append(p)

    for item in inputs:
        p = Path(item)
        found: list[Path] = []
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(q for q in it if q.is_file() and q.suffix.lower() in exts)
        elif p.is_file():
            found = [p]
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(str(item), recursive=True)
                           if Path(q).is_file() and Path(q).suffix.lower() in exts)
        if not found:
            raise DataError("no input images found", path=item)
        for q in found:
            add(q)
    return out


# --- windowed sources ------------------------------------------------------------------------
class ArraySource:
    """An in-memory ``(C, H, W)`` image (or ``(2, C, H, W)`` pair) read window by window."""

    def __init__(self, array: np.ndarray | torch.Tensor):
        self.array = array
        self.height, self.width = int(array.shape[-2]), int(array.shape[-1])
        self.count = int(array.shape[-3])
        self.transform = None
        self.crs = None
        self.path = None

    def read(self, w: Window) -> np.ndarray:
        a = self.array[..., w.y0 : w.y1, w.x0 : w.x1]
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        return a.astype(np.float32, copy=False)

    def valid(self, w: Window) -> np.ndarray:
        return np.ones((w.height, w.width), bool)


class RasterSource:
    """A raster file (GeoTIFF, ENVI, PNG, JPEG, ... anything GDAL opens) read lazily by windows.

    ``bands`` are 1-based band indexes to read (default: all except an alpha band). ``valid``
    comes from GDAL's dataset mask, which covers nodata values and alpha.
    """

    def __init__(self, path: str | Path, bands: Sequence[int] | None = None):
        import rasterio
        from rasterio.enums import ColorInterp
        from rasterio.errors import NotGeoreferencedWarning

        self.path = Path(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(f"cannot open raster: {exc}", path=self.path) from exc
        if bands is None:
            bands = [i + 1 for i, ci in enumerate(self.ds.colorinterp) if ci != ColorInterp.alpha] or [1]
        bad = [b for b in bands if not 1 <= b <= self.ds.count]
        if bad:
            raise BandMismatchError(f"band(s) {bad} not in a {self.ds.count}-band raster", path=self.path)
        self.bands = list(bands)
        self.count = len(self.bands)
        self.height, self.width = self.ds.height, self.ds.width
        georef = self.ds.crs is not None or not self.ds.transform.is_identity
        self.transform = self.ds.transform if georef else None
        self.crs = self.ds.crs
        self.has_mask = self.ds.nodata is not None or any(ci == ColorInterp.alpha for ci in self.ds.colorinterp)

    def read(self, w: Window) -> np.ndarray:
        from rasterio.windows import Window as RWindow

        try:
            return self.ds.read(self.bands, window=RWindow(w.x0, w.y0, w.width, w.height)).astype(np.float32)
        except Exception as exc:  # truncated / corrupt files fail here, not at open
            raise DataError(f"cannot read window {w}: {exc}", path=self.path) from exc

    def valid(self, w: Window) -> np.ndarray:
        if not self.has_mask:
            return np.ones((w.height, w.width), bool)
        from rasterio.windows import Window as RWindow

        return self.ds.dataset_mask(window=RWindow(w.x0, w.y0, w.width, w.height)) > 0

    def close(self) -> None:
        self.ds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PairSource:
    """Two co-registered sources read as ``(2, C, h, w)`` pairs (date A, date B)."""

    def __init__(self, a, b):
        if (a.height, a.width) != (b.height, b.width):
            raise DataError(f"pair sizes differ: {a.height}x{a.width} vs {b.height}x{b.width}", path=getattr(b, "path", None))
        if a.count != b.count:
            raise BandMismatchError(f"pair band counts differ: {a.count} vs {b.count}", path=getattr(b, "path", None))
        self.a, self.b = a, b
        self.height, self.width, self.count = a.height, a.width, a.count
        self.transform, self.crs, self.path = a.transform, a.crs, a.path

    def read(self, w: Window) -> np.ndarray:
        return np.stack([self.a.read(w), self.b.read(w)], 0)

    def valid(self, w: Window) -> np.ndarray:
        return self.a.valid(w) & self.b.valid(w)

    def close(self) -> None:
        for s in (self.a, self.b):
            if hasattr(s, "close"):
                s.close()


def open_source(x: Any, bands: Sequence[int] | None = None):
    """Array/tensor -> :class:`ArraySource`; path -> :class:`RasterSource`; source -> itself."""
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return ArraySource(x)
    if isinstance(x, (str, Path)):
        return RasterSource(x, bands)
    return x
