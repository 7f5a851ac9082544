"""GeoTIFF mask and GeoJSON writers keep CRS and transform."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

from rsvision.errors import DataError
from rsvision.geo.writers import MaskWriter, pixel_to_crs, write_geojson, write_mask_geotiff


def test_mask_geotiff_keeps_crs_transform_tiled_compressed(tmp_path):
    tr = from_origin(203325.0, 3604935.0, 30.0, 30.0)
    mask = (np.arange(300 * 200) % 3).reshape(300, 200).astype(np.uint8)
    p = write_mask_geotiff(tmp_path / "m.tif", mask, tr, "EPSG:32651", palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]])
    with rasterio.open(p) as ds:
        assert ds.crs.to_epsg() == 32651 and ds.transform == tr
        assert ds.count == 1 and ds.dtypes[0] == "uint8"
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        assert (ds.read(1) == mask).all()
        assert ds.colormap(1)[1] == (255, 0, 0, 255)


def test_mask_like_reference_raster(tmp_path):
    tr = Affine(0.5, 0.0, 10.0, 0.0, -0.5, 20.0)
    ref = tmp_path / "ref.tif"
    with rasterio.open(ref, "w", driver="GTiff", width=40, height=30, count=3, dtype="uint16", crs="EPSG:3857", transform=tr) as d:
        d.write(np.zeros((3, 30, 40), np.uint16))
    p = write_mask_geotiff(tmp_path / "m.tif", np.ones((30, 40), np.uint8), like=ref)
    with rasterio.open(p) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.transform == tr
    with pytest.raises(DataError, match="does not match raster size"):
        write_mask_geotiff(tmp_path / "x.tif", np.ones((10, 10), np.uint8), like=ref)


def test_mask_writer_strips(tmp_path):
    mask = np.random.default_rng(0).integers(0, 4, (70, 50)).astype(np.uint8)
    with MaskWriter(tmp_path / "s.tif", 70, 50) as w:  # no georeferencing: plain mask
        w.write_rows(0, mask[:33])
        w.write_rows(33, mask[33:])
        with pytest.raises(ValueError):
            w.write_rows(60, mask[:20])
    with rasterio.open(tmp_path / "s.tif") as ds:
        assert (ds.read(1) == mask).all()


def test_geojson_polygons_to_crs(tmp_path):
    tr = from_origin(500000.0, 4000000.0, 2.0, 2.0)
    polys = np.array([[10, 10, 30, 10, 30, 20, 10, 20], [0, 0, 4, 0, 4, 4, 0, 4]], float)
    p = write_geojson(polys, [{"class": "plane", "score": np.float32(0.9)}, {"class": "ship", "score": 0.5}],
                      tr, "EPSG:32633", tmp_path / "d.geojson")
    fc = json.loads(p.read_text())
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    ring = np.array(fc["features"][0]["geometry"]["coordinates"][0])
    assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
    expected = pixel_to_crs(polys[0].reshape(4, 2), tr)
    assert {tuple(r) for r in ring[:-1]} == {tuple(e) for e in expected}
    assert expected[0].tolist() == [500020.0, 3999980.0]
    x, y = ring[:, 0], ring[:, 1]
    assert 0.5 * np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) > 0  # counter-clockwise (RFC 7946)
    assert fc["features"][0]["properties"] == {"class": "plane", "score": pytest.approx(0.9)}


def test_geojson_pixels_without_transform_and_errors(tmp_path):
    fc = json.loads(write_geojson([[0, 0, 1, 0, 1, 1]], None, None, None, tmp_path / "a.geojson").read_text())
    assert "crs" not in fc and fc["features"][0]["geometry"]["type"] == "Polygon"
    with pytest.raises(ValueError, match="property dicts"):
        write_geojson(np.zeros((2, 8)), [{}], None, None, tmp_path / "b.geojson")
    empty = json.loads(write_geojson(np.zeros((0, 8)), [], None, "EPSG:4326", tmp_path / "c.geojson").read_text())
    assert empty["features"] == [] and "crs" not in empty
