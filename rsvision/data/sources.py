"""Windowed sources: a scene of any size read window by window, never whole (``rsvision.data.tiling``).

:class:`RasterSource` (any GDAL raster, lazily; PNG / JPEG / BMP / GIF / WebP decoded by PIL, which
reports truncated files that GDAL would pass as garbage), :class:`ArraySource` (an in-memory array)
and :class:`PairSource` (two co-registered dates) share one contract: ``height``, ``width``,
``count``, ``transform``, ``crs``, ``path``; ``read(window)`` -> float32 ``(C, h, w)`` model input;
``valid(window)`` -> ``(h, w)`` usable pixels. ``read`` goes through
:func:`rsvision.data.raster.prepare_pixels`: values rescaled to the training dtype's range, nodata /
alpha / NaN / inf pixels replaced by ``fill`` (set it to the checkpoint's band means: 0 after
normalisation) and counted in ``invalid_pixels``. Opening checks the pixel budget and the bands.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rsvision.data.raster import (_read_pil, check_complete, check_dtype, check_pixel_budget, prepare_pixels,
                                  value_scale)
from rsvision.data.tiling import Window
from rsvision.errors import BandMismatchError, DataError

__all__ = ["ArraySource", "RasterSource", "PairSource", "open_source", "PIL_FORMATS"]

#: formats decoded whole by PIL (no tiles to read lazily; PIL reports truncation)
PIL_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class _Source:
    fill: Sequence[float] | None = None
    scale: float = 1.0
    path: Path | None = None

    def __init__(self) -> None:
        self.invalid_pixels = 0  # nodata / NaN / inf pixels replaced while reading

    def _raw(self, w: Window) -> np.ndarray:
        raise NotImplementedError

    def _mask(self, w: Window) -> np.ndarray | None:
        return None

    def read(self, w: Window) -> np.ndarray:
        x, ok = prepare_pixels(self._raw(w), self._mask(w), self.fill, self.scale, self.path, require_valid=False)
        self.invalid_pixels += int(ok.size - ok.sum())
        return x

    def any_valid(self, w: Window) -> bool:
        """False when the nodata / alpha mask says no pixel of ``w`` is usable (cheap: no pixels read),
        so whole-scene prediction skips the window."""
        m = self._mask(w)
        return True if m is None else bool(m.any())

    def valid(self, w: Window) -> np.ndarray:
        raw = self._raw(w)
        ok = np.isfinite(raw).all(0) if raw.dtype.kind == "f" else np.ones(raw.shape[-2:], bool)
        m = self._mask(w)
        return ok & m if m is not None else ok

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ArraySource(_Source):
    """An in-memory ``(C, H, W)`` image read window by window (``valid``: finite pixels)."""

    def __init__(self, array: np.ndarray | torch.Tensor, path: str | Path | None = None):
        super().__init__()
        self.array = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        self.height, self.width = int(self.array.shape[-2]), int(self.array.shape[-1])
        self.count = int(self.array.shape[-3])
        self.transform = None
        self.crs = None
        self.path = Path(path) if path is not None else None

    def _raw(self, w: Window) -> np.ndarray:
        return self.array[..., w.y0 : w.y1, w.x0 : w.x1]


class RasterSource(_Source):
    """A raster file (GeoTIFF, ENVI, PNG, JPEG, ... anything GDAL opens) read lazily by windows.

    ``bands``: 1-based band indexes to read (default: all except an alpha band). ``valid`` combines
    GDAL's dataset mask (nodata values, alpha) with finiteness. ``train_dtype``: the dtype of the
    model's training data (values of another dtype are rescaled, :func:`value_scale`).
    """

    def __init__(self, path: str | Path, bands: Sequence[int] | None = None, fill: Sequence[float] | None = None,
                 train_dtype: str | None = None):
        import rasterio
        from rasterio.enums import ColorInterp
        from rasterio.errors import NotGeoreferencedWarning

        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("no such raster file", path=self.path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(f"cannot open raster: {exc}", path=self.path) from exc
        try:
            check_pixel_budget(self.ds.height, self.ds.width, self.path)
            check_dtype(self.ds.dtypes[0], self.path)
            check_complete(self.ds, self.path)
            if bands is None:
                bands = [i + 1 for i, ci in enumerate(self.ds.colorinterp) if ci != ColorInterp.alpha] or [1]
            bad = [b for b in bands if not 1 <= b <= self.ds.count]
            if bad:
                raise BandMismatchError(f"band(s) {bad} not in a {self.ds.count}-band raster", path=self.path)
            self.bands = list(bands)
            self.array = None
            if self.path.suffix.lower() in PIL_FORMATS:  # decoded once, whole: truncation is an error
                full = _read_pil(self.path)
                if full.shape[0] != self.ds.count:
                    raise DataError(f"GDAL sees {self.ds.count} bands, PIL {full.shape[0]}", path=self.path)
                self.array = full[[b - 1 for b in self.bands]]
        except Exception:
            self.ds.close()
            raise
        self.count = len(self.bands)
        self.height, self.width = self.ds.height, self.ds.width
        georef = self.ds.crs is not None or not self.ds.transform.is_identity
        self.transform = self.ds.transform if georef else None
        self.crs = self.ds.crs
        self.has_mask = self.ds.nodata is not None or any(ci == ColorInterp.alpha for ci in self.ds.colorinterp)
        self.dtype = str(self.ds.dtypes[0])
        self.fill, self.scale = fill, value_scale(self.dtype, train_dtype)
        self._last_mask: tuple[Window, np.ndarray] | None = None
        self._lock = threading.RLock()

    def _raw(self, w: Window) -> np.ndarray:
        from rasterio.windows import Window as RWindow

        if self.array is not None:
            return self.array[:, w.y0 : w.y1, w.x0 : w.x1]
        try:
            with self._lock:  # one GDAL dataset handle: one thread at a time (reads run ahead in a thread)
                return self.ds.read(self.bands, window=RWindow(w.x0, w.y0, w.width, w.height))
        except Exception as exc:  # truncated / corrupt files fail here, not at open
            raise DataError(f"cannot read window {w}: {exc}", path=self.path) from exc

    def _mask(self, w: Window) -> np.ndarray | None:
        if not self.has_mask:
            return None
        from rasterio.windows import Window as RWindow

        with self._lock:
            last = self._last_mask
            if last is not None and last[0] == w:  # any_valid(w) then read(w): one mask read
                return last[1]
            try:
                m = self.ds.dataset_mask(window=RWindow(w.x0, w.y0, w.width, w.height)) > 0
            except Exception as exc:
                raise DataError(f"cannot read the mask of window {w}: {exc}", path=self.path) from exc
            self._last_mask = (w, m)
            return m

    def overview(self, out_shape: tuple[int, int]) -> np.ndarray:
        """A decimated ``(C, h, w)`` float32 read for pictures (GDAL overviews; never the full scene)."""
        if self.array is not None:
            sy, sx = max(1, self.height // out_shape[0]), max(1, self.width // out_shape[1])
            return np.asarray(self.array[:, ::sy, ::sx][:, : out_shape[0], : out_shape[1]], np.float32) * self.scale
        try:
            with self._lock:
                a = self.ds.read(self.bands, out_shape=(self.count, *out_shape)).astype(np.float32)
        except Exception as exc:
            raise DataError(f"cannot read an overview: {exc}", path=self.path) from exc
        return a * self.scale

    def close(self) -> None:
        with self._lock:
            self.ds.close()


class PairSource(_Source):
    """Two co-registered sources read as ``(2, C, h, w)`` pairs (date A, date B)."""

    def __init__(self, a, b):
        super().__init__()
        try:
            names = f"{getattr(a, 'path', None) or 'A'} and {getattr(b, 'path', None) or 'B'}"
            if (a.height, a.width) != (b.height, b.width):
                raise DataError(f"the dates of a pair differ in size: {a.width}x{a.height} vs {b.width}x{b.height} "
                                f"({names})")
            if a.count != b.count:
                raise BandMismatchError(f"the dates of a pair differ in band count: {a.count} vs {b.count} ({names})")
        except DataError:
            a.close(), b.close()
            raise
        self.a, self.b = a, b
        self.height, self.width, self.count = a.height, a.width, a.count
        self.transform, self.crs, self.path = a.transform, a.crs, a.path

    @property
    def invalid_pixels(self) -> int:
        return self.a.invalid_pixels + self.b.invalid_pixels

    @invalid_pixels.setter
    def invalid_pixels(self, v: int) -> None:
        pass

    def read(self, w: Window) -> np.ndarray:
        return np.stack([self.a.read(w), self.b.read(w)], 0)

    def valid(self, w: Window) -> np.ndarray:
        return self.a.valid(w) & self.b.valid(w)

    def any_valid(self, w: Window) -> bool:
        return self.a.any_valid(w) and self.b.any_valid(w)

    def close(self) -> None:
        self.a.close()
        self.b.close()


def open_source(x: Any, bands: Sequence[int] | None = None, fill: Sequence[float] | None = None,
                train_dtype: str | None = None):
    """Array/tensor -> :class:`ArraySource`; path -> :class:`RasterSource`; source -> itself.

    ``bands`` are 1-based (rasters); ``fill`` / ``train_dtype`` see :class:`RasterSource`.
    """
    if isinstance(x, (np.ndarray, torch.Tensor)):
        src = ArraySource(x)
        src.fill = fill
        return src
    if isinstance(x, (str, Path)):
        return RasterSource(x, bands, fill, train_dtype)
    if fill is not None and getattr(x, "fill", None) is None:
        x.fill = fill
    return x
