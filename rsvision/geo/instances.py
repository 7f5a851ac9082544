"""Instance masks as polygons: pixel outlines (``rasterio.features.shapes``), in the raster's CRS when it has one.

Why here: :mod:`rsvision.geo.writers` writes rotated boxes and class masks; an instance is one object's
mask, possibly in several parts or with holes, so it becomes one (Multi)Polygon feature carrying its
class and score. Pixel coordinates are continuous, ``(0, 0)`` the outer corner of the top-left pixel,
as for every other rsvision polygon.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["mask_to_geometry", "instance_features", "write_instances_geojson"]


def mask_to_geometry(mask: np.ndarray, x0: float = 0.0, y0: float = 0.0, transform: Any = None):
    """``(h, w)`` bool mask whose top-left pixel is scene pixel ``(x0, y0)`` -> a shapely (Multi)Polygon
    tracing its pixel edges (8-connected parts, holes kept), in scene pixels or, with an affine
    ``transform`` (pixel -> CRS), in CRS units; None for an empty mask."""
    from rasterio import Affine, features
    from shapely.geometry import MultiPolygon, shape
    from shapely.ops import unary_union

    m = np.ascontiguousarray(np.asarray(mask, bool)).astype(np.uint8)
    if not m.any():
        return None
    t = Affine.translation(float(x0), float(y0))
    if transform is not None:
        t = transform @ t
    parts = [shape(g) for g, v in features.shapes(m, mask=m.astype(bool), transform=t, connectivity=8) if v == 1]
    geom = unary_union(parts) if len(parts) > 1 else parts[0]
    if geom.geom_type == "GeometryCollection":  # touching parts may union to lines; keep the areas
        geom = MultiPolygon([g for g in geom.geoms if g.geom_type == "Polygon"])
    return geom


def instance_features(masks: Sequence[np.ndarray], origins: Sequence[Sequence[int]],
                      props: Sequence[Mapping[str, Any]], transform: Any = None) -> list[dict]:
    """GeoJSON features of instance masks (``masks[i]`` is the crop at scene pixel ``origins[i]``), rings
    counter-clockwise (RFC 7946); empty masks are skipped."""
    from shapely.geometry import mapping
    from shapely.geometry.polygon import orient

    feats = []
    for m, (x0, y0), p in zip(masks, origins, props):
        g = mask_to_geometry(m, x0, y0, transform)
        if g is None:
            continue
        if g.geom_type == "Polygon":
            g = orient(g, 1.0)
        else:
            from shapely.geometry import MultiPolygon

            g = MultiPolygon([orient(q, 1.0) for q in g.geoms])
        feats.append({"type": "Feature", "geometry": mapping(g), "properties": dict(p)})
    return feats


def write_instances_geojson(features: list[dict], crs: Any, path: str | Path) -> Path:
    """A FeatureCollection of :func:`instance_features` (with the legacy ``crs`` member for a non-WGS 84
    CRS), written atomically."""
    from rsvision.geo.writers import write_feature_collection

    return write_feature_collection(features, crs, path)
