"""What a viewer PATH holds: scenes, masks, vector layers, run directories and eval JSONs.

PATH is walked once, at start, without leaving it (symlinked folders are not followed, symlinked files
pointing outside are skipped) and every item gets an id; the HTTP API addresses items by id only, so
the one place a request names a file is ``/api/file``, which goes through :func:`resolve_under`.
Nothing is ever written under PATH.

Rasters outside PATH are shown only when PATH names them: the scene inputs of batch-predict manifests
(``<scene>/manifest.json`` beside ``batch.json``) and the worst examples of an eval JSON's ``per_image``
records (:meth:`Catalog.add_examples`). Each such path is resolved (symlinks followed) and must be an
existing file with a raster extension that GDAL opens (a VRT only if its sources are local raster
files); it is an allow-list entry, addressed by id and rendered as tiles only: ``/api/file`` never
serves it, and no other file outside PATH becomes reachable.

Items are grouped into *views* (one scene and what belongs to it) by file stem, the way the predict
commands name their outputs: ``x.tif`` <- ``x.geojson``, ``x_mask.tif``, ``x_mask.geojson``, Task1 lines
of image ``x``, DOTA labels ``labelTxt/x.txt``, GeoParquet rows whose ``scene`` is ``x``.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsvision.errors import DataError

__all__ = ["Catalog", "Raster", "VectorSource", "View", "resolve_under", "PathRefused"]

RASTER_EXT = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".vrt"}
VECTOR_EXT = {".geojson", ".gpkg", ".parquet"}
EVAL_TASKS = {"classify", "detect", "segment", "change", "instance"}
#: pictures the commands write for people (drawn boxes, overlays, plots): shown as files, not as scenes
PICTURE_SUFFIXES = ("_overlay", "_compare")
PICTURE_NAMES = {"curves.png", "confusion_matrix.png"}
MASK_SUFFIXES = ("_mask", "_change", "_pred")
MAX_FILES = 50_000
MAX_EXTERNAL = 5_000  # rasters outside PATH named by manifests / eval records
BATCH_FILE, MANIFEST = "batch.json", "manifest.json"  # rsvision.tasks.batch's names


class PathRefused(DataError):
    """A request named a file outside PATH (traversal, absolute path, symlink out) or not served."""


def resolve_under(root: Path, rel: str, allowed: set[Path] | None = None) -> Path:
    """``root / rel`` resolved (symlinks followed), refused unless it is ``root`` or lies under it and
    (``allowed``) is one of the served files; absolute paths and ``..`` are refused before resolving."""
    if not rel or rel.startswith(("/", "\\")) or os.path.isabs(rel) or ".." in Path(rel).parts or "\x00" in rel:
        raise PathRefused("path not served", path=rel)
    p = (root / rel).resolve()
    if not p.is_relative_to(root) or (allowed is not None and p not in allowed):
        raise PathRefused("path not served", path=rel)
    return p


@dataclass
class Raster:
    id: str
    path: Path
    rel: str
    kind: str  # "scene" | "mask"
    width: int
    height: int
    count: int
    dtype: str
    georef: bool
    driver: str
    nodata: float | None = None
    band_names: list[str] = field(default_factory=list)
    classes: list[str] | None = None  # masks
    palette: list[list[int]] | None = None  # masks
    bounds: list[float] | None = None  # georeferenced: [west, south, east, north] in WGS 84
    transform: Any = None
    crs: Any = None
    rgb: list[int] = field(default_factory=lambda: [1, 2, 3])  # default 1-based display bands
    external: bool = False  # outside PATH, allow-listed: tiles only (``rel`` is the absolute path)
    group: Path | None = None  # batch scene folder whose outputs belong to this raster
    alias: str | None = None  # batch scene id (outputs of the merged files are keyed by it)

    def public(self) -> dict:
        d = {k: getattr(self, k) for k in ("id", "rel", "kind", "width", "height", "count", "dtype", "georef",
                                           "band_names", "classes", "palette", "bounds", "rgb", "external")}
        d["name"] = self.path.name
        return d

    @property
    def name(self) -> str:
        """How a view of this raster is listed: its path under PATH, or a batch scene's id."""
        return (self.alias or self.path.name) if self.external else self.rel


@dataclass
class VectorSource:
    id: str
    path: Path
    rel: str
    fmt: str  # geojson | gpkg | parquet | task1 | dota
    stem: str
    key: str | None = None  # parquet: the ``scene`` value; task1: the image id
    files: list[Path] = field(default_factory=list)  # task1: one file per class
    role: str = "detections"  # detections | ground truth | mask polygons

    def public(self) -> dict:
        return {"id": self.id, "rel": self.rel, "fmt": self.fmt, "role": self.role, "name": self.name}

    @property
    def name(self) -> str:
        return f"{self.rel}" + (f" [{self.key}]" if self.key and self.fmt in ("parquet", "task1") else "")


@dataclass
class View:
    id: str
    name: str
    base: Raster | None
    masks: list[Raster] = field(default_factory=list)
    vectors: list[VectorSource] = field(default_factory=list)
    example: bool = False  # an eval's example image, listed under its eval rather than as a scene

    @property
    def georef(self) -> bool:
        if self.base is not None:
            return self.base.georef
        return any(m.georef for m in self.masks) or any(v.fmt in ("geojson", "gpkg", "parquet") for v in self.vectors)


def _stem_key(stem: str) -> str:
    for s in MASK_SUFFIXES:
        if stem.endswith(s) and len(stem) > len(s):
            return stem[: -len(s)]
    return stem


def _probe_raster(path: Path, rel: str, rid: str) -> Raster | None:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                tags = ds.tags()
                try:
                    cmap = ds.colormap(1)
                except ValueError:
                    cmap = None
                alpha = [i + 1 for i, c in enumerate(ds.colorinterp) if c.name == "alpha"]
                bands = [i for i in range(1, ds.count + 1) if i not in alpha]
                integer = np.issubdtype(np.dtype(ds.dtypes[0]), np.integer)
                is_mask = (len(bands) == 1 and integer and ("CLASSES" in tags or cmap is not None
                                                             or path.stem.endswith(MASK_SUFFIXES)
                                                             or path.stem.startswith("masks")))  # batch mosaics
                georef = ds.crs is not None
                r = Raster(rid, path, rel, "mask" if is_mask else "scene", ds.width, ds.height, len(bands),
                           ds.dtypes[0], georef, ds.driver, ds.nodata,
                           [ds.descriptions[i - 1] or f"band {i}" for i in bands], transform=ds.transform, crs=ds.crs)
                if georef:
                    from rasterio.warp import transform_bounds

                    r.bounds = [float(v) for v in transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)]
                ci = [c.name for c in ds.colorinterp]
                if all(n in ci for n in ("red", "green", "blue")):
                    r.rgb = [ci.index(n) + 1 for n in ("red", "green", "blue")]
                else:
                    r.rgb = bands[:3] if len(bands) >= 3 else [bands[0]] * 3
                if is_mask:
                    if "CLASSES" in tags:
                        r.classes = [str(c) for c in json.loads(tags["CLASSES"])]
                    if "PALETTE" in tags:
                        r.palette = [[int(v) for v in c[:3]] for c in json.loads(tags["PALETTE"])]
                    elif cmap:  # a colour table has 256 entries: the classes are the values the mask holds
                        n = len(r.classes) if r.classes else _max_class(ds) + 1
                        r.palette = [list(cmap.get(i, (0, 0, 0, 0))[:3]) for i in range(n)]
                return r
    except (RasterioIOError, ValueError, json.JSONDecodeError):
        return None


def _max_class(ds) -> int:
    """The largest class value of a mask (a read of at most 1024 px a side; nodata and 255 ignored)."""
    s = min(1.0, 1024 / max(ds.width, ds.height))
    a = ds.read(1, out_shape=(max(1, round(ds.height * s)), max(1, round(ds.width * s))))
    a = a[(a != 255) & (a != (ds.nodata if ds.nodata is not None else 255))]
    return int(a.max()) if a.size else 0


def _is_feature_collection(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    return '"FeatureCollection"' in head or '"features"' in head


def _read_eval(path: Path) -> dict | None:
    if path.stat().st_size > 50_000_000:
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) and d.get("task") in EVAL_TASKS else None


class Catalog:
    """Everything served from ``path`` (a folder, or one file: then only that file)."""

    def __init__(self, path: str | Path):
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError("no such file or folder", path=str(path))
        p = p.resolve()
        self.root = p if p.is_dir() else p.parent
        self.single = None if p.is_dir() else p
        self.rasters: dict[str, Raster] = {}
        self.vectors: dict[str, VectorSource] = {}
        self.runs: dict[str, dict] = {}
        self.evals: dict[str, dict] = {}
        self.views: dict[str, View] = {}
        self.pictures: list[str] = []
        self.checkpoints: list[Path] = []
        self.served: set[Path] = set()
        self._ext: dict[Path, Raster] = {}  # allow-listed rasters outside PATH, by resolved path
        self._example_view: dict[Path, str] = {}
        self._scan()
        self._group()

    # -- discovery ---------------------------------------------------------------------------------
    def _files(self):
        if self.single is not None:
            yield self.single
            return
        n = 0
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")) and d != "lightning_logs")
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                f = Path(dirpath) / name
                if f.is_symlink():
                    real = f.resolve()
                    if not real.is_relative_to(self.root) or not real.is_file():
                        continue  # a link out of PATH is never served
                n += 1
                if n > MAX_FILES:
                    return
                yield f

    def _scan(self) -> None:
        task1: dict[Path, list[Path]] = {}
        run_dirs = set()
        files = list(self._files())
        for f in files:
            if f.name == "metrics.csv":
                run_dirs.add(f.parent)
        for f in files:
            rel = f.relative_to(self.root).as_posix()
            ext = f.suffix.lower()
            self.served.add(f.resolve())
            in_run = any(f.parent == d or d in f.parents for d in run_dirs)
            if ext == ".ckpt":
                self.checkpoints.append(f)
            elif ext in RASTER_EXT:
                if ext == ".vrt" and not _vrt_inside(f, self.root):
                    continue  # a VRT reading files outside PATH would serve them
                if f.name in PICTURE_NAMES or f.stem.endswith(PICTURE_SUFFIXES) or (in_run and ext == ".png"):
                    self.pictures.append(rel)
                    continue
                r = _probe_raster(f, rel, f"r{len(self.rasters)}")
                if r is not None:
                    self.rasters[r.id] = r
            elif ext in VECTOR_EXT or (ext == ".json" and _is_feature_collection(f)):
                if ext == ".parquet":
                    for key in _parquet_scenes(f):
                        vid = f"v{len(self.vectors)}"
                        self.vectors[vid] = VectorSource(vid, f, rel, "parquet", Path(str(key)).stem, key=str(key))
                else:
                    vid = f"v{len(self.vectors)}"
                    role = "mask polygons" if f.stem.endswith(MASK_SUFFIXES) else "detections"
                    self.vectors[vid] = VectorSource(vid, f, rel, "gpkg" if ext == ".gpkg" else "geojson",
                                                     _stem_key(f.stem), role=role)
            elif ext == ".txt" and f.name.startswith("Task1_"):
                task1.setdefault(f.parent, []).append(f)
            elif ext == ".txt" and (f.parent.name == "labelTxt" or f.parent.name.endswith("_labelTxt")):
                vid = f"v{len(self.vectors)}"
                self.vectors[vid] = VectorSource(vid, f, rel, "dota", f.stem, role="ground truth")
            elif ext == ".json":
                d = _read_eval(f)
                if d is not None:
                    eid = f"e{len(self.evals)}"
                    self.evals[eid] = {"id": eid, "rel": rel, "path": f, "task": d["task"]}
        for d in sorted(run_dirs):
            rid = f"run{len(self.runs)}"
            rel = d.relative_to(self.root).as_posix() if d != self.root else "."
            self.runs[rid] = {"id": rid, "rel": rel, "path": d,
                              "files": sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))}
        # a drawn detection picture beside its GeoJSON is a picture of that scene, not a scene
        for rid, r in list(self.rasters.items()):
            if r.driver in ("PNG", "JPEG") and r.path.with_suffix(".geojson").is_file():
                self.pictures.append(r.rel)
                del self.rasters[rid]
        for folder, fs in task1.items():
            geojson_stems = {v.stem for v in self.vectors.values() if v.path.parent == folder and v.fmt == "geojson"}
            for image_id in sorted(_task1_ids(fs) - geojson_stems):  # a GeoJSON of the scene holds the same boxes
                vid = f"v{len(self.vectors)}"
                rel = folder.relative_to(self.root).as_posix() if folder != self.root else "."
                self.vectors[vid] = VectorSource(vid, folder, f"{rel}/Task1_*.txt", "task1", image_id, key=image_id,
                                                 files=sorted(fs))
        self._drop_batch_duplicates()
        self._batch_inputs(files)

    # -- rasters outside PATH ----------------------------------------------------------------------
    def _external(self, p: Path, **kw: Any) -> Raster | None:
        """The allow-listed raster of ``p`` (absolute) when it is outside PATH and passes the checks of
        the module docstring; the same path twice is one raster."""
        try:
            real = p.resolve()
        except (OSError, RuntimeError):
            return None
        if real in self._ext:
            return self._ext[real]
        if (real.is_relative_to(self.root) and real in self.served and real.suffix.lower() != ".vrt") \
                or len(self._ext) >= MAX_EXTERNAL or real.suffix.lower() not in RASTER_EXT or not real.is_file() \
                or (real.suffix.lower() == ".vrt" and not _vrt_local(real)):
            return None
        r = _probe_raster(real, str(real), f"x{len(self._ext)}")
        if r is not None:
            r.external = True
            for k, v in kw.items():
                setattr(r, k, v)
            self._ext[real] = r
            self.rasters[r.id] = r
        return r

    def _batch_inputs(self, files: list[Path]) -> None:
        """Scene inputs of batch-predict manifests (change: date B, the one predictions are drawn on);
        relative inputs are tried against the working folder, then the batch folder's parent."""
        for f in files:
            if f.name != MANIFEST or not (f.parent.parent / BATCH_FILE).is_file():
                continue
            try:
                m = json.loads(f.read_text())
                inputs = [str(x) for x in m.get("inputs") or []]
            except (OSError, ValueError, AttributeError, TypeError):
                continue
            if not inputs:
                continue
            p = Path(inputs[-1]).expanduser()
            cands = [p] if p.is_absolute() else [Path.cwd() / p, f.parent.parent.parent / p]
            for c in cands:
                real = c.resolve()
                if real.is_relative_to(self.root) and real in self.served and any(
                        r.path == real for r in self.rasters.values()):
                    break  # inside PATH and already a scene
                if self._external(c, group=f.parent, alias=str(m.get("scene") or f.parent.name)) is not None:
                    break

    def add_examples(self, paths: list[Path]) -> dict[Path, str]:
        """Views for eval example images outside PATH (``paths`` absolute): ``{resolved path: view id}``. A
        view of detections only whose scene name is the image's stem gets the image as its base."""
        out: dict[Path, str] = {}
        for p in paths:
            had = len(self._ext)
            r = self._external(p)
            if r is None:
                continue
            if len(self._ext) > had:  # new: give it a view
                w = next((w for w in self.views.values() if w.base is None and not w.masks and w.vectors
                          and all(v.stem == r.path.stem for v in w.vectors)), None)
                if w is not None:
                    w.base, w.name = r, r.name
                else:
                    self.views[r.id] = View(r.id, r.name, r, example=True)
                self._example_view[r.path] = (w or self.views[r.id]).id
            if r.path in self._example_view:
                out[r.path] = self._example_view[r.path]
        return out

    def _drop_batch_duplicates(self) -> None:
        """A batch-predict folder (``batch.json`` + merged ``detections.parquet``) holds each scene's
        detections four times (scene GeoJSON, scene GeoParquet, merged GeoParquet, merged Task1): the
        merged GeoParquet, one layer per scene, stands for them all."""
        batches = {v.path.parent for v in self.vectors.values()
                   if v.fmt == "parquet" and (v.path.parent / "batch.json").is_file()}
        for vid, v in list(self.vectors.items()):
            b = next((d for d in batches if d in v.path.parents or v.path == d), None)
            if b is None or v.role == "mask polygons" or (v.fmt == "parquet" and v.path.parent == b):
                continue
            if v.fmt in ("geojson", "parquet", "task1"):
                del self.vectors[vid]

    def _group(self) -> None:
        scenes = [r for r in self.rasters.values() if r.kind == "scene"]
        by_stem: dict[str, list[Raster]] = {}
        for r in scenes:
            by_stem.setdefault(r.path.stem, []).append(r)
            if r.alias and r.alias != r.path.stem:
                by_stem.setdefault(r.alias, []).append(r)

        def home(stem: str, near: Path) -> Raster | None:
            cands = by_stem.get(stem, [])
            if not cands:
                return None
            return max(cands, key=lambda r: (r.group is not None and r.group in near.parents,
                                             len(os.path.commonpath([r.path, near])), r.georef))

        views: dict[str, View] = {r.id: View(r.id, r.name, r) for r in scenes}
        for m in (r for r in self.rasters.values() if r.kind == "mask"):
            h = home(_stem_key(m.path.stem), m.path)
            if h is not None and (h.width, h.height) == (m.width, m.height):
                views[h.id].masks.append(m)
            else:
                views[m.id] = View(m.id, m.rel, None, [m])
        for v in self.vectors.values():
            h = home(v.stem, v.path)
            if h is not None:
                views[h.id].vectors.append(v)
            else:
                views[v.id] = View(v.id, v.name, None, vectors=[v])
        # views with results first (then the largest scenes): the page opens on the first one
        order = sorted(views.values(), key=lambda w: (-(len(w.masks) + sum(x.role != "ground truth" for x in w.vectors)),
                                                       -(w.base.width * w.base.height if w.base else 0), w.name))
        self.views = {w.id: w for w in order}
        self.view_of = {x.id: w for w in order for x in [*w.masks, *w.vectors]}

    # -- lookups -----------------------------------------------------------------------------------
    def raster(self, rid: str) -> Raster:
        if rid not in self.rasters:
            raise KeyError(rid)
        return self.rasters[rid]

    def file(self, rel: str) -> Path:
        """A served file by its path relative to PATH (:func:`resolve_under`)."""
        p = resolve_under(self.root, rel, self.served)
        if not p.is_file():
            raise PathRefused("path not served", path=rel)
        return p

    def view_of_image(self, path: Path) -> str | None:
        """The view whose scene is the file ``path`` (resolved), if any."""
        if getattr(self, "_by_image", (None, -1))[1] != len(self.views):
            self._by_image = ({w.base.path.resolve(): w.id for w in reversed(self.views.values()) if w.base is not None},
                              len(self.views))
        try:
            return self._by_image[0].get(path.resolve())
        except (OSError, RuntimeError):
            return None

    def checkpoint_hparams(self, tasks: set[str]) -> dict | None:
        """``hyper_parameters`` of the first checkpoint under PATH of one of ``tasks`` (class names and
        palette for files that do not carry them); read with ``weights_only=True``."""
        for c in self.checkpoints:
            if not hasattr(self, "_hp"):
                self._hp: dict[Path, dict] = {}
            if c not in self._hp:
                try:
                    import torch

                    hp = dict(torch.load(c, map_location="cpu", weights_only=True).get("hyper_parameters") or {})
                    hp["classes"] = hp.get("classes") or hp.get("class_names")  # detection checkpoints: class_names
                    self._hp[c] = hp
                except Exception:  # noqa: BLE001 - an unreadable checkpoint only means no class names
                    self._hp[c] = {}
            if self._hp[c].get("task") in tasks and self._hp[c].get("classes"):
                return self._hp[c]
        return None

    def public(self) -> dict:
        def view(w: View) -> dict:
            return {"id": w.id, "name": w.name, "georef": w.georef, "base": w.base.public() if w.base else None,
                    "masks": [m.public() for m in w.masks], "vectors": [v.public() for v in w.vectors]}

        return {"root": self.root.name if self.single is None else self.single.name,
                "views": [{**view(w), "example": w.example} for w in self.views.values()],
                "runs": [{k: r[k] for k in ("id", "rel", "files")} for r in self.runs.values()],
                "evals": [{k: e[k] for k in ("id", "rel", "task")} for e in self.evals.values()],
                "pictures": sorted(self.pictures)}


def _vrt_sources(path: Path) -> list[Path] | None:
    """The source files a VRT names (relative names against the VRT's folder); None if it cannot be read
    or names a GDAL virtual file system (``/vsi...``) or a URL."""
    import xml.etree.ElementTree as ET

    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError):
        return None
    out = []
    for el in tree.iter("SourceFilename"):
        name = (el.text or "").strip()
        if not name or name.startswith("/vsi") or "://" in name:
            return None
        out.append((path.parent / name) if el.get("relativeToVRT") == "1" else Path(name))
    return out


def _vrt_local(path: Path) -> bool:
    """Every source of a VRT outside PATH is a local raster file that is not itself a VRT."""
    srcs = _vrt_sources(path)
    return srcs is not None and all(p.resolve().suffix.lower() in RASTER_EXT - {".vrt"} and p.resolve().is_file()
                                    for p in srcs)


def _vrt_inside(path: Path, root: Path) -> bool:
    """Every source file a VRT names resolves under ``root`` (relative names against the VRT's folder)."""
    srcs = _vrt_sources(path)
    return srcs is not None and all(p.resolve().is_relative_to(root) for p in srcs)


def _parquet_scenes(path: Path) -> list[str]:
    """The distinct ``scene`` values of a detections GeoParquet (one layer each); ``[""]`` without one."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if "scene" not in names:
            return [""]
        col = pq.read_table(path, columns=["scene"]).column("scene").to_pylist()
    except Exception:  # noqa: BLE001 - not a readable parquet file: not a layer
        return []
    return sorted({str(c) for c in col})


def _task1_ids(files: list[Path]) -> set[str]:
    ids: set[str] = set()
    for f in files:
        with open(f, errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 10:
                    ids.add(parts[0])
    return ids
