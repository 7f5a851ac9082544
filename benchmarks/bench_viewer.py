"""``rsvision view`` under load: a GeoParquet of N detections (two scenes) and a scene of S x S pixels.

    python benchmarks/bench_viewer.py                      # 150,000 boxes (100,000 on the scene), 8192 px scene
    python benchmarks/bench_viewer.py --boxes 30000 --scene 4096

Times (median of 5, through FastAPI's TestClient, so HTTP parsing is included but no network): loading
and indexing the layer, viewport queries covering the whole scene / 10 % / 2 % of each side (at most
5,000 features returned, best scores first), the first zoomed-out tile of a big scene without overviews
(builds the cached decimated copy), and zoomed-out / full-resolution tiles after it. The load average is
printed: on a shared machine read the numbers as upper bounds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median(fn, n=5):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boxes", type=int, default=150_000)
    ap.add_argument("--scene", type=int, default=8192)
    args = ap.parse_args()

    import morecantile
    from fastapi.testclient import TestClient

    from rsvision.viz.viewer.app import create_app
    from tests.viz.test_viewer import Z, TX, TY, _geoparquet, _scene_extent, _write_tif

    print(f"load average at start: {os.getloadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    root = tmp / "batch"
    root.mkdir()
    s = args.scene
    rng = np.random.default_rng(0)
    _write_tif(root / "scene.tif", rng.integers(0, 255, (3, s, s), dtype=np.uint8), bounds=_scene_extent(),
               tiled=True, blockxsize=256, blockysize=256)
    _geoparquet(root / "detections.parquet", n=args.boxes)
    c = TestClient(create_app(root, cache_dir=tmp / "cache"))
    cat = c.get("/api/catalog").json()
    v = next(w for w in cat["views"] if w["name"] == "scene.tif")
    vid, rid = v["vectors"][0]["id"], v["base"]["id"]
    t, sm = _median(lambda: c.get(f"/api/vectors/{vid}/summary").json(), 1)
    print(f"layer load + index: {sm['count']} boxes in {t:.2f} s")
    w, so, e, n = v["base"]["bounds"]
    for frac in (1.0, 0.1, 0.02):
        bb = ",".join(map(str, (w, so, w + frac * (e - w), so + frac * (n - so))))
        t, r = _median(lambda: c.get(f"/api/vectors/{vid}", params={"bbox": bb, "min_score": 0.3}).json())
        print(f"viewport {frac:>4.0%} of a side: {r['total']:>6} match, {r['returned']:>5} returned, {1000 * t:.0f} ms")
    t, _ = _median(lambda: c.get(f"/api/tiles/{rid}/{Z}/{TX}/{TY}.png").content, 1)
    print(f"first zoomed-out tile ({s} px scene, no overviews: builds the cached copy): {t:.2f} s")
    t, _ = _median(lambda: c.get(f"/api/tiles/{rid}/{Z}/{TX}/{TY}.png").content)
    print(f"zoomed-out tile afterwards: {1000 * t:.0f} ms")
    zf = Z + int(np.log2(s // 256))
    tms = morecantile.tms.get("WebMercatorQuad")
    tile = next(iter(tms.tiles(*v["base"]["bounds"], zooms=[zf])))
    t, _ = _median(lambda: c.get(f"/api/tiles/{rid}/{zf}/{tile.x + 3}/{tile.y + 3}.png").content)
    print(f"full-resolution tile (zoom {zf}): {1000 * t:.0f} ms")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
