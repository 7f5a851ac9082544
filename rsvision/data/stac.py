"""STAC inputs: a local catalog, collection, item or ItemCollection JSON -> one scene per item.

A user points ``predict`` at the catalog they already have. Each item becomes one raster scene:

- assets are chosen by key (``--assets visual``) or by band name (``--assets red,green,blue,nir``),
  matched against each asset's ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1) ``name`` /
  ``common_name``, case-insensitive; a band of a multi-band asset is picked by its index there;
- without ``--assets``: the checkpoint's band names when it stores them (``band_names``), else the
  item's one data asset (``roles: [data]`` or a GeoTIFF / JP2 media type); several candidates ask
  for ``--assets``;
- one asset with all its bands is the scene itself; anything else is stacked into a VRT
  (:func:`rsvision.data.vrt.stack_vrt`: a small XML file, the pixels stay where they are).

Searching a remote STAC API with pystac-client yields the same ``pystac.Item`` objects, which
:func:`item_scenes` takes directly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rsvision.errors import ConfigError, DataError

__all__ = ["StacScene", "is_stac_file", "read_items", "select_assets", "item_scenes"]

_RASTER_TYPES = ("image/tiff", "image/jp2", "application/x-geotiff", "image/vnd.stac.geotiff")


@dataclass
class StacScene:
    """One item as a scene: ``path`` (the raster or its VRT), the item id (its output name), what it holds."""

    path: Path
    item_id: str
    assets: list[str]
    bands: list[str]
    source: str  # the STAC file the item came from


def is_stac_file(path: str | Path) -> bool:
    """A ``.json`` file holding a STAC catalog / collection / item / ItemCollection."""
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(d, dict):
        return False
    if "stac_version" in d:
        return True
    feats = d.get("features")
    return d.get("type") == "FeatureCollection" and isinstance(feats, list) and any(
        isinstance(f, dict) and "stac_version" in f for f in feats)


def read_items(path: str | Path) -> list[Any]:
    """Every item of a local STAC file (catalogs and collections walked recursively), in file order."""
    import pystac

    p = Path(path)
    try:
        d = json.loads(p.read_text())
        if d.get("type") == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(d, preserve_dict=False))
            for it in items:  # relative asset hrefs resolve against the collection file
                for a in it.assets.values():
                    if not _is_abs(a.href):
                        a.href = str((p.parent / a.href).resolve())
            return items
        obj = pystac.read_file(str(p.resolve()))
    except (OSError, ValueError, KeyError, pystac.STACError) as exc:
        raise DataError(f"cannot read STAC file: {exc}", path=str(p)) from exc
    if isinstance(obj, pystac.Item):
        return [obj]
    items = list(obj.get_items(recursive=True))
    if not items:
        raise DataError("STAC catalog holds no items", path=str(p))
    return items


def _is_abs(href: str) -> bool:
    return "://" in href or href.startswith("/")


def _asset_bands(asset: Any) -> list[dict]:
    d = asset.to_dict()
    bands = d.get("eo:bands") or d.get("bands") or []
    return [b for b in bands if isinstance(b, dict)]


def _is_raster(asset: Any) -> bool:
    mt = (asset.media_type or "").split(";")[0].strip().lower()
    return mt in _RASTER_TYPES or Path(asset.href.split("?")[0]).suffix.lower() in (".tif", ".tiff", ".jp2", ".vrt")


def select_assets(item: Any, wanted: Sequence[str] | None) -> list[tuple[str, str, int | None, str]]:
    """``(asset key, href, 1-based band or None for all, band label)`` per requested name, in order.

    Raises :class:`ConfigError` naming the item and the names on offer when a name matches nothing."""
    assets = dict(item.assets)
    if not wanted:
        data = [k for k, a in assets.items() if "data" in (a.roles or []) and _is_raster(a)]
        data = data or [k for k, a in assets.items() if _is_raster(a)]
        if len(data) != 1:
            raise ConfigError(f"STAC item {item.id!r} has {len(data) or 'no'} raster assets "
                              f"({', '.join(data) or 'none'}); choose them with --assets KEY[,KEY...] or band names")
        return [(data[0], assets[data[0]].href, None, data[0])]
    out = []
    for name in wanted:
        if name in assets:
            out.append((name, assets[name].href, None, name))
            continue
        hit = None
        for key, a in assets.items():
            for i, b in enumerate(_asset_bands(a), 1):
                if name.lower() in {str(b.get("name", "")).lower(), str(b.get("common_name", "")).lower()}:
                    hit = (key, a.href, i if len(_asset_bands(a)) > 1 else None, name)
                    break
            if hit:
                break
        if hit is None:
            offer = sorted(set(assets) | {str(b.get(f)) for a in assets.values() for b in _asset_bands(a)
                                          for f in ("name", "common_name") if b.get(f)})
            raise ConfigError(f"--assets: {name!r} is neither an asset key nor a band name of STAC item {item.id!r}; "
                              f"it offers {', '.join(offer)}")
        out.append(hit)
    return out


def item_scenes(items: Sequence[Any], vrt_dir: str | Path, assets: Sequence[str] | None = None,
                source: str = "") -> list[StacScene]:
    """Items -> scenes (see the module docstring); VRTs of stacked assets go to ``vrt_dir/<item id>.vrt``."""
    from rsvision.data.vrt import gdal_href, stack_vrt

    scenes = []
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError(f"two STAC items share the id {item.id!r}", path=source or None)
        seen.add(item.id)
        sel = select_assets(item, assets)
        if len(sel) == 1 and sel[0][2] is None and not gdal_href(sel[0][1]).startswith("/vsi"):
            path = Path(gdal_href(sel[0][1]))
            if not path.is_file():
                raise DataError(f"asset {sel[0][0]!r} of STAC item {item.id!r} not found", path=str(path))
        else:
            path = stack_vrt([(href, band) for _, href, band, _ in sel], Path(vrt_dir) / f"{item.id}.vrt",
                             names=[label for *_, label in sel])
        scenes.append(StacScene(path, item.id, [k for k, *_ in sel], [label for *_, label in sel], source))
    return scenes
