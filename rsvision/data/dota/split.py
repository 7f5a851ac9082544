"""Split large DOTA-style images into overlapping patches, compatible with MMRotate's ``img_split.py``.

What is reproduced (so datasets split by either tool are interchangeable):

* windows: :func:`rsvision.data.tiling.split_windows` (start every ``size - gap``, last window
  shifted back inside the image, windows that the image covers by <= ``img_rate_thr`` dropped);
  for every rate the window is ``int(size / rate)`` with gap ``int(gap / rate)`` *original*
  pixels and the patch is not resized (the name carries the window size);
* objects: a polygon is kept in a window when ``area(polygon & window) / area(polygon) >=
  iof_thr`` (candidates by bounding-box overlap, polygon area rounded to float32 and clipped at
  1e-6, as there); a kept object that is not wholly inside (ratio < 1) gets difficulty ``2``;
  coordinates are translated in float32 and written with numpy's float32 ``str``;
* patches: ``<id>__<window size>__<x>___<y>.png`` in ``images/`` and the same ``.txt`` in
  ``annfiles/`` (empty when no object), padded to the full window with MMRotate's BGR padding
  value ``(104, 116, 124)`` (RGB ``(124, 116, 104)``) unless ``padding=False``.

Images are written as 8-bit RGB like MMRotate's OpenCV pipeline: grayscale is replicated to three
channels, an alpha (or any 4th+) band is dropped, 16-bit data keeps its high byte. PNG / JPEG are
decoded whole (as OpenCV does); TIFF / JP2 rasters are read window by window with rasterio, so huge
scenes never sit in memory.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import shapely

from rsvision.data.tiling import Window, split_windows
from rsvision.errors import DataError

from .labels import Annotation, read_label_txt

__all__ = ["SplitConfig", "window_sizes", "window_objects", "split_image", "split_dataset", "patch_name", "parse_patch_name"]

log = logging.getLogger(__name__)

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".jp2")
_LAZY_EXT = (".tif", ".tiff", ".jp2")


@dataclass
class SplitConfig:
    """MMRotate ``img_split`` settings (``ss_*.json`` defaults)."""

    sizes: Sequence[int] = (1024,)
    gaps: Sequence[int] = (200,)
    rates: Sequence[float] = (1.0,)
    iof_thr: float = 0.7
    img_rate_thr: float = 0.6
    padding: bool = True
    padding_value_bgr: tuple[int, int, int] = (104, 116, 124)
    save_ext: str = ".png"
    compress_level: int = 1  # PNG zlib level: 1 is ~5x faster than PIL's default and barely larger
    classes: Sequence[str] | None = None  # None: keep every class of the label files
    extra: dict = field(default_factory=dict)


def window_sizes(sizes: Sequence[int], gaps: Sequence[int], rates: Sequence[float]) -> tuple[list[int], list[int]]:
    """MMRotate's multi-scale rule: for each rate, windows ``int(size / rate)`` and gaps ``int(gap / rate)``."""
    if len(sizes) != len(gaps):
        raise ValueError(f"need as many gaps as sizes, got sizes={list(sizes)} gaps={list(gaps)}")
    out_s, out_g = [], []
    for rate in rates:
        if rate <= 0:
            raise ValueError(f"rates must be > 0, got {rate}")
        out_s += [int(s / rate) for s in sizes]
        out_g += [int(g / rate) for g in gaps]
    for s, g in zip(out_s, out_g):
        if not 0 <= g < s:
            raise ValueError(f"need window size > gap >= 0, got size={s}, gap={g}")
    return out_s, out_g


def patch_name(image_id: str, w: Window) -> str:
    return f"{image_id}__{w.width}__{w.x0}___{w.y0}"


def parse_patch_name(name: str) -> tuple[str, int, int]:
    """``P0003__1024__0___824`` -> ``("P0003", 0, 824)`` (original id, x offset, y offset)."""
    import re

    m = re.findall(r"__\d+___\d+", name)
    if "__" not in name or not m:
        raise ValueError(f"not a patch name (<id>__<size>__<x>___<y>): {name!r}")
    x, y = (int(v) for v in re.findall(r"\d+", m[0])[:2])
    return name.split("__")[0], x, y


def window_objects(polys: np.ndarray, windows: Sequence[Window], iof_thr: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each window, (indices of kept objects, truncated flags) by MMRotate's iof rule."""
    polys = np.asarray(polys, dtype=np.float32).reshape(-1, 8)
    out = []
    if len(polys) == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, bool)) for _ in windows]
    p = polys.reshape(-1, 4, 2).astype(np.float64)
    geoms = shapely.polygons(np.concatenate([p, p[:, :1]], axis=1))
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms[bad] = shapely.make_valid(geoms[bad])
    areas = np.clip(shapely.area(geoms).astype(np.float32), 1e-6, np.inf)
    hx0, hy0 = polys[:, 0::2].min(1), polys[:, 1::2].min(1)
    hx1, hy1 = polys[:, 0::2].max(1), polys[:, 1::2].max(1)
    for w in windows:
        iw = np.clip(np.minimum(hx1, w.x1) - np.maximum(hx0, w.x0), 0, None)
        ih = np.clip(np.minimum(hy1, w.y1) - np.maximum(hy0, w.y0), 0, None)
        cand = np.nonzero(iw * ih)[0]
        inter = np.zeros(len(polys))
        if len(cand):
            box = shapely.box(w.x0, w.y0, w.x1, w.y1)
            inter[cand] = shapely.area(shapely.intersection(geoms[cand], box))
        iof = inter / areas
        keep = np.nonzero(iof >= iof_thr)[0]
        out.append((keep, iof[keep] < 1))
    return out


class _Image:
    """Pixel access for one image: whole decode for PNG/JPEG, windowed rasterio reads for rasters."""

    def __init__(self, path: Path):
        self.path = path
        self._arr = None
        self._src = None
        if path.suffix.lower() in _LAZY_EXT:
            import rasterio

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                    self._src = rasterio.open(path)
            except Exception as exc:
                raise DataError(f"cannot read raster ({exc})", path=path) from exc
            self.height, self.width = self._src.height, self._src.width
        else:
            from PIL import Image

            try:
                Image.MAX_IMAGE_PIXELS = None  # DOTA scenes are legitimately huge
                with Image.open(path) as img:
                    img.load()
                    arr = np.asarray(img)
            except Exception as exc:
                raise DataError(f"cannot read image ({type(exc).__name__}: {exc})", path=path) from exc
            self._arr = arr if arr.ndim == 3 else arr[..., None]
            self.height, self.width = self._arr.shape[:2]

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the part of the window inside the image."""
        x1, y1 = min(x1, self.width), min(y1, self.height)
        if self._src is not None:
            from rasterio.windows import Window as RWindow

            a = np.moveaxis(self._src.read(window=RWindow(x0, y0, x1 - x0, y1 - y0)), 0, -1)
        else:
            a = self._arr[y0:y1, x0:x1]
        return _to_rgb8(a)

    def close(self) -> None:
        if self._src is not None:
            self._src.close()


def _to_rgb8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[-1] == 1 or a.shape[-1] == 2:  # gray (+ alpha)
        a = np.repeat(a[..., :1], 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def split_image(
    img_path: str | Path, ann: Annotation | str | Path | None, out_dir: str | Path, cfg: SplitConfig | None = None
) -> list[dict]:
    """Split one image (and its annotation) into ``out_dir/images`` and ``out_dir/annfiles``.

    Returns one dict per patch: ``{"id", "x_start", "y_start", "width", "height", "objects"}``.
    """
    from PIL import Image

    cfg = cfg or SplitConfig()
    img_path, out_dir = Path(img_path), Path(out_dir)
    if ann is not None and not isinstance(ann, Annotation):
        ann = read_label_txt(ann, classes=cfg.classes, on_error="skip") if Path(ann).is_file() else None
    ann = ann or Annotation()
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "annfiles").mkdir(parents=True, exist_ok=True)
    sizes, gaps = window_sizes(cfg.sizes, cfg.gaps, cfg.rates)
    image = _Image(img_path)
    try:
        windows = split_windows(image.height, image.width, sizes, gaps, cfg.img_rate_thr)
        polys32 = np.asarray(ann.polys, dtype=np.float32).reshape(-1, 8)
        objs = window_objects(polys32, windows, cfg.iof_thr)
        pad_rgb = np.array(cfg.padding_value_bgr[::-1], dtype=np.uint8)
        infos = []
        for w, (keep, trunc) in zip(windows, objs):
            pid = patch_name(img_path.stem, w)
            patch = image.read(w.x0, w.y0, w.x1, w.y1)
            if cfg.padding and (patch.shape[0] < w.height or patch.shape[1] < w.width):
                full = np.empty((w.height, w.width, 3), np.uint8)
                full[...] = pad_rgb
                full[: patch.shape[0], : patch.shape[1]] = patch
                patch = full
            kwargs = {"compress_level": cfg.compress_level} if cfg.save_ext.lower() == ".png" else {}
            Image.fromarray(patch).save(out_dir / "images" / (pid + cfg.save_ext), **kwargs)
            shift = np.array([w.x0, w.y0] * 4, dtype=np.float32)
            lines = []
            for k, t in zip(keep, trunc):
                coords = " ".join(str(v) for v in (polys32[k] - shift))
                diff = "2" if t else str(int(ann.difficult[k]))
                lines.append(f"{coords} {ann.classes[k]} {diff}\n")
            (out_dir / "annfiles" / (pid + ".txt")).write_text("".join(lines), encoding="utf-8")
            infos.append({"id": pid, "x_start": w.x0, "y_start": w.y0, "width": patch.shape[1],
                          "height": patch.shape[0], "objects": len(keep)})
        return infos
    finally:
        image.close()


def _split_job(args) -> tuple[str, list[dict], str | None]:
    img, ann, out, cfg = args
    try:
        return img.name, split_image(img, ann, out, cfg), None
    except DataError as exc:
        return img.name, [], str(exc)


def split_dataset(
    img_dir: str | Path,
    ann_dir: str | Path | None,
    out_dir: str | Path,
    cfg: SplitConfig | None = None,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Split every image of ``img_dir`` (labels ``ann_dir/<stem>.txt``, optional) into ``out_dir``.

    Unreadable images are reported and skipped. ``progress(name)`` is called after each image.
    Returns ``{"images", "patches", "objects", "failed": {name: reason}}``.
    """
    cfg = cfg or SplitConfig()
    img_dir, out_dir = Path(img_dir), Path(out_dir)
    if not img_dir.is_dir():
        raise DataError("image folder does not exist", path=img_dir)
    if ann_dir is not None and not Path(ann_dir).is_dir():
        raise DataError("annotation folder does not exist", path=ann_dir)
    window_sizes(cfg.sizes, cfg.gaps, cfg.rates)  # validate before starting workers
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXT)
    if not images:
        raise DataError("no images found", path=img_dir)
    jobs = []
    for p in images:
        ann = Path(ann_dir) / f"{p.stem}.txt" if ann_dir is not None else None
        if ann is not None and not ann.is_file():
            log.warning("%s: no annotation file %s, splitting without objects", p, ann.name)
            ann = None
        jobs.append((p, ann, out_dir, cfg))
    summary = {"images": 0, "patches": 0, "objects": 0, "failed": {}}

    def collect(res) -> None:
        name, infos, err = res
        if err:
            summary["failed"][name] = err
            log.warning("%s (skipped)", err)
        else:
            summary["images"] += 1
            summary["patches"] += len(infos)
            summary["objects"] += sum(i["objects"] for i in infos)
        if progress:
            progress(name)

    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for res in pool.imap_unordered(_split_job, jobs):
                collect(res)
    else:
        for job in jobs:
            collect(_split_job(job))
    return summary
