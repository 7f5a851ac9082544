"""The run-wide results of :func:`rsvision.tasks.batch.predict_many`, merged from the scene folders.

Merged from what the scenes' manifests list (never from memory), so a resumed run's results cover
the scenes earlier runs did as well:

- detections (``detect``, and any task whose scenes write ``detections.parquet``): one GeoParquet,
  ``detections.parquet``, reprojected to one CRS (:func:`rsvision.geo.parquet.choose_crs`); scenes
  without georeference have no map coordinates and are left out of it (counted); and the DOTA
  ``Task1_<class>.txt`` files, the scenes' lines one scene after the other;
- masks (``segment``, ``change``): a VRT mosaic per CRS, ``masks.vrt`` when every mask shares one
  (the usual case: tiles of one grid), else one ``masks_EPSG-<code>.vrt`` per CRS (``masks_crs<i>.vrt``
  without an EPSG code): one mosaic of masks in different CRSs would have to warp (resample) them,
  and class masks should stay exact (the per-scene GeoTIFFs are);
- classifications (``classify``): ``predictions.json`` / ``predictions.csv`` of every image.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

__all__ = ["merge_results"]


def merge_results(task: str, out: Path, manifests: Sequence[dict], hp: dict, crs: Any = None) -> dict:
    """Write the merged results of the done scenes' ``manifests`` into ``out``; their paths and counts."""
    outputs: dict[str, Any] = {}
    files = [m.get("outputs", {}) for m in manifests]
    parts = [out / f["parquet"] for f in files if "parquet" in f]
    if task in ("detect", "instance") and manifests:
        from rsvision.geo.parquet import merge_parquet

        path, target, rows = merge_parquet(parts, out / "detections.parquet", crs)
        outputs["parquet"] = {"path": str(path), "crs": target.to_string(), "rows": rows,
                              "scenes": len(parts), "scenes_without_georeference": len(manifests) - len(parts)}
        outputs["task1"] = _concat_task1(out, files)
    masks = [out / f["geotiff"] for f in files if "geotiff" in f]
    if masks:
        outputs["mosaic"] = _mosaics(masks, out)
    if task == "classify" and manifests:
        from rsvision.tasks.classification import _write_predictions

        preds = []
        for f in files:
            if "json" in f:
                preds += json.loads((out / f["json"]).read_text())["predictions"]
        _write_predictions(SimpleNamespace(classes=list(hp.get("classes") or []),
                                           multilabel=bool(hp.get("multilabel")), hparams=hp), preds, out)
        outputs["predictions"] = [str(out / "predictions.json"), str(out / "predictions.csv")]
    return outputs


def _concat_task1(out: Path, files: Sequence[dict]) -> list[str]:
    """``out/Task1_<class>.txt``: every scene's lines of that class, in scene order."""
    from rsvision.outputs import atomic_write

    names = sorted({k for f in files for k in f if k.startswith("Task1_")})
    written = []
    for name in names:
        with atomic_write(out / f"{name}.txt") as dst:
            for f in files:
                if name in f:
                    dst.write((out / f[name]).read_text())
        written.append(str(out / f"{name}.txt"))
    return written


def _mosaics(masks: Sequence[Path], out: Path) -> list[str]:
    import rasterio

    from rsvision.data.vrt import mosaic_vrt

    groups: dict[Any, list[Path]] = {}
    for m in masks:
        with rasterio.open(m) as ds:
            groups.setdefault(ds.crs, []).append(m)
    if len(groups) == 1:
        return [str(mosaic_vrt(masks, out / "masks.vrt"))]
    names = [f"EPSG-{c.to_epsg()}" if c is not None and c.to_epsg() else f"crs{i}" for i, c in enumerate(groups)]
    return [str(mosaic_vrt(g, out / f"masks_{name}.vrt")) for name, g in zip(names, groups.values())]
