"""``rsvision view``: the API (tiles, vector layers per viewport, runs, evals, path safety) with FastAPI's
TestClient, and the page end to end in headless Chromium (Playwright driving Debian's chromium).

Expected values come from the generated inputs themselves: tiles of rasters aligned to the tile grid
are compared with the raster's pixels, viewport queries with a brute-force shapely loop, reprojected
coordinates with pyproj, the page's box colours with rsvision.viz.boxes.class_colors.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("rio_tiler")

import rasterio  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from rasterio.transform import from_bounds  # noqa: E402

from rsvision.geo.writers import MaskWriter, class_tags, write_geojson  # noqa: E402
from rsvision.viz.masks import save_palette_png  # noqa: E402
from rsvision.viz.viewer.app import create_app  # noqa: E402

Z, TX, TY = 16, 34000, 22000  # the georeferenced scenes are aligned to this Web-Mercator tile (2x2 tiles)
PALETTE = [[0, 0, 0], [0, 255, 0], [255, 0, 255]]


def _tile_bounds(z, x, y):
    import morecantile

    return morecantile.tms.get("WebMercatorQuad").xy_bounds(x, y, z)


def _write_tif(path, arr, crs="EPSG:3857", bounds=None, **kw):
    c, h, w = arr.shape
    prof = dict(driver="GTiff", width=w, height=h, count=c, dtype=arr.dtype.name, **kw)
    if crs is not None:
        prof.update(crs=crs, transform=from_bounds(*bounds, w, h))
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(arr)


def _scene_extent():
    """EPSG:3857 bounds of the 2x2 tiles (Z+1) covering tile (Z, TX, TY): a 512 px scene is one tile
    pixel per raster pixel at zoom Z + 1."""
    b = _tile_bounds(Z, TX, TY)
    return b.left, b.bottom, b.right, b.top


def _quadrants(h, w, colours):
    img = np.zeros((3, h, w), np.uint8)
    for k, (ys, xs) in enumerate([(slice(0, h // 2), slice(0, w // 2)), (slice(0, h // 2), slice(w // 2, w)),
                                  (slice(h // 2, h), slice(0, w // 2)), (slice(h // 2, h), slice(w // 2, w))]):
        img[:, ys, xs] = np.asarray(colours[k], np.uint8)[:, None, None]
    return img


def _box(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cx - w / 2, cy + h / 2]


@pytest.fixture
def viewer_dir(tmp_path):
    """A folder like a prediction run: a georeferenced scene with its detections and mask, a plain PNG
    with Task1 detections, a run directory, an eval JSON; plus a secret outside it and links to it."""
    root = tmp_path / "results"
    root.mkdir()
    ext = _scene_extent()
    scene = np.full((3, 512, 512), 60, np.uint8)
    scene[0, :, 256:] = 120  # right half redder: band choice swaps it
    _write_tif(root / "scene.tif", scene, bounds=ext)
    tr = from_bounds(*ext, 512, 512)
    polys = [_box(120, 120, 90, 60), _box(120, 380, 90, 60), _box(380, 120, 60, 90), _box(380, 380, 60, 90)]
    props = [{"class": "ship", "score": 0.9}, {"class": "ship", "score": 0.5},
             {"class": "plane", "score": 0.8}, {"class": "plane", "score": 0.3}]
    write_geojson(np.asarray(polys), props, tr, "EPSG:3857", root / "scene.geojson")
    mask = np.zeros((512, 512), np.uint8)
    mask[256:, :256] = 1
    mask[:64, 256:] = 2
    mask[500:, :] = 255
    with MaskWriter(root / "scene_mask.tif", 512, 512, tr, "EPSG:3857", nodata=255, palette=PALETTE,
                    tags=class_tags(["background", "water", "building"], PALETTE)) as w:
        w.write_rows(0, mask)
    plain = _quadrants(256, 256, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)])
    plain[:, 10, 20] = 7  # one odd pixel: exact pixel addressing
    Image.fromarray(plain.transpose(1, 2, 0)).save(root / "plain.png")
    pmask = np.zeros((256, 256), np.uint8)
    pmask[200:] = 1
    save_palette_png(root / "plain_mask.png", pmask, [[9, 9, 9], [0, 200, 255]])  # as segment predict writes
    (root / "plain_pred").mkdir()
    (root / "plain_pred" / "Task1_ship.txt").write_text("plain 0.75 10 20 50 20 50 40 10 40\nother 0.5 0 0 1 0 1 1 0 1\n")
    run = root / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,train/loss,val/acc\n0,4,1.5,\n0,4,,0.25\n1,9,0.9,\n1,9,,0.5\n")
    (run / "config.yaml").write_text("model: {name: resnet18}\n")
    (root / "eval.json").write_text(json.dumps({
        "task": "classify", "overall_accuracy": 0.75, "average_accuracy": 0.7, "kappa": 0.5,
        "classes": ["field", "forest"], "confusion_matrix": [[3, 1], [0, 4]],
        "per_class": {"field": {"accuracy": 0.75, "support": 4}, "forest": {"accuracy": 1.0, "support": 4}},
        "per_image": [{"image": "plain.png", "true": "field", "pred": "forest", "score": 0.6},
                      {"image": "/elsewhere/b.png", "true": "field", "pred": "forest", "score": 0.9},
                      {"image": "c.png", "true": "field", "pred": "field", "score": 0.8}]}))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside / "secret.txt", root / "link.txt")
    os.symlink(outside, root / "linkdir")
    return root


@pytest.fixture
def client(viewer_dir, tmp_path):
    app = create_app(viewer_dir, cache_dir=tmp_path / "cache")
    return TestClient(app), app


def _png(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGBA"))


def _view(cat, name):
    return next(v for v in cat["views"] if v["name"] == name)


def test_catalog_groups_outputs_with_their_scene(client):
    c, _ = client
    cat = c.get("/api/catalog").json()
    v = _view(cat, "scene.tif")
    assert v["georef"] and [m["rel"] for m in v["masks"]] == ["scene_mask.tif"]
    assert [x["rel"] for x in v["vectors"]] == ["scene.geojson"]
    assert v["masks"][0]["classes"] == ["background", "water", "building"] and v["masks"][0]["palette"] == PALETTE
    p = _view(cat, "plain.png")
    assert not p["georef"] and [x["fmt"] for x in p["vectors"]] == ["task1"]
    (pm,) = p["masks"]  # a palette PNG names no classes: its values, colours from its palette
    assert pm["classes"] == ["class 0", "class 1"] and pm["palette"] == [[9, 9, 9], [0, 200, 255]]
    t = _png(c.get(f"/api/masks/{pm['id']}/0/0/0.png"))
    assert tuple(t[100, 5]) == (9, 9, 9, 255) and tuple(t[220, 5]) == (0, 200, 255, 255)
    assert [r["rel"] for r in cat["runs"]] == ["run"] and [e["task"] for e in cat["evals"]] == ["classify"]
    names = json.dumps(cat)
    assert "secret" not in names and "link" not in names  # symlinks out of PATH are not listed
    assert cat["views"][0]["name"] == "scene.tif"  # the page opens on the scene with results


def test_pixel_tiles_are_the_image_pixels(client, viewer_dir):
    c, _ = client
    rid = _view(c.get("/api/catalog").json(), "plain.png")["base"]["id"]
    img = np.asarray(Image.open(viewer_dir / "plain.png").convert("RGB"))
    t = _png(c.get(f"/api/tiles/{rid}/0/0/0.png"))  # zoom 0: one tile pixel per image pixel
    assert (t[..., :3] == img).all() and (t[..., 3] == 255).all()
    t = _png(c.get(f"/api/tiles/{rid}/1/1/0.png"))  # zoom 1: the top-right 128 px, each pixel doubled
    assert (t[..., :3] == np.repeat(np.repeat(img[:128, 128:], 2, 0), 2, 1)).all()
    t = _png(c.get(f"/api/tiles/{rid}/-1/0/0.png"))  # zoom -1: the whole image in the top-left 128 px
    assert (t[:128, :128, :3] == img[1::2, 1::2]).all() and (t[:128, :128, 3] == 255).all()
    assert (t[128:, :, 3] == 0).all() and (t[:, 128:, 3] == 0).all()  # outside the image: transparent
    assert (_png(c.get(f"/api/tiles/{rid}/0/3/3.png"))[..., 3] == 0).all()
    t = _png(c.get(f"/api/tiles/{rid}/0/0/0.png?bands=3,2,1"))  # band choice: blue shown as red
    assert (t[..., :3] == img[..., ::-1]).all()
    assert c.get(f"/api/tiles/{rid}/0/0/0.png?bands=4,1,1").status_code == 422


def test_georeferenced_tiles_match_the_raster(client, viewer_dir):
    c, _ = client
    rid = _view(c.get("/api/catalog").json(), "scene.tif")["base"]["id"]
    with rasterio.open(viewer_dir / "scene.tif") as ds:
        arr = ds.read().transpose(1, 2, 0)
    t = _png(c.get(f"/api/tiles/{rid}/{Z + 1}/{2 * TX + 1}/{2 * TY}.png"))  # the top-right quarter, aligned
    assert np.abs(t[..., :3].astype(int) - arr[:256, 256:]).max() <= 1 and (t[..., 3] == 255).all()
    t = _png(c.get(f"/api/tiles/{rid}/{Z}/{TX}/{TY}.png"))  # zoom out: left 60, right 120 in band 1
    assert abs(int(t[128, 64, 0]) - 60) <= 1 and abs(int(t[128, 192, 0]) - 120) <= 1
    t = _png(c.get(f"/api/tiles/{rid}/{Z}/{TX}/{TY}.png?bands=2,3,1"))
    assert abs(int(t[128, 192, 2]) - 120) <= 1 and abs(int(t[128, 192, 0]) - 60) <= 1
    assert (_png(c.get(f"/api/tiles/{rid}/{Z}/{TX + 5}/{TY}.png"))[..., 3] == 0).all()  # off the scene


def test_uint16_scene_percentile_stretch(tmp_path):
    root = tmp_path / "ms"
    root.mkdir()
    rng = np.random.default_rng(0)
    arr = rng.integers(1000, 3000, (4, 256, 256)).astype(np.uint16)
    _write_tif(root / "ms.tif", arr, crs=None)
    c = TestClient(create_app(root, cache_dir=tmp_path / "cache"))
    rid = c.get("/api/catalog").json()["views"][0]["base"]["id"]
    t = _png(c.get(f"/api/tiles/{rid}/0/0/0.png?bands=4,3,2"))
    for ch, band in enumerate([3, 2, 1]):
        lo, hi = np.percentile(arr[band].astype(np.float64), [2, 98])
        want = np.clip((arr[band] - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8)
        assert np.abs(t[..., ch].astype(int) - want).max() <= 1
    t = _png(c.get(f"/api/tiles/{rid}/0/0/0.png?bands=1&stretch=none"))  # as stored: 1000..3000 of 65535
    assert t[..., 0].max() <= 12 and (t[..., 0] == t[..., 2]).all()


def test_mask_tiles_palette_nodata_and_hidden_classes(client):
    c, _ = client
    mid = _view(c.get("/api/catalog").json(), "scene.tif")["masks"][0]["id"]
    url = f"/api/masks/{mid}/{Z}/{TX}/{TY}.png"
    t = _png(c.get(url))  # zoom Z: the 512 px mask at half resolution
    assert tuple(t[200, 60]) == (0, 255, 0, 255)  # water
    assert tuple(t[10, 200]) == (255, 0, 255, 255)  # building
    assert tuple(t[60, 60]) == (0, 0, 0, 255)  # background
    assert t[254, 60, 3] == 0  # nodata rows: transparent
    t = _png(c.get(url + "?hide=1"))
    assert t[200, 60, 3] == 0 and tuple(t[10, 200]) == (255, 0, 255, 255)


def _geoparquet(path, n=3000, seed=0):
    """Detections of two scenes as GeoParquet (geometry, scene, class, score) in EPSG:3857."""
    import geopandas as gpd
    from shapely.geometry import Polygon

    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = _scene_extent()
    rows = []
    for i in range(n):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        w, h, a = rng.uniform(2, 15), rng.uniform(2, 15), rng.uniform(0, np.pi)
        ca, sa = np.cos(a), np.sin(a)
        pts = [(cx + ca * dx - sa * dy, cy + sa * dx + ca * dy) for dx, dy in
               [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]]
        rows.append({"geometry": Polygon(pts), "scene": "scene" if i % 3 else "elsewhere/other.tif",
                     "class": ["ship", "plane", "car"][int(rng.integers(3))], "score": float(rng.uniform(0, 1))})
    gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:3857").to_parquet(path)
    return gpd.read_parquet(path)


def test_geoparquet_detections_served_per_viewport(tmp_path):
    import shapely
    from pyproj import Transformer

    root = tmp_path / "batch"
    root.mkdir()
    _write_tif(root / "scene.tif", np.full((3, 64, 64), 50, np.uint8), bounds=_scene_extent())
    gdf = _geoparquet(root / "detections.parquet")
    c = TestClient(create_app(root, cache_dir=tmp_path / "cache"))
    cat = c.get("/api/catalog").json()
    v = _view(cat, "scene.tif")
    (src,) = v["vectors"]
    assert src["fmt"] == "parquet"
    assert any(w["vectors"] and w["vectors"][0]["name"].endswith("[elsewhere/other.tif]") for w in cat["views"])
    mine = gdf[gdf["scene"] == "scene"]
    summary = c.get(f"/api/vectors/{src['id']}/summary").json()
    assert summary["count"] == len(mine) and summary["classes"] == mine["class"].value_counts().to_dict()
    # the viewport: a lon/lat box over part of the scene; reference: every polygon, reprojected, tested
    w, s, e, n = v["base"]["bounds"]
    bb = (w + 0.3 * (e - w), s + 0.2 * (n - s), w + 0.6 * (e - w), s + 0.5 * (n - s))
    tr = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    ll = shapely.transform(mine.geometry.values, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    view = shapely.box(*bb)
    ref = [(float(sc), cl) for g, sc, cl in zip(ll, mine["score"], mine["class"])  # one polygon at a time
           if g.intersects(view) and sc >= 0.4 and cl in ("ship", "car")]
    got = c.get(f"/api/vectors/{src['id']}", params={"bbox": ",".join(map(str, bb)), "min_score": 0.4,
                                                      "classes": "ship,car"}).json()
    assert 20 < len(ref) == got["total"] == got["returned"] and not got["truncated"]
    scores = [f["properties"]["score"] for f in got["features"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(scores) == sorted(round(s, 4) for s, _ in ref)
    assert {f["properties"]["class"] for f in got["features"]} == {"ship", "car"}
    few = c.get(f"/api/vectors/{src['id']}", params={"bbox": ",".join(map(str, bb)), "limit": 5}).json()
    assert few["returned"] == 5 and few["truncated"] and few["total"] > 5
    assert c.get(f"/api/vectors/{src['id']}", params={"bbox": "1,2,3"}).status_code == 422


def test_utm_geojson_reprojected_and_task1_in_pixel_coordinates(tmp_path, viewer_dir):
    from pyproj import Transformer

    root = tmp_path / "utm"
    root.mkdir()
    tr = from_bounds(500000, 4499000, 500512, 4499512, 512, 512)
    _write_tif(root / "s.tif", np.full((3, 512, 512), 80, np.uint8), crs="EPSG:32633",
               bounds=(500000, 4499000, 500512, 4499512))
    poly = np.asarray([_box(100, 200, 40, 20)])
    write_geojson(poly, [{"class": "ship", "score": 0.7}], tr, "EPSG:32633", root / "s.geojson")
    c = TestClient(create_app(root, cache_dir=tmp_path / "cache"))
    src = c.get("/api/catalog").json()["views"][0]["vectors"][0]
    (f,) = c.get(f"/api/vectors/{src['id']}").json()["features"]
    ring = np.asarray(f["geometry"]["coordinates"][0])
    xy = poly[0].reshape(4, 2)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(
        tr.c + xy[:, 0] * tr.a, tr.f + xy[:, 1] * tr.e)
    want = np.stack([lon, lat], 1)
    assert all(np.abs(want - p).sum(1).min() < 1e-9 for p in ring)
    assert f["properties"] == {"class": "ship", "score": 0.7}
    # a plain image's Task1 boxes: (col, -row), only the lines of that image
    c2 = TestClient(create_app(viewer_dir, cache_dir=tmp_path / "cache2"))
    src = _view(c2.get("/api/catalog").json(), "plain.png")["vectors"][0]
    (f,) = c2.get(f"/api/vectors/{src['id']}").json()["features"]
    assert sorted(map(tuple, f["geometry"]["coordinates"][0][:4])) == [(10, -40), (10, -20), (50, -40), (50, -20)]


def test_run_and_eval_endpoints(client, viewer_dir, tmp_path):
    c, _ = client
    cat = c.get("/api/catalog").json()
    run = c.get(f"/api/runs/{cat['runs'][0]['id']}").json()
    assert run["series"]["val/acc"] == [[0.0, 4.0, 0.25], [1.0, 9.0, 0.5]] and run["last"]["train/loss"] == 0.9
    png = _png(c.get(f"/api/runs/{cat['runs'][0]['id']}/curves.png"))
    assert png.shape[0] > 100 and list((tmp_path / "cache" / "curves").glob("*.png"))
    ev = c.get(f"/api/evals/{cat['evals'][0]['id']}").json()
    assert ev["headline"] == {"overall_accuracy": 0.75, "average_accuracy": 0.7, "kappa": 0.5}
    assert ev["rows"] == [{"class": "field", "accuracy": 0.75, "support": 4},
                          {"class": "forest", "accuracy": 1.0, "support": 4}]
    assert ev["confusion_matrix"] == [[3, 1], [0, 4]]
    worst = ev["worst"]["field"]  # the mistakes of "field", most confident first
    assert [w["image"] for w in worst] == ["/elsewhere/b.png", "plain.png"]
    assert "rel" not in worst[0] and worst[1]["rel"] == "plain.png"
    assert worst[1]["view"] == _view(cat, "plain.png")["id"] and ev["worst"]["forest"] == []


@pytest.mark.parametrize("url", [
    "/api/file?path=../outside/secret.txt", "/api/file?path=%2e%2e/outside/secret.txt",
    "/api/file?path=%2E%2E%2Foutside%2Fsecret.txt", "/api/file?path=run/../../outside/secret.txt",
    "/api/file?path=/etc/passwd", "/api/file?path=%2Fetc%2Fpasswd", "/api/file?path=link.txt",
    "/api/file?path=linkdir/secret.txt", "/api/file?path=run", "/api/file?path=", "/api/file?path=nothere.txt",
    "/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/api/tiles/../../etc/0/0/0.png",
])
def test_paths_outside_root_refused(client, viewer_dir, url):
    c, _ = client
    r = c.get(url)
    assert r.status_code in (403, 404), (url, r.status_code)
    assert "secret" not in r.text and "root:" not in r.text


def test_absolute_path_of_the_secret_refused(client, viewer_dir):
    c, _ = client
    secret = viewer_dir.parent / "outside" / "secret.txt"
    assert c.get("/api/file", params={"path": str(secret)}).status_code == 403
    assert c.get("/api/file", params={"path": str(viewer_dir / "run" / "config.yaml")}).status_code == 403
    r = c.get("/api/file", params={"path": "run/config.yaml"})
    assert r.status_code == 200 and r.text.startswith("model:")


def test_read_only_and_nothing_written_under_path(viewer_dir, tmp_path):
    def snapshot():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in viewer_dir.rglob("*") if not p.is_symlink()}

    before = snapshot()
    app = create_app(viewer_dir, cache_dir=tmp_path / "cache", overview_threshold=64)  # every raster is "big"
    c = TestClient(app)
    for method in ("post", "put", "delete", "patch"):
        assert getattr(c, method)("/api/catalog").status_code == 405
    cat = c.get("/api/catalog").json()
    plain = _view(cat, "plain.png")["base"]["id"]
    scene = _view(cat, "scene.tif")["base"]["id"]
    t = _png(c.get(f"/api/tiles/{scene}/{Z - 2}/{TX // 4}/{TY // 4}.png"))  # zoomed out: the cached copy
    path, f = app.state.tiles.overview(app.state.catalog.raster(scene))
    assert f == 8 and path.is_file() and path.is_relative_to(tmp_path / "cache")
    with rasterio.open(path) as ds:
        assert (ds.width, ds.height) == (64, 64) and ds.read(1)[0, 40] == 120
    assert abs(int(t[int(TY / 4 % 1 * 256) + 10, int(TX / 4 % 1 * 256) + 40, 0]) - 120) <= 1
    assert app.state.tiles.overview(app.state.catalog.raster(plain)) is None  # PNG: decoded in memory
    for v in cat["vectors"] if "vectors" in cat else []:
        c.get(f"/api/vectors/{v['id']}")
    c.get(f"/api/runs/{cat['runs'][0]['id']}/curves.png")
    assert snapshot() == before
    with pytest.raises(Exception, match="must not lie under"):
        create_app(viewer_dir, cache_dir=viewer_dir / ".cache")


def test_view_help_imports_no_server_library():
    code = ("from typer.testing import CliRunner\nfrom rsvision.cli import app\n"
            "r = CliRunner().invoke(app, ['view', '--help'])\nassert r.exit_code == 0 and '--basemap' in r.output\n"
            "import sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert not mods & {"fastapi", "uvicorn", "rio_tiler", "rasterio", "torch", "starlette"}


def test_view_refuses_a_taken_port():
    from rsvision.cli.view import bind
    from rsvision.errors import ConfigError

    s = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match="--port"):
            bind("127.0.0.1", s.getsockname()[1])
    finally:
        s.close()


# ---- the page in a real browser ----------------------------------------------------------------------

def _chromium() -> str | None:
    return os.environ.get("RSVISION_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _serve(app):
    import uvicorn

    from rsvision.cli.view import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    t0 = time.time()
    while not server.started:
        assert th.is_alive() and time.time() - t0 < 10, "viewer server did not start"
        time.sleep(0.02)
    return server, th, f"http://127.0.0.1:{sock.getsockname()[1]}/"


def _near(img: np.ndarray, rgb, tol=12) -> int:
    return int((np.abs(img[..., :3].astype(int) - np.asarray(rgb)).max(-1) <= tol).sum())


def test_page_in_headless_chromium(viewer_dir, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium: install Debian's `chromium` (apt-get install chromium; .ci/run does) "
                    "or set RSVISION_CHROMIUM to a Chromium binary")
    sync_api = pytest.importorskip("playwright.sync_api")
    from rsvision.viz.boxes import class_colors

    server, th, url = _serve(create_app(viewer_dir, cache_dir=tmp_path / "cache"))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("window.__rsv && window.__rsv.ready", timeout=15000)
            page.wait_for_function("document.querySelectorAll('.leaflet-tile-loaded').length >= 4 && "
                                   "[...document.querySelectorAll('img.leaflet-tile')].every(i => i.complete)")
            assert page.evaluate("window.__rsv.drawn") == {
                _view(page.evaluate("fetch('/api/catalog').then(r => r.json())"), "scene.tif")["vectors"][0]["id"]: 4}
            # the page's class colours are rsvision's (classes sorted: plane 0, ship 1)
            plane, ship = (tuple(page.evaluate(f"rsvClassColor({i})")) for i in (0, 1))
            assert [plane, ship] == class_colors(2)
            before = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
            Image.fromarray(before).save(tmp_path / "before.png")
            legend = page.inner_text("#layer-controls")
            assert "water" in legend and "building" in legend and "plane (2)" in legend
            n_req = page.evaluate("window.__rsv.requests")
            page.click("input[data-class=plane]")
            page.wait_for_function(f"window.__rsv.requests > {n_req} && Object.values(window.__rsv.drawn)[0] === 2")
            page.wait_for_timeout(150)
            after = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
            Image.fromarray(after).save(tmp_path / "after.png")
            browser.close()
    finally:
        server.should_exit = True
        th.join(5)
    assert not errors, errors
    map_part = (slice(None), slice(300, None))  # right of the sidebar (its swatches share the colours)
    p0, s0 = _near(before[map_part], plane), _near(before[map_part], ship)
    p1, s1 = _near(after[map_part], plane), _near(after[map_part], ship)
    assert p0 > 150 and s0 > 150, (p0, s0)  # both classes' outlines drawn
    assert p1 < 0.05 * p0 and s1 > 0.8 * s0, (p0, p1, s0, s1)  # plane toggled off, ship kept
    water = np.array([30, 157, 30])  # the mask's green at 50 % over the grey scene (60, 60, 60)
    assert _near(before[map_part], water, tol=20) > 2000


def _vrt(path, source, relative, w=64, h=64):
    path.write_text(
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="{int(relative)}">{source}</SourceFilename><SourceBand>1</SourceBand>'
        f'</SimpleSource></VRTRasterBand></VRTDataset>')


def test_batch_predict_folder_one_layer_per_scene(tmp_path):
    """A batch-predict layout (rsvision.tasks.batch): the merged GeoParquet stands for the per-scene
    GeoJSON / GeoParquet / Task1 copies; a masks VRT inside PATH is a mask view, one reading outside is not."""
    b = tmp_path / "batch"
    (b / "s1").mkdir(parents=True)
    (b / "batch.json").write_text("{}")
    gdf = _geoparquet(b / "detections.parquet", n=90)
    gdf["scene"] = ["s1" if i % 3 else "s2" for i in range(len(gdf))]
    gdf.to_parquet(b / "detections.parquet")
    gdf[gdf["scene"] == "s1"].to_parquet(b / "s1" / "detections.parquet")
    write_geojson(np.asarray([_box(10, 10, 5, 5)]), [{"class": "ship", "score": 0.5}],
                  from_bounds(*_scene_extent(), 64, 64), "EPSG:3857", b / "s1" / "s1.geojson")
    for d in (b, b / "s1"):
        (d / "Task1_ship.txt").write_text("s1 0.5 0 0 4 0 4 4 0 4\n")
    _write_tif(b / "s1" / "s1_mask.tif", np.ones((1, 64, 64), np.uint8), bounds=_scene_extent())
    _vrt(b / "masks.vrt", "s1/s1_mask.tif", True)
    outside = tmp_path / "outside.tif"
    _write_tif(outside, np.ones((1, 64, 64), np.uint8), bounds=_scene_extent())
    _vrt(b / "evil.vrt", str(outside), False)
    _vrt(b / "evil2.vrt", "../outside.tif", True)
    cat = TestClient(create_app(b, cache_dir=tmp_path / "cache")).get("/api/catalog").json()
    layers = sorted(x["name"] for v in cat["views"] for x in v["vectors"])
    assert layers == ["detections.parquet [s1]", "detections.parquet [s2]"]
    masks = sorted(m["rel"] for v in cat["views"] for m in v["masks"])
    assert masks == ["masks.vrt", "s1/s1_mask.tif"] and "evil" not in json.dumps(cat)
    c = TestClient(create_app(b, cache_dir=tmp_path / "cache"))
    vid = next(x["id"] for v in cat["views"] for x in v["vectors"] if x["name"].endswith("[s2]"))
    assert c.get(f"/api/vectors/{vid}").json()["total"] == int((gdf["scene"] == "s2").sum())


def test_page_links_a_class_to_its_worst_examples(tmp_path):
    """In headless Chromium: the eval panel's class link lists the class's worst examples, and an example
    outside PATH opens as a map view of the image (an allow-listed tile view)."""
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium: install Debian's `chromium` (apt-get install chromium; .ci/run does) "
                    "or set RSVISION_CHROMIUM to a Chromium binary")
    sync_api = pytest.importorskip("playwright.sync_api")
    img, root = tmp_path / "data" / "field_3.png", tmp_path / "r"
    img.parent.mkdir()
    root.mkdir()
    Image.fromarray(np.full((64, 64, 3), (200, 30, 30), np.uint8)).save(img)
    (root / "eval.json").write_text(json.dumps({
        "task": "classify", "overall_accuracy": 0.5, "classes": ["field", "forest"],
        "per_class": {"field": {"accuracy": 0.0, "support": 1}, "forest": {"accuracy": 1.0, "support": 1}},
        "per_image": [{"image": str(img), "id": "field_3", "true": "field", "pred": "forest", "score": 0.8,
                       "p_true": 0.2}]}))
    server, th, url = _serve(create_app(root, cache_dir=tmp_path / "cache"))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "#eval=e0")
            page.click("a.cls-link:text('field')")
            page.wait_for_selector("#worst li a")
            assert "field_3.png → forest (0.2000)" in page.inner_text("#worst")
            page.click("#worst li a")
            page.wait_for_function("window.__rsv.ready && window.__rsv.tiles > 0", timeout=15000)
            assert "field_3.png" in page.inner_text("#scene-controls") and page.inner_text("#views") == ""
            browser.close()
    finally:
        server.should_exit = True
        th.join(5)
    assert not errors, errors
