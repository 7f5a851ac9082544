"""Windowed raster sources: a GeoTIFF cut short is refused when it is opened, not windows later."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsvision.data.sources import RasterSource
from rsvision.data.tiling import Window
from rsvision.errors import DataError

LAYOUTS = {
    "tiled": dict(tiled=True, blockxsize=128, blockysize=128),
    "striped": {},
    "band-interleaved, deflate": dict(tiled=True, blockxsize=128, blockysize=128, interleave="band",
                                      compress="deflate"),
}


def _write(path, **kw):
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", width=600, height=500, count=3, dtype="uint8",
                       transform=from_origin(500000, 4000000, 1, 1), crs="EPSG:32633", **kw) as d:
        d.write(rng.integers(0, 255, (3, 500, 600), dtype=np.uint8))
    return path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncated_geotiff_is_refused_at_open_naming_the_file(layout, tmp_path):
    good = _write(tmp_path / "good.tif", **LAYOUTS[layout])
    with RasterSource(good) as src:
        assert src.read(Window(0, 0, 600, 500)).shape == (3, 500, 600)
    data = good.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with rasterio.open(cut) as ds:  # GDAL itself opens it and reads its first block: the reason for the check
        ds.read(1, window=rasterio.windows.Window(0, 0, 64, 64))
    with pytest.raises(DataError, match="truncated") as e:
        RasterSource(cut)
    assert "cut.tif" in str(e.value)


def test_sparse_geotiff_is_not_called_truncated(tmp_path):
    path = tmp_path / "sparse.tif"
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=1, dtype="uint8", nodata=0,
                       tiled=True, blockxsize=256, blockysize=256, sparse_ok=True,
                       transform=from_origin(0, 1024, 1, 1), crs="EPSG:3857") as d:
        d.write(np.full((1, 256, 256), 7, np.uint8), window=rasterio.windows.Window(0, 0, 256, 256))
    with RasterSource(path) as src:
        assert src.any_valid(Window(0, 0, 256, 256)) and not src.any_valid(Window(512, 512, 768, 768))
