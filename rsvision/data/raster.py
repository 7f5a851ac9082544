"""Reading one image file as a ``(C, H, W)`` array, and per-band normalisation.

Any of JPEG / PNG / BMP / TIFF / GeoTIFF, any band count, uint8 / uint16 / int / float. TIFF
(and anything PIL cannot open) goes through rasterio, so multispectral GeoTIFFs keep all their
bands; other formats through PIL. Pixel values stay in their native units and dtype: the
normalisation (:func:`normalize`) uses per-band mean/std in those same units, so uint8 RGB,
uint16 Sentinel-2 and float reflectance are handled alike and the statistics stored in a
checkpoint are exactly what ``predict`` must apply. A corrupt or truncated file raises
:class:`~rsvision.errors.DataError` naming it (callers may catch it to skip the file).

Checked at the edge, before anything is allocated or predicted: the decoded size against a pixel
budget (:func:`check_pixel_budget`: decompression bombs, huge headers), truncated files (PIL decodes
PNG / JPEG / BMP / GIF / WebP, which report truncation; GDAL read errors are errors), band count.
:func:`prepare_pixels` is the one place raw values become model input: values rescaled when the
file's dtype differs from the training data's (:func:`value_scale`), NaN / inf and nodata pixels
replaced by a fill value (the band mean: 0 after normalisation) and counted, never propagated.

Large scenes are read window by window through a source (:mod:`rsvision.data.sources`).
"""
from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from rsvision.errors import BandMismatchError, DataError

__all__ = [
    "IMAGE_EXTENSIONS", "RasterInfo", "is_image_file", "read_image", "read_info",
    "compute_band_stats", "normalize", "BandStats", "expand_inputs", "max_pixels", "check_pixel_budget",
    "value_scale", "prepare_pixels", "check_dtype", "check_complete",
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
            check_pixel_budget(img.height, img.width, path)  # from the header, before decoding
            img.load()  # decodes now: raises OSError on truncated data
            return _pil_to_array(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image ({type(exc).__name__}: {exc})", path=path) from exc


def read_rasterio(path: Path, bands: Sequence[int] | None = None, with_mask: bool = False):
    """``(C, H, W)`` of any GDAL-readable raster (GeoTIFF, ENVI, ...), with rsvision's errors.

    ``with_mask``: also return GDAL's ``(H, W)`` dataset mask (nodata / alpha; None when it has none).
    """
    try:
        import rasterio
        from rasterio.enums import ColorInterp
    except ImportError as exc:  # pragma: no cover - rasterio is a dev / geo extra
        raise DataError("reading TIFF / GeoTIFF needs rasterio (pip install rsvision[geo])", path=path) from exc
    try:
        with warnings.catch_warnings(), rasterio.open(path) as src:
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            check_pixel_budget(src.height, src.width, path)
            idx = None if bands is None else [int(b) + 1 for b in bands]
            if idx is not None and max(idx) > src.count:
                raise BandMismatchError(f"asked for bands {list(bands)} but the file has {src.count}", path=path)
            check_dtype(src.dtypes[0], path)
            arr = src.read(idx)
            if not with_mask:
                return arr
            has_mask = src.nodata is not None or any(ci == ColorInterp.alpha for ci in src.colorinterp)
            return arr, (src.dataset_mask() > 0 if has_mask else None)
    except (BandMismatchError, DataError):
        raise
    except Exception as exc:  # rasterio raises RasterioIOError / CPLE_* on corrupt data
        raise DataError(f"cannot read raster ({type(exc).__name__}: {exc})", path=path) from exc


def read_image(path: str | Path, bands: Sequence[int] | None = None, with_mask: bool = False):
    """Read a whole image as a ``(C, H, W)`` array in its native dtype.

    Args:
        path: JPEG / PNG / BMP / TIFF / GeoTIFF ... file.
        bands: 0-based band indices to keep, in this order (None: all bands).
        with_mask: return ``(array, valid)``, ``valid`` the ``(H, W)`` nodata / alpha mask of a
            GeoTIFF (None for formats without one).

    Raises:
        DataError: missing, corrupt, truncated or over-budget file (the message names it).
        BandMismatchError: ``bands`` asks for a band the file does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such image file", path=path)
    if path.suffix.lower() in _RASTERIO_EXT or path.suffix.lower() not in IMAGE_EXTENSIONS:
        return read_rasterio(path, bands, with_mask)  # GeoTIFF, and any other GDAL format (ENVI, ...)
    arr = _read_pil(path)
    if bands is not None:
        if max(bands) >= arr.shape[0]:
            raise BandMismatchError(f"asked for bands {list(bands)} but the file has {arr.shape[0]}", path=path)
        arr = arr[list(bands)]
    return (arr, None) if with_mask else arr


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


# --- checks at the edge and the one raw-values -> model-input path ---------------------------------
def max_pixels() -> int:
    """The pixel budget of one image or scene: ``RSVISION_MAX_PIXELS`` (default 2**31, ~46k x 46k)."""
    try:
        return int(float(os.environ.get("RSVISION_MAX_PIXELS", 2**31)))
    except ValueError as exc:
        raise DataError(f"RSVISION_MAX_PIXELS must be a number, got {os.environ['RSVISION_MAX_PIXELS']!r}") from exc


def check_pixel_budget(height: int, width: int, path: str | Path | None = None) -> None:
    """Refuse an image whose header claims more pixels than the budget, before allocating anything."""
    n, budget = int(height) * int(width), max_pixels()
    if n > budget:
        raise DataError(f"{width}x{height} pixels ({n / 1e6:,.0f} Mpx) exceed the pixel budget of "
                        f"{budget / 1e6:,.0f} Mpx; raise RSVISION_MAX_PIXELS if the file is meant to be this big",
                        path=path)


def check_dtype(dtype: str, path: str | Path | None = None) -> None:
    """Pixel values must be real numbers: integers or floats (not complex, not bool)."""
    if np.dtype(dtype).kind not in "uif":
        raise DataError(f"pixel type {dtype} is not supported (expected unsigned / signed integers or floats)",
                        path=path)


def check_complete(ds, path: str | Path | None = None) -> None:
    """Refuse a GeoTIFF cut short (an interrupted download or copy) when it is opened, not windows later.

    GDAL opens a truncated TIFF (its header and tile index sit at the start) and fails only on the
    first block past the end, which for a whole scene can be an hour of prediction in. The tile / strip
    index gives every block's byte range: one past the file's size means the file is incomplete. A
    block that is present but corrupt still fails when it is read.
    """
    if ds.driver != "GTiff" or not ds.name or not os.path.isfile(ds.name):
        return
    by, bx = ds.block_shapes[0]
    nx, ny = -(-ds.width // bx), -(-ds.height // by)
    planes = [1] if ds.interleaving is None or ds.interleaving.name == "pixel" else range(1, ds.count + 1)
    end = 0
    for b in planes:
        for y in range(ny):
            for x in range(nx):
                off = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b)
                if off:  # absent / 0: a sparse block, read as nodata
                    end = max(end, int(off) + int(ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=b) or 0))
    size = os.path.getsize(ds.name)
    if end > size:
        raise DataError(f"truncated: its tiles need {end:,} bytes, the file has {size:,} "
                        "(an interrupted download or copy?)", path=path)


def _nominal_max(dtype: str) -> float:
    dt = np.dtype(dtype)
    return 1.0 if dt.kind == "f" else float(np.iinfo(dt).max)


def value_scale(dtype: str | None, train_dtype: str | None) -> float:
    """Factor taking values of ``dtype`` to the range the model was trained on (``train_dtype``).

    The same scene stored as uint8 (0-255), uint16 (0-65535) or float (0-1 reflectance) maps by the
    ratio of the types' nominal ranges; 1 when the dtypes agree or the checkpoint records none.
    """
    if dtype is None or train_dtype is None or np.dtype(dtype) == np.dtype(train_dtype):
        return 1.0
    if np.dtype(dtype).kind == "f" and np.dtype(train_dtype).kind == "f":
        return 1.0
    return _nominal_max(train_dtype) / _nominal_max(dtype)


def prepare_pixels(arr: np.ndarray, valid: np.ndarray | None = None, fill: Sequence[float] | None = None,
                   scale: float = 1.0, path: str | Path | None = None, require_valid: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(C, H, W)`` values -> float32 model input and the ``(H, W)`` mask of usable pixels.

    Pixels that are nodata / alpha (``valid`` False) or NaN / inf in any band are replaced by ``fill``
    (per band, raw units; default 0) so nothing non-finite reaches a model. ``scale`` rescales values
    (see :func:`value_scale`). ``require_valid``: raise DataError for an input without a single usable
    pixel (a window of a scene may be all nodata; a whole image may not).
    """
    x = np.asarray(arr, dtype=np.float32)
    if scale != 1.0:
        x = x * np.float32(scale)
    ok = np.isfinite(x).all(0) if x.dtype.kind == "f" else np.ones(x.shape[-2:], bool)
    if valid is not None:
        ok &= valid
    if require_valid and not ok.any():
        raise DataError("no usable pixels (all nodata, NaN or inf)", path=path)
    if not ok.all():
        x = np.array(x, copy=True)
        f = np.zeros(x.shape[0], np.float32) if fill is None else np.asarray(fill, np.float32).reshape(-1)
        x[:, ~ok] = f[:, None]
    return x, ok
