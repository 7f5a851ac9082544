"""The viewer's HTTP API and page (FastAPI): ``create_app(path)`` serves what :class:`Catalog` found.

Safe by construction: read-only (any method but GET / HEAD is answered 405), items addressed by id, the
one file route resolves its path under PATH and serves only files the catalogue listed (``..``, absolute
paths, encoded traversal and symlinks out of PATH are refused with 403); rasters outside PATH that PATH
names (batch manifests' scene inputs, eval examples: :mod:`~rsvision.viz.viewer.layers`) are only
rendered as tiles, by id. Derived files (curve plots,
overview copies) go to the cache folder, never under PATH. The page and Leaflet are package files: the
viewer needs no network; a basemap is drawn only when ``basemap`` (a ``{z}/{x}/{y}`` URL) is given.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from rsvision.viz.viewer.layers import Catalog, PathRefused
from rsvision.viz.viewer.reports import add_eval_examples, eval_summary, run_summary
from rsvision.viz.viewer.tiles import TileRenderer
from rsvision.viz.viewer.vectors import VectorLayer, load_layer

__all__ = ["create_app", "default_cache_dir", "STATIC"]

STATIC = Path(__file__).with_name("static")
_PNG = {"Cache-Control": "max-age=60"}


def default_cache_dir() -> Path:
    """``$RSVISION_HOME/viewer`` or ``~/.cache/rsvision/viewer`` (XDG_CACHE_HOME honoured)."""
    home = os.environ.get("RSVISION_HOME")
    if home:
        return Path(home).expanduser() / "viewer"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "rsvision" / "viewer"


def _ints(text: str | None, name: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HTTPException(422, f"{name} must be comma-separated integers") from None


def create_app(path: str | Path, basemap: str | None = None, cache_dir: str | Path | None = None,
               overview_threshold: int = 4096) -> FastAPI:
    """The viewer app for ``path`` (a prediction / batch output folder, a run directory, an eval JSON, or a
    folder holding any of these). ``basemap``: a tile URL drawn under georeferenced scenes."""
    cat = Catalog(path)
    add_eval_examples(cat)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if cache.resolve().is_relative_to(cat.root):
        raise PathRefused("the viewer cache must not lie under the viewed folder (PATH is read-only)", path=str(cache))
    tiles = TileRenderer(cache / "overviews", overview_threshold)
    layers: dict[str, VectorLayer] = {}
    lock = threading.Lock()
    app = FastAPI(title="rsvision view", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.catalog, app.state.tiles = cat, tiles

    @app.middleware("http")
    async def read_only(request: Request, call_next):
        if request.method not in ("GET", "HEAD"):
            return JSONResponse({"detail": "read-only viewer"}, status_code=405, headers={"Allow": "GET, HEAD"})
        return await call_next(request)

    def raster(rid: str, kind: str):
        r = cat.rasters.get(rid)
        if r is None or r.kind != kind:
            raise HTTPException(404, f"no {kind} {rid}")
        return r

    def layer(vid: str) -> VectorLayer:
        if vid not in cat.vectors:
            raise HTTPException(404, f"no vector layer {vid}")
        with lock:
            if vid not in layers:
                layers[vid] = load_layer(cat.vectors[vid], cat.view_of[vid].base)
            return layers[vid]

    def det_classes() -> list[str]:
        """Detection classes in the checkpoint's order when PATH holds one (colours then match the drawn
        PNGs), then any other class the layers name."""
        if not hasattr(app.state, "det_classes"):
            hp = cat.checkpoint_hparams({"detect", "instance"})
            app.state.det_classes = [str(c) for c in (hp or {}).get("classes", [])]
        return app.state.det_classes

    def mask_legend(r) -> tuple[list[str], list[list[int]]]:
        from rsvision.viz.masks import default_palette

        classes, palette = r.classes, r.palette
        if classes is None:
            hp = cat.checkpoint_hparams({"segment", "change"}) or {}
            classes = [str(c) for c in hp.get("classes", [])] or None
            palette = palette or hp.get("palette")
        if classes is None:
            classes = [f"class {i}" for i in range(len(palette) if palette else 2)]
        palette = [list(c)[:3] for c in (palette or default_palette(len(classes)))]
        while len(palette) < len(classes):
            palette.append(default_palette(len(classes))[len(palette)])
        return classes, palette

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/catalog")
    def catalog():
        out = cat.public()
        for v in out["views"]:
            for m in v["masks"]:
                m["classes"], m["palette"] = mask_legend(cat.rasters[m["id"]])
        out["basemap"] = basemap
        out["detection_classes"] = det_classes()
        return out

    @app.get("/api/tiles/{rid}/{z}/{x}/{y}.png")
    def scene_tile(rid: str, z: int, x: int, y: int, bands: str | None = None,
                   stretch: str = Query("auto", pattern="^(auto|percentile|none)$")):
        r = raster(rid, "scene")
        b = _ints(bands, "bands")
        if b is not None and (len(b) not in (1, 3) or not all(1 <= i <= r.count for i in b)):
            raise HTTPException(422, f"bands must be 1 or 3 band numbers in 1..{r.count}")
        if b is not None and len(b) == 1:
            b = b * 3
        return Response(tiles.scene_tile(r, z, x, y, b, stretch), media_type="image/png", headers=_PNG)

    @app.get("/api/masks/{rid}/{z}/{x}/{y}.png")
    def mask_tile(rid: str, z: int, x: int, y: int, hide: str | None = None):
        r = raster(rid, "mask")
        _, palette = mask_legend(r)
        return Response(tiles.mask_tile(r, z, x, y, palette, _ints(hide, "hide") or ()), media_type="image/png",
                        headers=_PNG)

    @app.get("/api/vectors/{vid}")
    def vectors(vid: str, bbox: str | None = None, min_score: float = 0.0, classes: str | None = None,
                limit: int = Query(5000, ge=0, le=100_000)):
        lay = layer(vid)
        box = None
        if bbox:
            try:
                box = [float(v) for v in bbox.split(",")]
            except ValueError:
                box = []
            if len(box) != 4:
                raise HTTPException(422, "bbox must be minx,miny,maxx,maxy")
        cls = None if classes is None else [c for c in classes.split(",") if c]
        return Response(lay.query_json(box, min_score, cls, limit), media_type="application/json")

    @app.get("/api/vectors/{vid}/summary")
    def vector_summary(vid: str):
        return layer(vid).summary()

    @app.get("/api/runs/{run_id}")
    def run(run_id: str):
        if run_id not in cat.runs:
            raise HTTPException(404, f"no run {run_id}")
        return run_summary(cat.runs[run_id])

    @app.get("/api/runs/{run_id}/curves.png")
    def run_curves(run_id: str):
        if run_id not in cat.runs:
            raise HTTPException(404, f"no run {run_id}")
        from rsvision.viz.plots import plot_training_curves

        csv = cat.runs[run_id]["path"] / "metrics.csv"
        st = csv.stat()
        key = hashlib.sha1(f"{csv}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
        out = cache / "curves" / f"{key}.png"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            if plot_training_curves(csv, out) is None:
                raise HTTPException(404, "metrics.csv holds no metrics")
        return FileResponse(out, media_type="image/png")

    @app.get("/api/evals/{eval_id}")
    def evaluation(eval_id: str):
        if eval_id not in cat.evals:
            raise HTTPException(404, f"no eval {eval_id}")
        return eval_summary(cat.evals[eval_id], cat)

    @app.get("/api/file")
    def file(path: str):
        try:
            p = cat.file(path)
        except PathRefused:
            raise HTTPException(403, "path not served") from None
        return FileResponse(p)

    return app
