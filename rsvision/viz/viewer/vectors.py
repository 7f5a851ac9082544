"""Vector layers in map coordinates, queried per viewport.

Every layer (GeoJSON / GeoPackage / GeoParquet detections, Task1 and DOTA label files) is loaded once
into *display* coordinates: WGS 84 longitude / latitude for a georeferenced view, ``(col, -row)`` for a
view in pixel coordinates (Leaflet's CRS.Simple, y up), and indexed with an STR-tree, so a request for
the current viewport (bbox, minimum score, classes) costs a tree query, not a scan of every box: a scene
with 100,000 detections answers in milliseconds and the page draws only what is in view.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import shapely
from pyproj import CRS, Transformer

from rsvision.errors import DataError

__all__ = ["VectorLayer", "load_layer"]


class VectorLayer:
    """Polygons with a class and an optional score (NaN: none, e.g. ground truth)."""

    def __init__(self, geoms: np.ndarray, classes: Sequence[str], scores: Sequence[float] | None = None):
        self.geoms = np.asarray(geoms, dtype=object)
        self.classes = np.asarray([str(c) for c in classes], dtype=object)
        self.scores = np.full(len(self.geoms), np.nan) if scores is None else np.asarray(scores, np.float64)
        self.tree = shapely.STRtree(self.geoms)
        b = shapely.total_bounds(self.geoms) if len(self.geoms) else np.full(4, np.nan)
        self.bounds = [float(v) for v in b]
        self._props: list[str] | None = None

    def summary(self) -> dict:
        names, counts = np.unique(self.classes, return_counts=True) if len(self.classes) else ([], [])
        s = self.scores[~np.isnan(self.scores)]
        return {"count": int(len(self.geoms)), "classes": {str(n): int(c) for n, c in zip(names, counts)},
                "scored": bool(len(s)), "score_min": float(s.min()) if len(s) else None,
                "score_max": float(s.max()) if len(s) else None,
                "bounds": None if any(math.isnan(v) for v in self.bounds) else self.bounds}

    def query(self, bbox: Sequence[float] | None = None, min_score: float = 0.0, classes: Sequence[str] | None = None,
              limit: int = 5000) -> dict:
        """Features intersecting ``bbox`` (display coordinates ``minx, miny, maxx, maxy``) scoring at least
        ``min_score`` (unscored features always pass), of ``classes`` (None: all), best ``limit`` first."""
        return json.loads(self.query_json(bbox, min_score, classes, limit))

    def query_json(self, bbox: Sequence[float] | None = None, min_score: float = 0.0,
                   classes: Sequence[str] | None = None, limit: int = 5000) -> str:
        """:meth:`query` as GeoJSON text, assembled from per-feature strings (a generic JSON encoder of
        5,000 nested dicts costs most of a response's time)."""
        if bbox is not None:
            idx = self.tree.query(shapely.box(*bbox), predicate="intersects")
        else:
            idx = np.arange(len(self.geoms))
        sc = self.scores[idx]
        keep = np.isnan(sc) | (sc >= min_score)
        if classes is not None:
            keep &= np.isin(self.classes[idx], list(classes))
        idx = idx[keep]
        idx = idx[np.argsort(-np.nan_to_num(self.scores[idx], nan=np.inf), kind="stable")]
        total = int(len(idx))
        idx = idx[: max(0, int(limit))]
        if self._props is None:  # once per layer: the properties of every feature as JSON text
            self._props = [json.dumps({"class": c} if math.isnan(v) else {"class": c, "score": round(float(v), 4)})
                           for c, v in zip(self.classes.tolist(), self.scores.tolist())]
        geo = shapely.to_geojson(self.geoms[idx]).tolist() if len(idx) else []
        feats = ",".join(f'{{"type":"Feature","id":{i},"geometry":{g},"properties":{self._props[i]}}}'
                         for i, g in zip(idx.tolist(), geo))
        return (f'{{"type":"FeatureCollection","features":[{feats}],"total":{total},"returned":{len(geo)},'
                f'"truncated":{"true" if total > len(geo) else "false"}}}')


def _to_display(geoms: np.ndarray, crs: Any, pixel_transform: Any, view_crs: Any, georef_view: bool) -> np.ndarray:
    """Source geometries -> display coordinates. ``crs`` None means pixel coordinates, which go through
    the scene's ``pixel_transform`` / ``view_crs`` on a georeferenced view and become ``(x, -y)`` otherwise."""
    if crs is None and not georef_view:
        return shapely.transform(geoms, lambda xy: xy * np.array([1.0, -1.0]))
    if crs is None:
        t = pixel_transform
        geoms = shapely.transform(geoms, lambda xy: np.column_stack([t.a * xy[:, 0] + t.b * xy[:, 1] + t.c,
                                                                     t.d * xy[:, 0] + t.e * xy[:, 1] + t.f]))
        crs = view_crs
    src = CRS.from_user_input(crs)
    if src.to_epsg() == 4326:
        return geoms
    tr = Transformer.from_crs(src, "EPSG:4326", always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _polys_from_rows(rows: list[list[float]]) -> np.ndarray:
    if not rows:
        return np.empty(0, dtype=object)
    arr = np.asarray(rows, np.float64).reshape(len(rows), -1, 2)
    return shapely.polygons(arr)


def _read_geojson(path: Path) -> tuple[np.ndarray, list, list, Any]:
    try:
        fc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read GeoJSON: {exc}", path=str(path)) from exc
    feats = fc.get("features") or []
    geoms = shapely.from_geojson([json.dumps(f["geometry"]) for f in feats]) if feats else np.empty(0, object)
    classes = [str((f.get("properties") or {}).get("class", "object")) for f in feats]
    scores = [(f.get("properties") or {}).get("score", math.nan) for f in feats]
    crs = ((fc.get("crs") or {}).get("properties") or {}).get("name")
    return np.asarray(geoms, dtype=object), classes, [math.nan if s is None else float(s) for s in scores], crs


def _read_frame(path: Path, key: str | None) -> tuple[np.ndarray, list, list, Any]:
    import geopandas as gpd

    gdf = gpd.read_parquet(path) if path.suffix.lower() == ".parquet" else gpd.read_file(path)
    if key and "scene" in gdf.columns:
        gdf = gdf[gdf["scene"].astype(str) == key]
    cls = gdf["class"].astype(str).tolist() if "class" in gdf.columns else ["object"] * len(gdf)
    scores = gdf["score"].astype(float).tolist() if "score" in gdf.columns else [math.nan] * len(gdf)
    return np.asarray(gdf.geometry.values, dtype=object), cls, scores, gdf.crs


def _read_task1(files: Sequence[Path], image_id: str) -> tuple[np.ndarray, list, list, Any]:
    rows, classes, scores = [], [], []
    for f in files:
        cls = f.stem[len("Task1_"):]
        with open(f, errors="replace") as fh:
            for line in fh:
                p = line.split()
                if len(p) >= 10 and p[0] == image_id:
                    scores.append(float(p[1]))
                    rows.append([float(v) for v in p[2:10]])
                    classes.append(cls)
    return _polys_from_rows(rows), classes, scores, None


def _read_dota(path: Path) -> tuple[np.ndarray, list, list, Any]:
    rows, classes = [], []
    with open(path, errors="replace") as fh:
        for line in fh:
            p = line.split()
            if len(p) >= 9:
                try:
                    rows.append([float(v) for v in p[:8]])
                except ValueError:  # "imagesource:" / "gsd:" header lines
                    continue
                classes.append(p[8])
    return _polys_from_rows(rows), classes, None, None


def load_layer(src, base) -> VectorLayer:
    """Load a :class:`~rsvision.viz.viewer.layers.VectorSource` for a view whose scene is ``base``
    (a Raster or None)."""
    georef_view = base.georef if base is not None else src.fmt in ("geojson", "gpkg", "parquet")
    if src.fmt == "geojson":
        geoms, classes, scores, crs = _read_geojson(src.path)
        if crs is None and (georef_view or base is None):
            crs = "EPSG:4326"  # RFC 7946: no crs member means WGS 84
    elif src.fmt in ("gpkg", "parquet"):
        geoms, classes, scores, crs = _read_frame(src.path, src.key)
        if crs is None and base is None:
            georef_view = False
    elif src.fmt == "task1":
        geoms, classes, scores, crs = _read_task1(src.files, src.key)
    else:
        geoms, classes, scores, crs = _read_dota(src.path)
    if crs is None and georef_view and (base is None or base.transform is None):
        georef_view = False
    geoms = np.asarray(geoms, dtype=object)
    ok = ~shapely.is_missing(geoms) if len(geoms) else np.zeros(0, bool)
    geoms = geoms[ok]
    classes = [c for c, k in zip(classes, ok) if k]
    scores = None if scores is None else [s for s, k in zip(scores, ok) if k]
    disp = _to_display(geoms, crs, base.transform if base is not None else None,
                       base.crs if base is not None else None, georef_view) if len(geoms) else geoms
    return VectorLayer(disp, classes, scores)
