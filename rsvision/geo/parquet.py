"""Detections of many scenes as one GeoParquet table (geopandas + pyarrow).

Each scene's detections are first written on their own (:func:`write_scene_parquet`, polygons in the
scene's CRS, full-precision scores) beside the scene's other outputs, so a resumed run merges what
earlier runs wrote without predicting again; :func:`merge_parquet` then reprojects every scene to
one CRS (a GeoParquet geometry column has exactly one) and writes ``detections.parquet``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["detections_frame", "write_scene_parquet", "merge_parquet", "choose_crs", "COLUMNS"]

COLUMNS = ["scene", "class", "score"]  # then "geometry"


def detections_frame(polys_px: np.ndarray, classes: Sequence[str], scores: Sequence[float], transform: Any, crs: Any,
                     scene: str):
    """A GeoDataFrame of pixel polygons ``(N, 2k)`` mapped through ``transform`` into ``crs``."""
    import geopandas as gpd
    from shapely.geometry import Polygon
    from shapely.geometry.polygon import orient

    from rsvision.geo.writers import pixel_to_crs

    polys = np.asarray(polys_px, np.float64)
    pts = pixel_to_crs(polys.reshape(len(polys), -1, 2), transform) if polys.size else np.zeros((0, 4, 2))
    geom = [orient(Polygon(r), sign=1.0) for r in pts]
    return gpd.GeoDataFrame({"scene": [scene] * len(geom), "class": list(classes),
                             "score": np.asarray(scores, np.float64)}, geometry=geom,
                            crs=crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def _write(frame, path: Path) -> Path:
    from rsvision.outputs import atomic_path

    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def write_scene_parquet(det: Any, scene: str, path: str | Path) -> Path | None:
    """One scene's :class:`~rsvision.tasks.predict_scene.SceneDetections` -> GeoParquet in its CRS
    (None when the scene has no georeference: its pixel polygons belong in no map)."""
    if det.transform is None or det.crs is None:
        return None
    names = [det.class_names[int(v)] for v in det.labels]
    return _write(detections_frame(det.polys().numpy(), names, det.scores.tolist(), det.transform, det.crs, scene),
                  Path(path))


def choose_crs(crss: Sequence[Any], crs: Any = None):
    """The output CRS: ``crs`` when given, else the scenes' CRS when they all share one, else EPSG:4326."""
    from pyproj import CRS

    if crs is not None:
        try:
            return CRS.from_user_input(crs)
        except Exception as exc:  # pyproj's CRSError and friends
            from rsvision.errors import ConfigError

            raise ConfigError(f"--crs: not a CRS pyproj knows ({crs!r}): {exc}") from exc
    uniq = {CRS.from_user_input(c) for c in crss if c is not None}
    return next(iter(uniq)) if len(uniq) == 1 else CRS.from_epsg(4326)


def merge_parquet(parts: Sequence[str | Path], path: str | Path, crs: Any = None) -> tuple[Path, Any, int]:
    """Concatenate per-scene GeoParquet files (in order) into ``path`` in one CRS (:func:`choose_crs`).
    Returns ``(path, crs, rows)``."""
    import geopandas as gpd
    import pandas as pd

    frames = [gpd.read_parquet(p) for p in parts]
    target = choose_crs([f.crs for f in frames], crs)
    frames = [f.to_crs(target) if f.crs != target else f for f in frames]
    if frames:
        merged = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=target)
    else:
        merged = gpd.GeoDataFrame({c: [] for c in COLUMNS}, geometry=[], crs=target)
    merged = merged[[*COLUMNS, "geometry"]]
    return _write(merged, Path(path)), target, len(merged)
