"""GDAL VRT files written by hand (XML), so no GDAL Python bindings or command-line tools are needed.

Two uses, one writer:

- :func:`stack_vrt`: several single- or multi-band files of one grid -> one multi-band raster (a STAC
  item whose bands are separate assets becomes one scene that every reader of rsvision opens like a
  GeoTIFF; nothing is copied, GDAL reads the sources lazily, window by window). Sources on a coarser
  grid over the same footprint (Sentinel-2's 20 m bands beside its 10 m ones) are resampled
  (bilinear) onto the first source's grid by GDAL.
- :func:`mosaic_vrt`: masks of many scenes in one CRS -> one mosaic (each mask placed by its
  bounds at the finest resolution among them; nearest resampling; 255 = nodata lets the masks
  underneath show through).

Both are written atomically (:func:`rsvision.outputs.atomic_write`); source paths are absolute, so a
VRT stays valid wherever it is read from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape

import numpy as np

from rsvision.errors import DataError

__all__ = ["stack_vrt", "mosaic_vrt", "gdal_href"]

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def gdal_href(href: str) -> str:
    """A STAC / user href as GDAL opens it: local paths absolute, http(s) through ``/vsicurl/``."""
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith("file://"):
        href = href[7:]
    return href if href.startswith("/vsi") else str(Path(href).resolve())


def _source(href: str, band: int, src_size: tuple[int, int], dst_rect: tuple[float, float, float, float],
            nodata: float | None, resampling: str) -> str:
    w, h = src_size
    x, y, dw, dh = dst_rect
    kind = "ComplexSource" if nodata is not None else "SimpleSource"
    nd = f"<NODATA>{_num(nodata)}</NODATA>" if nodata is not None else ""
    return (f'    <{kind} resampling="{resampling}"><SourceFilename relativeToVRT="0">{escape(href)}</SourceFilename>'
            f'<SourceBand>{band}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{x:.10g}" yOff="{y:.10g}" xSize="{dw:.10g}" ySize="{dh:.10g}"/>{nd}</{kind}>')


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _write(path: Path, width: int, height: int, crs, transform, bands: list[str]) -> Path:
    from rsvision.outputs import atomic_write

    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    srs = f"  <SRS>{escape(crs.to_wkt())}</SRS>\n" if crs is not None else ""
    text = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n{srs}  <GeoTransform>{gt}</GeoTransform>\n'
            + "\n".join(bands) + "\n</VRTDataset>\n")
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def stack_vrt(sources: Sequence[tuple[str, int | None]], path: str | Path, names: Sequence[str] | None = None) -> Path:
    """Write a VRT whose bands are ``sources`` in order: ``(href, band)`` with a 1-based band of that
    file, or ``None`` for all of its bands. The first source fixes the grid (size, CRS, transform);
    the others must cover the same footprint in the same CRS (else :class:`DataError` naming them).
    ``names``: band descriptions (e.g. the STAC band names), one per resulting band."""
    import rasterio

    if not sources:
        raise DataError("no sources to stack", path=str(path))
    opened = []
    for href, band in sources:
        try:
            with rasterio.open(gdal_href(href)) as ds:
                opened.append((gdal_href(href), band, ds.width, ds.height, ds.crs, ds.transform, ds.bounds, ds.count,
                               ds.dtypes, ds.nodatavals))
        except rasterio.RasterioIOError as exc:
            raise DataError(f"cannot open asset: {exc}", path=href) from exc
    _, _, W, H, crs, transform, bounds, *_ = opened[0]
    tol = max(abs(transform.a), abs(transform.e))  # one pixel of the reference grid
    bands_xml: list[str] = []
    dtypes = []
    for href, band, w, h, c, _t, b, count, dts, nds in opened:
        if c != crs or max(abs(b.left - bounds.left), abs(b.right - bounds.right), abs(b.top - bounds.top),
                           abs(b.bottom - bounds.bottom)) > tol:
            raise DataError(f"asset does not cover the same grid as {opened[0][0]} (CRS {c} vs {crs}, bounds "
                            f"{tuple(b)} vs {tuple(bounds)}); stack only assets of one footprint", path=href)
        idx = list(range(1, count + 1)) if band is None else [int(band)]
        if max(idx) > count:
            raise DataError(f"asset has {count} band(s), band {max(idx)} asked for", path=href)
        for i in idx:
            dtypes.append(dts[i - 1])
            bands_xml.append((href, i, (w, h), nds[i - 1]))
    dtype = np.result_type(*[np.dtype(d) for d in dtypes]).name
    if dtype not in _GDAL_TYPES:
        raise DataError(f"cannot stack bands of types {sorted(set(dtypes))} into one raster", path=str(path))
    names = list(names) if names is not None else []
    out = []
    for k, (href, i, size, nd) in enumerate(bands_xml, 1):
        resampling = "nearest" if size == (W, H) else "bilinear"
        desc = f"<Description>{escape(names[k - 1])}</Description>" if k - 1 < len(names) else ""
        ndv = f"<NoDataValue>{_num(nd)}</NoDataValue>" if nd is not None else ""
        out.append(f'  <VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="{k}">{desc}{ndv}\n'
                   + _source(href, i, size, (0, 0, W, H), nd, resampling) + "\n  </VRTRasterBand>")
    return _write(Path(path), W, H, crs, transform, out)


def mosaic_vrt(masks: Sequence[str | Path], path: str | Path, nodata: int = 255) -> Path:
    """One single-band VRT mosaic of north-up ``masks`` that share a CRS (else :class:`DataError`): the
    union of their bounds at the finest pixel size among them; later masks drawn over earlier ones
    except where they hold ``nodata``. The first mask's colour table is kept."""
    import rasterio
    from rasterio.transform import from_origin

    if not masks:
        raise DataError("no masks to mosaic", path=str(path))
    infos = []
    for m in masks:
        with rasterio.open(m) as ds:
            t = ds.transform
            if t.b or t.d:
                raise DataError("rotated rasters cannot be mosaicked", path=str(m))
            try:
                cmap = ds.colormap(1)
            except ValueError:
                cmap = None
            infos.append((str(Path(m).resolve()), ds.width, ds.height, ds.crs, ds.bounds, abs(t.a), abs(t.e), cmap))
    crs = infos[0][3]
    other = [m for m, *_rest in infos if _rest[2] != crs]
    if other:
        raise DataError(f"masks in different CRSs cannot share one mosaic ({crs} vs others: {other[:3]})",
                        path=str(path))
    rx, ry = min(i[5] for i in infos), min(i[6] for i in infos)
    left, top = min(i[4].left for i in infos), max(i[4].top for i in infos)
    right, bottom = max(i[4].right for i in infos), min(i[4].bottom for i in infos)
    W, H = max(1, int(round((right - left) / rx))), max(1, int(round((top - bottom) / ry)))
    srcs = [_source(href, 1, (w, h), ((b.left - left) / rx, (top - b.top) / ry, w * sx / rx, h * sy / ry), nodata,
                    "nearest") for href, w, h, _c, b, sx, sy, _m in infos]
    cmap = infos[0][7]
    ct = ""
    if cmap:
        entries = "".join(f'<Entry c1="{c[0]}" c2="{c[1]}" c3="{c[2]}" c4="{c[3]}"/>'
                          for c in (cmap.get(i, (0, 0, 0, 0)) for i in range(max(cmap) + 1)))
        ct = f"<ColorInterp>Palette</ColorInterp><ColorTable>{entries}</ColorTable>"
    band = (f'  <VRTRasterBand dataType="Byte" band="1"><NoDataValue>{nodata}</NoDataValue>{ct}\n'
            + "\n".join(srcs) + "\n  </VRTRasterBand>")
    return _write(Path(path), W, H, crs, from_origin(left, top, rx, ry), [band])

