"""Map tiles rendered per request from the rasters themselves (nothing pre-cut, nothing written under PATH).

Georeferenced rasters are cut into Web-Mercator tiles by rio-tiler; rasters without a CRS are cut in
pixel coordinates (Leaflet's CRS.Simple: at zoom ``z`` one tile covers ``256 / 2**z`` pixels a side).
Both read decimated windows, so GDAL takes the raster's overviews (internal, COG or ``.ovr``) when it has
them. A big raster without overviews would make every zoomed-out tile read the whole scene, so one
decimated copy with its own overviews is built once into the viewer's cache folder (keyed by the file's
path, size and mtime) and serves the zoom levels it covers; PATH itself stays untouched.

Scenes are shown as RGB from any three bands (or one band as grey), stretched between fixed per-band
limits: the 2nd / 98th percentiles of the valid pixels of a decimated read (``percentile``; ``auto`` does
this for every dtype except uint8, which is shown as stored). Masks are coloured by their palette,
nodata and hidden classes transparent.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rio_tiler.errors import NoOverviewWarning, TileOutsideBounds
from rio_tiler.io import Reader

__all__ = ["TileRenderer", "TILE"]

TILE = 256
_EMPTY: bytes | None = None


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def empty_tile() -> bytes:
    global _EMPTY
    if _EMPTY is None:
        _EMPTY = _png(np.zeros((TILE, TILE, 4), np.uint8))
    return _EMPTY


@contextlib.contextmanager
def _quiet():
    """Rasters without a CRS are expected here (pixel-coordinate views): no warning for them, nor for
    rasters without overviews."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        warnings.simplefilter("ignore", NoOverviewWarning)  # small rasters need none; big ones get the cached copy
        yield


def _in_memory(r) -> bool:
    """PNG / JPEG are not tiled (GDAL decodes the whole file for any window): decoded once, kept in memory."""
    return r.driver in ("PNG", "JPEG") and r.width * r.height <= 64_000_000


class TileRenderer:
    """Render scene and mask tiles of :class:`~rsvision.viz.viewer.layers.Raster` items.

    ``overview_threshold``: rasters whose longer side exceeds it and that have no overviews get the
    cached decimated copy (at most ``overview_threshold`` pixels a side) in ``cache_dir``."""

    def __init__(self, cache_dir: str | Path, overview_threshold: int = 4096):
        self.cache_dir = Path(cache_dir)
        self.threshold = int(overview_threshold)
        self._stats: dict[tuple, np.ndarray] = {}
        self._ovr: dict[str, tuple[Path, int] | None] = {}
        self._lock = threading.Lock()
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()  # decoded PNG / JPEG (not tiled: read whole once)

    # -- overviews ---------------------------------------------------------------------------------
    def overview(self, r) -> tuple[Path, int] | None:
        """``(cached copy, decimation factor)`` for a big raster without overviews, else None (built on
        first use, under a lock; the copy is written to a temporary name and renamed)."""
        if r.id in self._ovr:
            return self._ovr[r.id]
        with self._lock:
            if r.id in self._ovr:
                return self._ovr[r.id]
            big = max(r.width, r.height) > self.threshold and not _in_memory(r)
            self._ovr[r.id] = self._build_overview(r) if big else None
            return self._ovr[r.id]

    def _build_overview(self, r) -> tuple[Path, int] | None:

        with _quiet(), rasterio.open(r.path) as ds:
            if ds.overviews(1):
                return None
            f = 2 ** math.ceil(math.log2(max(r.width, r.height) / self.threshold))
            st = r.path.stat()
            key = hashlib.sha1(f"{r.path}|{st.st_size}|{st.st_mtime_ns}|{f}".encode()).hexdigest()[:20]
            out = self.cache_dir / f"{key}.tif"
            if out.is_file():
                return out, f
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            w, h = math.ceil(ds.width / f), math.ceil(ds.height / f)
            prof = dict(driver="GTiff", width=w, height=h, count=ds.count, dtype=ds.dtypes[0], tiled=True,
                        blockxsize=256, blockysize=256, compress="deflate", nodata=ds.nodata)
            if ds.crs is not None:
                prof.update(crs=ds.crs, transform=ds.transform * ds.transform.scale(f, f))
            resampling = Resampling.nearest if r.kind == "mask" else Resampling.average
            tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.tif")
            with rasterio.open(tmp, "w", **prof) as dst:
                if r.kind == "mask":
                    try:
                        dst.write_colormap(1, ds.colormap(1))
                    except ValueError:
                        pass
                for y in range(0, h, 256):  # strips of the output: the source is read once, bounded memory
                    hh = min(256, h - y)
                    win = Window(0, y * f, ds.width, min(hh * f, ds.height - y * f))
                    dst.write(ds.read(window=win, out_shape=(ds.count, hh, w), resampling=resampling),
                              window=Window(0, y, w, hh))
                if min(w, h) > 512:
                    dst.build_overviews([2, 4, 8, 16][: max(1, int(math.log2(min(w, h) / 256)))], resampling)
            os.replace(tmp, out)
            return out, f

    # -- reading -----------------------------------------------------------------------------------
    def _read_px(self, r, bands: Sequence[int], c0: float, r0: float, c1: float, r1: float,
                 out_w: int, out_h: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel region ``[c0, c1) x [r0, r1)`` of ``r`` resampled to ``out_h x out_w``: ``(bands, h, w)``
        data and a validity mask (nodata / alpha / outside: False)."""

        if _in_memory(r):
            arr, valid = self._decoded(r)
            ys = np.clip(np.floor(r0 + (np.arange(out_h) + 0.5) * (r1 - r0) / out_h).astype(int), 0, r.height - 1)
            xs = np.clip(np.floor(c0 + (np.arange(out_w) + 0.5) * (c1 - c0) / out_w).astype(int), 0, r.width - 1)
            return arr[np.asarray(bands) - 1][:, ys][:, :, xs], valid[ys][:, xs]
        path, f = r.path, 1
        ovr = self.overview(r)
        if ovr is not None and (c1 - c0) / out_w >= ovr[1]:  # coarser than the cached copy: read it
            path, f = ovr
        resampling = Resampling.nearest if r.kind == "mask" else Resampling.bilinear
        with _quiet(), rasterio.open(path) as ds:
            win = Window(c0 / f, r0 / f, (c1 - c0) / f, (r1 - r0) / f)
            data = ds.read(list(bands), window=win, out_shape=(len(bands), out_h, out_w), resampling=resampling)
            valid = ds.read_masks(1, window=win, out_shape=(out_h, out_w), resampling=Resampling.nearest) > 0
        return data, valid

    def _decoded(self, r) -> tuple[np.ndarray, np.ndarray]:

        with self._lock:
            if r.id in self._mem:
                self._mem.move_to_end(r.id)
                return self._mem[r.id]
        with _quiet(), rasterio.open(r.path) as ds:
            item = (ds.read(), ds.read_masks(1) > 0)
        with self._lock:
            self._mem[r.id] = item
            while len(self._mem) > 8:
                self._mem.popitem(last=False)
        return item

    def limits(self, r, bands: Sequence[int], mode: str) -> np.ndarray:
        """``(bands, 2)`` display limits: dtype range (``none``, and ``auto`` for uint8) or the 2nd / 98th
        percentiles of the valid pixels of a read of at most 1024 pixels a side."""
        dt = np.dtype(r.dtype)
        if mode == "none" or (mode == "auto" and dt == np.uint8):
            hi = float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else 1.0
            lo = float(np.iinfo(dt).min) if np.issubdtype(dt, np.signedinteger) else 0.0
            return np.tile([lo, hi], (len(bands), 1))
        key = (r.id, tuple(bands))
        if key not in self._stats:
            s = min(1.0, 1024 / max(r.width, r.height))
            data, valid = self._read_px(r, bands, 0, 0, r.width, r.height, max(1, round(r.width * s)),
                                        max(1, round(r.height * s)))
            lim = []
            for b in data.astype(np.float64):
                v = b[valid & np.isfinite(b)]
                lim.append(np.percentile(v, [2, 98]) if v.size else [0.0, 1.0])
            self._stats[key] = np.asarray(lim, np.float64)
        return self._stats[key]

    # -- tiles -------------------------------------------------------------------------------------
    def _region(self, r, z: int, x: int, y: int, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        if r.georef:
            return self._mercator(r, z, x, y, bands)
        span = TILE / 2.0 ** z  # pixels a tile covers
        c0, r0 = x * span, y * span
        cc0, rr0, cc1, rr1 = max(c0, 0), max(r0, 0), min(c0 + span, r.width), min(r0 + span, r.height)
        if cc0 >= cc1 or rr0 >= rr1:
            return None
        px = lambda v: int(round(v * 2.0 ** z))  # noqa: E731 - raster pixels -> tile pixels
        ox, oy = px(cc0 - c0), px(rr0 - r0)
        w, h = max(1, min(TILE - ox, px(cc1 - c0) - ox)), max(1, min(TILE - oy, px(rr1 - r0) - oy))
        data, valid = self._read_px(r, bands, cc0, rr0, cc1, rr1, w, h)
        full = np.zeros((len(bands), TILE, TILE), data.dtype)
        fv = np.zeros((TILE, TILE), bool)
        full[:, oy: oy + h, ox: ox + w], fv[oy: oy + h, ox: ox + w] = data, valid
        return full, fv

    def _mercator(self, r, z: int, x: int, y: int, bands: Sequence[int]):

        path = r.path
        ovr = self.overview(r)
        with _quiet(), Reader(path) as src:
            if ovr is not None:
                native = src.maxzoom
                if z <= native - int(math.log2(ovr[1])):  # the cached copy is fine enough for this zoom
                    path = ovr[0]
        try:
            with _quiet(), Reader(path) as src:
                img = src.tile(x, y, z, tilesize=TILE, indexes=list(bands),
                               resampling_method="nearest" if r.kind == "mask" else "bilinear")
        except TileOutsideBounds:
            return None
        return np.asarray(img.data), np.asarray(img.mask) > 0

    def scene_tile(self, r, z: int, x: int, y: int, bands: Sequence[int] | None = None, stretch: str = "auto") -> bytes:
        bands = list(bands or r.rgb)
        got = self._region(r, z, x, y, bands)
        if got is None:
            return empty_tile()
        data, valid = got
        lim = self.limits(r, bands, stretch)
        lo, hi = lim[:, 0, None, None], lim[:, 1, None, None]
        rgb = np.clip((data.astype(np.float32) - lo) / np.maximum(hi - lo, 1e-9) * 255 + 0.5, 0, 255).astype(np.uint8)
        if rgb.shape[0] < 3:
            rgb = np.repeat(rgb[:1], 3, 0)
        valid &= np.isfinite(data).all(0)
        return _png(np.concatenate([rgb[:3].transpose(1, 2, 0), (valid * 255).astype(np.uint8)[..., None]], -1))

    def mask_tile(self, r, z: int, x: int, y: int, palette: Sequence[Sequence[int]], hide: Sequence[int] = ()) -> bytes:
        got = self._region(r, z, x, y, [1])
        if got is None:
            return empty_tile()
        data, valid = got
        lut = np.zeros((256, 4), np.uint8)
        pal = np.asarray(palette, np.uint8).reshape(-1, 3)[:255]
        lut[: len(pal), :3], lut[: len(pal), 3] = pal, 255
        for h in hide:
            if 0 <= int(h) < 256:
                lut[int(h), 3] = 0
        if r.nodata is not None and 0 <= r.nodata < 256:
            lut[int(r.nodata), 3] = 0
        lut[255, 3] = 0  # rsvision's nodata value in masks
        idx = np.clip(data[0], 0, 255).astype(np.uint8)
        rgba = lut[idx]
        rgba[~valid, 3] = 0
        return _png(rgba)
