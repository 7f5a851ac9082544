"""CRS-aware outputs: single-band tiled, compressed GeoTIFF masks and GeoJSON polygons.

Masks keep the input raster's CRS and affine transform so they overlay the source in any GIS;
:class:`MaskWriter` takes row strips so whole-scene prediction never holds the full mask in memory.
GeoJSON follows RFC 7946 geometry with the legacy ``crs`` member (as GDAL writes it) when the CRS
is not WGS 84, so projected coordinates (UTM, ...) stay usable without reprojection.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rsvision.errors import DataError

__all__ = ["MaskWriter", "write_mask_geotiff", "write_geojson", "pixel_to_crs", "crs_member", "class_tags",
           "write_mask_vectors", "write_feature_collection", "VECTOR_FORMATS"]


def _palette_to_colormap(palette: Sequence[Sequence[int]] | np.ndarray | None) -> dict[int, tuple[int, int, int, int]] | None:
    if palette is None:
        return None
    return {i: tuple(int(v) for v in c[:3]) + (255,) for i, c in enumerate(palette)}


class MaskWriter:
    """Write a ``height x width`` single-band mask as tiled, DEFLATE-compressed GeoTIFF, strip by strip.

    >>> with MaskWriter("out.tif", 512, 512, transform=src.transform, crs=src.crs) as w:  # doctest: +SKIP
    ...     w.write_rows(0, mask[:256]); w.write_rows(256, mask[256:])
    """

    def __init__(
        self,
        path: str | Path,
        height: int,
        width: int,
        transform: Any = None,
        crs: Any = None,
        dtype: str = "uint8",
        nodata: int | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        block: int = 256,
        compress: str = "deflate",
        tags: Mapping[str, Any] | None = None,
    ):
        import rasterio

        import tempfile

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.{os.getpid()}.", suffix=".tmp.tif", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)  # written here, renamed to ``path`` by close(): a killed run leaves no half mask
        profile: dict[str, Any] = dict(
            driver="GTiff", height=int(height), width=int(width), count=1, dtype=dtype, compress=compress,
            predictor=2 if compress in ("deflate", "lzw") else 1,
        )
        if height >= 16 and width >= 16:  # GeoTIFF tiles must be multiples of 16
            bx = min(block, (width // 16) * 16)
            by = min(block, (height // 16) * 16)
            profile.update(tiled=True, blockxsize=bx, blockysize=by)
        if transform is not None:
            profile["transform"] = transform
        if crs is not None:
            profile["crs"] = crs
        if nodata is not None:
            profile["nodata"] = nodata
        import warnings

        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():  # plain-image input: a mask without georeferencing is fine
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._ds = rasterio.open(self._tmp, "w", **profile)
        cmap = _palette_to_colormap(palette)
        if cmap is not None and dtype == "uint8":
            self._ds.write_colormap(1, cmap)
        if tags:
            self._ds.update_tags(**{k: str(v) for k, v in tags.items()})
        self.height, self.width = int(height), int(width)

    def write_rows(self, y0: int, rows: np.ndarray) -> None:
        """Write ``rows`` (``(h, width)``) starting at image row ``y0``."""
        from rasterio.windows import Window

        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.width or y0 < 0 or y0 + rows.shape[0] > self.height:
            raise ValueError(f"rows {rows.shape} at y0={y0} do not fit a {self.height} x {self.width} mask")
        self._ds.write(rows.astype(self._ds.dtypes[0], copy=False), 1, window=Window(0, y0, self.width, rows.shape[0]))

    def close(self, commit: bool = True) -> None:
        """Finish the file: renamed into place (``commit``), or removed (a failed run)."""
        if self._ds is not None and not self._ds.closed:
            self._ds.close()
            if commit:
                os.replace(self._tmp, self.path)
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "MaskWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(commit=exc_type is None)


def write_mask_geotiff(
    path: str | Path,
    mask: np.ndarray,
    transform: Any = None,
    crs: Any = None,
    nodata: int | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    like: str | Path | None = None,
) -> Path:
    """Write an ``(H, W)`` integer mask as a single-band tiled, compressed GeoTIFF.

    ``like`` copies CRS and transform from an existing raster (explicit arguments win).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {mask.shape}")
    if like is not None:
        import rasterio

        try:
            with rasterio.open(like) as src:
                transform = transform if transform is not None else src.transform
                crs = crs if crs is not None else src.crs
                if (src.height, src.width) != mask.shape:
                    raise DataError(f"mask {mask.shape} does not match raster size {(src.height, src.width)}", path=like)
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(f"cannot read reference raster: {exc}", path=like) from exc
    dtype = "uint8" if mask.min(initial=0) >= 0 and mask.max(initial=0) <= 255 else "int32"
    with MaskWriter(path, mask.shape[0], mask.shape[1], transform, crs, dtype=dtype, nodata=nodata, palette=palette) as w:
        w.write_rows(0, mask)
    return Path(path)


def pixel_to_crs(points_px: np.ndarray, transform: Any) -> np.ndarray:
    """``(..., 2)`` pixel ``(x=col, y=row)`` coordinates -> CRS coordinates via an affine transform.

    Pixel coordinates are continuous: ``(0, 0)`` is the outer corner of the top-left pixel, as in
    DOTA polygons and GDAL. ``transform=None`` returns the pixel coordinates unchanged.
    """
    pts = np.asarray(points_px, dtype=np.float64)
    if transform is None:
        return pts.copy()
    a, b, c, d, e, f = (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)
    x, y = pts[..., 0], pts[..., 1]
    return np.stack([a * x + b * y + c, d * x + e * y + f], -1)


def crs_member(crs: Any) -> dict | None:
    """The legacy GeoJSON ``crs`` member for a non-WGS 84 CRS (``None`` for WGS 84 / unknown)."""
    if crs is None:
        return None
    from rasterio.crs import CRS

    crs = CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    if epsg == 4326:
        return None
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def write_geojson(
    polygons_px: np.ndarray | Sequence[Sequence[float]],
    props: Sequence[Mapping[str, Any]] | None,
    transform: Any,
    crs: Any,
    path: str | Path,
) -> Path:
    """Write pixel polygons ``(N, 2k)`` (DOTA ``(N, 8)`` for rotated boxes) as a GeoJSON FeatureCollection.

    Vertices go through ``transform`` (pixel -> CRS; ``None`` keeps pixels); each ring is closed
    and oriented counter-clockwise in CRS space (RFC 7946). ``props[i]`` (e.g. ``{"class": "plane",
    "score": 0.93}``) becomes feature ``i``'s properties.
    """
    from shapely.geometry import Polygon, mapping
    from shapely.geometry.polygon import orient

    polys = np.asarray(polygons_px, dtype=np.float64)
    if polys.size == 0:
        polys = polys.reshape(0, 8)
    if polys.ndim != 2 or polys.shape[1] % 2 or polys.shape[1] < 6:
        raise ValueError(f"polygons must be (N, 2k) with k >= 3, got {polys.shape}")
    props = list(props) if props is not None else [{} for _ in range(len(polys))]
    if len(props) != len(polys):
        raise ValueError(f"{len(polys)} polygons but {len(props)} property dicts")
    pts = pixel_to_crs(polys.reshape(len(polys), polys.shape[1] // 2, 2), transform)
    features = []
    for ring, p in zip(pts, props):
        geom = orient(Polygon(ring), sign=1.0)
        features.append({"type": "Feature", "geometry": mapping(geom), "properties": _jsonable(dict(p))})
    return write_feature_collection(features, crs, path)


def write_feature_collection(features: list[dict], crs: Any, path: str | Path) -> Path:
    """A GeoJSON FeatureCollection (with the legacy ``crs`` member for a non-WGS 84 CRS), written atomically."""
    from rsvision.outputs import atomic_write

    fc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    member = crs_member(crs)
    if member is not None:
        fc["crs"] = member
    path = Path(path)
    with atomic_write(path) as f:
        f.write(json.dumps(fc))
    return path


def class_tags(classes: Sequence[str], palette: Sequence[Sequence[int]] | None = None) -> dict[str, str]:
    """GeoTIFF metadata naming what each mask value means (QGIS / gdalinfo show them):
    ``CLASSES`` (JSON list), ``CLASS_<i>`` per value and ``PALETTE`` (JSON ``[[r, g, b], ...]``)."""
    tags = {"CLASSES": json.dumps(list(classes)), **{f"CLASS_{i}": str(c) for i, c in enumerate(classes)}}
    if palette is not None:
        tags["PALETTE"] = json.dumps([[int(v) for v in c[:3]] for c in palette])
    return tags


#: ``--vector`` choices -> OGR driver and file suffix.
VECTOR_FORMATS = {"geojson": ("GeoJSON", ".geojson"), "gpkg": ("GPKG", ".gpkg")}


def write_mask_vectors(mask: np.ndarray | str | Path, classes: Sequence[str], path: str | Path, fmt: str = "geojson",
                       transform: Any = None, crs: Any = None, nodata: int = 255,
                       skip: Sequence[int] = ()) -> Path:
    """Polygons of a class mask: one feature per connected region (``class`` name, ``class_id``,
    ``area`` in CRS units or pixels), in the raster's CRS (``transform`` / ``crs``; a mask GeoTIFF
    path supplies both). ``skip``: class indices not vectorised (e.g. "unchanged")."""
    import geopandas as gpd
    import rasterio
    from rasterio import features
    from shapely.geometry import shape

    if fmt not in VECTOR_FORMATS:
        raise ValueError(f"vector format must be one of {', '.join(VECTOR_FORMATS)}, got {fmt!r}")
    if isinstance(mask, (str, Path)):
        with rasterio.open(mask) as ds:
            arr, transform, crs = ds.read(1), ds.transform, ds.crs
    else:
        arr = np.asarray(mask, np.uint8)
    if transform is None:
        transform = rasterio.Affine.identity()
    keep = (arr != nodata) & ~np.isin(arr, list(skip))
    rows = [(shape(g), int(v)) for g, v in features.shapes(arr, mask=keep, transform=transform, connectivity=8)]
    gdf = gpd.GeoDataFrame({"class": [classes[v] if v < len(classes) else str(v) for _, v in rows],
                            "class_id": [v for _, v in rows], "geometry": [g for g, _ in rows]},
                           geometry="geometry", crs=crs if crs else None)
    gdf["area"] = gdf.geometry.area
    from rsvision.outputs import atomic_path

    path = Path(path)
    driver, suffix = VECTOR_FORMATS[fmt]
    with atomic_path(path.with_suffix(suffix)) as tmp:
        tmp.unlink()  # OGR creates the file itself (an empty GeoPackage is not a GeoPackage)
        gdf.to_file(tmp, driver=driver, **({"layer": "mask"} if fmt == "gpkg" else {}))
    return path.with_suffix(suffix)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[str(k)] = v
    return out
