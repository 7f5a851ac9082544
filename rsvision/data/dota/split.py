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

Beyond MMRotate (CONVENTIONS "Outputs" and "Rasters"):

* a window whose pixels are all nodata (the raster's dataset mask: nodata value, alpha band, or
  NaN in float data) is not written; with ``keep_empty=False`` neither is one without objects;
* an image larger than the pixel budget (``max_pixels``, else ``RSVISION_MAX_PIXELS``, else 2**31)
  is refused before any work;
* the patches of one image are written under a hidden staging folder in ``out_dir`` and moved into
  ``images/`` / ``annfiles/`` (``os.replace``, atomic per file) only once every window of the image
  was read: a truncated or corrupt image leaves nothing behind. :func:`split_dataset` claims
  ``out_dir`` (:func:`rsvision.outputs.claim_dir`: a folder holding results is refused unless
  ``exist_ok``) and stops at the first unreadable image unless ``skip_bad``.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import shapely

from rsvision.data.tiling import Window, split_windows
from rsvision.errors import ConfigError, DataError

from .labels import Annotation, read_label_txt

__all__ = ["SplitConfig", "window_sizes", "window_objects", "split_image", "split_dataset", "patch_name",
           "parse_patch_name", "check_split_config", "max_pixels_budget", "probe_image", "SplitOptionError",
           "NotAnImageError", "PixelBudgetError", "DEFAULT_MAX_PIXELS"]

log = logging.getLogger(__name__)

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".jp2")
_LAZY_EXT = (".tif", ".tiff", ".jp2")
#: File signatures of the formats above: a file that fails to open but starts like one is a corrupt
#: image (an error), one that starts like none of them is not an image at all (skipped with a warning).
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
          b"\x00\x00\x00\x0cjP  ", b"\xffO\xffQ")
DEFAULT_MAX_PIXELS = 2**31
_MAX_PIXELS_ENV = "RSVISION_MAX_PIXELS"


class SplitOptionError(ConfigError, ValueError):
    """A bad split setting, named by its CLI option (also a ``ValueError``, as it always was)."""


class NotAnImageError(DataError):
    """A file with an image extension whose content is no image format at all."""


class PixelBudgetError(DataError):
    """An image larger than the pixel budget."""


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
    keep_empty: bool = True  # False: a window without objects is not written (MMRotate writes it)
    max_pixels: int | None = None  # pixel budget per image; None: $RSVISION_MAX_PIXELS, else 2**31


def window_sizes(sizes: Sequence[int], gaps: Sequence[int], rates: Sequence[float]) -> tuple[list[int], list[int]]:
    """MMRotate's multi-scale rule: for each rate, windows ``int(size / rate)`` and gaps ``int(gap / rate)``.

    Bad values raise :class:`SplitOptionError` (a ``ConfigError`` and a ``ValueError``) naming the option.
    """
    sizes, gaps, rates = list(sizes), list(gaps), list(rates)
    if not sizes or not gaps or not rates:
        raise SplitOptionError("--sizes, --gaps and --rates need at least one value each")
    if any(not s > 0 for s in sizes):
        raise SplitOptionError(f"--sizes must be positive (window side in pixels), got {sizes}")
    if any(not g >= 0 for g in gaps):
        raise SplitOptionError(f"--gaps must be >= 0 (overlap in pixels), got {gaps}")
    if any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise SplitOptionError(f"--rates must be > 0, got {rates}")
    if len(sizes) != len(gaps):
        raise SplitOptionError(f"need one --gaps value per --sizes value, got --sizes {sizes} --gaps {gaps}")
    out_s, out_g = [], []
    for rate in rates:
        out_s += [int(s / rate) for s in sizes]
        out_g += [int(g / rate) for g in gaps]
    for k, (s, g) in enumerate(zip(out_s, out_g)):
        if not 0 <= g < s:
            raise SplitOptionError(
                f"each window must be larger than its overlap: --sizes {sizes[k % len(sizes)]} --gaps "
                f"{gaps[k % len(gaps)]} at --rates {rates[k // len(sizes)]} gives size={s}, gap={g}")
    return out_s, out_g


def max_pixels_budget(value: int | None = None) -> int:
    """The pixel budget per image: ``value`` (``--max-pixels``), else the project-wide one
    (:func:`rsvision.data.raster.max_pixels`: ``$RSVISION_MAX_PIXELS``, default 2**31)."""
    what = "--max-pixels"
    if value is None:
        from rsvision.data.raster import max_pixels

        value, what = max_pixels(), _MAX_PIXELS_ENV
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{what} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def check_split_config(cfg: SplitConfig) -> None:
    """Every setting checked before any work; errors name the CLI option."""
    window_sizes(cfg.sizes, cfg.gaps, cfg.rates)
    for opt, v in (("--iof-thr", cfg.iof_thr), ("--img-rate-thr", cfg.img_rate_thr)):
        if not 0 <= v <= 1:
            raise SplitOptionError(f"{opt} must be in [0, 1], got {v}")
    from PIL import Image

    fmt = Image.registered_extensions().get(cfg.save_ext.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise SplitOptionError(f"--save-ext {cfg.save_ext!r} is not an image format that can be written "
                               "(e.g. .png, .jpg, .tif; with the dot)")
    max_pixels_budget(cfg.max_pixels)


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


def _looks_like_image(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return True
    return head.startswith(_MAGIC)


def _open_error(path: Path, exc: Exception, what: str) -> DataError:
    if not _looks_like_image(path):
        return NotAnImageError(f"not an image file ({type(exc).__name__}: {exc})", path=path)
    return DataError(f"cannot read {what}, truncated or corrupt? ({type(exc).__name__}: {exc})", path=path)


def probe_image(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file's header (no pixels decoded). Raises :class:`NotAnImageError` for
    a file that is no image format, :class:`DataError` for a corrupt one."""
    path = Path(path)
    if path.suffix.lower() in _LAZY_EXT:
        import rasterio

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    return src.height, src.width
        except Exception as exc:
            raise _open_error(path, exc, "raster") from exc
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception as exc:
        raise _open_error(path, exc, "image") from exc
    return h, w


def _check_budget(path: Path, height: int, width: int, budget: int) -> None:
    if height * width > budget:
        raise PixelBudgetError(
            f"image is {width} x {height} = {width * height:,} pixels, more than the pixel budget of {budget:,}; "
            f"nothing was split. Raise it with --max-pixels N (or {_MAX_PIXELS_ENV}=N) if this is intended",
            path=path)


class _Image:
    """Pixel access for one image: whole decode for PNG/JPEG, windowed rasterio reads for rasters."""

    def __init__(self, path: Path, max_pixels: int | None = None):
        self.path = path
        self._arr = None
        self._alpha = None
        self._src = None
        self._masked = False
        self.height, self.width = probe_image(path)
        _check_budget(path, self.height, self.width, max_pixels_budget(max_pixels))
        if path.suffix.lower() in _LAZY_EXT:
            import rasterio
            from rasterio.enums import MaskFlags

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                    self._src = rasterio.open(path)
            except Exception as exc:
                raise _open_error(path, exc, "raster") from exc
            self._masked = any(f != MaskFlags.all_valid for flags in self._src.mask_flag_enums for f in flags)
        else:
            from PIL import Image

            try:
                Image.MAX_IMAGE_PIXELS = None  # DOTA scenes are legitimately huge (the budget above guards)
                with Image.open(path) as img:
                    img.load()
                    if img.mode in ("P", "PA"):  # palette: colours, as OpenCV decodes them
                        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
                    arr = np.asarray(img)
                    has_alpha = img.mode in ("RGBA", "LA")
            except Exception as exc:
                raise _open_error(path, exc, "image") from exc
            self._arr = arr if arr.ndim == 3 else arr[..., None]
            self._alpha = self._arr[..., -1] if has_alpha else None

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray | None:
        """(h, w, 3) uint8 RGB of the part of the window inside the image; None when every pixel of it is
        nodata (dataset mask: nodata value or alpha band; NaN / inf in float data)."""
        x1, y1 = min(x1, self.width), min(y1, self.height)
        if self._src is not None:
            from rasterio.windows import Window as RWindow

            win = RWindow(x0, y0, x1 - x0, y1 - y0)
            try:
                if self._masked and not self._src.dataset_mask(window=win).any():
                    return None
                a = np.moveaxis(self._src.read(window=win), 0, -1)
            except Exception as exc:
                raise DataError(f"cannot read the pixels of window x={x0} y={y0} {x1 - x0}x{y1 - y0}, truncated or "
                                f"corrupt? ({type(exc).__name__}: {exc})", path=self.path) from exc
            if a.dtype.kind == "f":
                finite = np.isfinite(a)
                if not finite.any():
                    return None
                a = np.where(finite, a, 0)
        else:
            if self._alpha is not None and not self._alpha[y0:y1, x0:x1].any():
                return None
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
    img_path: str | Path, ann: Annotation | str | Path | None, out_dir: str | Path, cfg: SplitConfig | None = None,
    image_id: str | None = None, stats: dict | None = None,
) -> list[dict]:
    """Split one image (and its annotation) into ``out_dir/images`` and ``out_dir/annfiles``.

    Every window is read before anything appears in ``out_dir`` (the patches are staged in a hidden folder
    there and moved in at the end), so an unreadable image raises :class:`DataError` and leaves nothing.
    ``image_id`` (default: the file stem) starts the patch names; ``stats`` (a dict) receives the counts of
    windows skipped as all-nodata (``"skipped_nodata"``) or without objects (``"skipped_empty"``).
    Returns one dict per written patch: ``{"id", "x_start", "y_start", "width", "height", "objects"}``.
    """
    from PIL import Image

    cfg = cfg or SplitConfig()
    check_split_config(cfg)
    img_path, out_dir = Path(img_path), Path(out_dir)
    image_id = image_id or img_path.stem
    if ann is not None and not isinstance(ann, Annotation):
        ann = read_label_txt(ann, classes=cfg.classes, on_error="skip") if Path(ann).is_file() else None
    ann = ann or Annotation()
    sizes, gaps = window_sizes(cfg.sizes, cfg.gaps, cfg.rates)
    image = _Image(img_path, cfg.max_pixels)
    stage: Path | None = None
    skipped = {"skipped_nodata": 0, "skipped_empty": 0}
    try:
        windows = split_windows(image.height, image.width, sizes, gaps, cfg.img_rate_thr)
        polys32 = np.asarray(ann.polys, dtype=np.float32).reshape(-1, 8)
        objs = window_objects(polys32, windows, cfg.iof_thr)
        pad_rgb = np.array(cfg.padding_value_bgr[::-1], dtype=np.uint8)
        kwargs = {"compress_level": cfg.compress_level} if cfg.save_ext.lower() == ".png" else {}
        infos = []
        for w, (keep, trunc) in zip(windows, objs):
            if not cfg.keep_empty and len(keep) == 0:
                skipped["skipped_empty"] += 1
                continue
            patch = image.read(w.x0, w.y0, w.x1, w.y1)
            if patch is None:
                skipped["skipped_nodata"] += 1
                continue
            pid = patch_name(image_id, w)
            if cfg.padding and (patch.shape[0] < w.height or patch.shape[1] < w.width):
                full = np.empty((w.height, w.width, 3), np.uint8)
                full[...] = pad_rgb
                full[: patch.shape[0], : patch.shape[1]] = patch
                patch = full
            if stage is None:
                out_dir.mkdir(parents=True, exist_ok=True)
                stage = Path(tempfile.mkdtemp(prefix=f".split-{image_id}.", suffix=".tmp", dir=out_dir))
            Image.fromarray(patch).save(stage / (pid + cfg.save_ext), **kwargs)
            shift = np.array([w.x0, w.y0] * 4, dtype=np.float32)
            lines = []
            for k, t in zip(keep, trunc):
                coords = " ".join(str(v) for v in (polys32[k] - shift))
                diff = "2" if t else str(int(ann.difficult[k]))
                lines.append(f"{coords} {ann.classes[k]} {diff}\n")
            (stage / (pid + ".txt")).write_text("".join(lines), encoding="utf-8")
            infos.append({"id": pid, "x_start": w.x0, "y_start": w.y0, "width": patch.shape[1],
                          "height": patch.shape[0], "objects": len(keep)})
        if stage is not None:  # every window read: move the patches in (atomic per file)
            (out_dir / "images").mkdir(exist_ok=True)
            (out_dir / "annfiles").mkdir(exist_ok=True)
            for info in infos:
                os.replace(stage / (info["id"] + cfg.save_ext), out_dir / "images" / (info["id"] + cfg.save_ext))
                os.replace(stage / (info["id"] + ".txt"), out_dir / "annfiles" / (info["id"] + ".txt"))
    finally:
        image.close()
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    if stats is not None:
        for k, v in skipped.items():
            stats[k] = stats.get(k, 0) + v
    return infos


def _split_job(args) -> dict:
    img, ann, out, cfg, image_id = args
    res = {"name": img.name, "infos": [], "error": None, "path": None, "stats": {}}
    try:
        res["infos"] = split_image(img, ann, out, cfg, image_id=image_id, stats=res["stats"])
    except DataError as exc:
        res["error"], res["path"] = str(exc), exc.path
    return res


def _remove_empty_dirs(out_dir: Path) -> None:
    """Folders this run created and left empty (after a failure): nothing of the user's is in them."""
    for d in (out_dir / "images", out_dir / "annfiles", out_dir):
        try:
            d.rmdir()
        except OSError:
            pass


def split_dataset(
    img_dir: str | Path,
    ann_dir: str | Path | None,
    out_dir: str | Path,
    cfg: SplitConfig | None = None,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    exist_ok: bool = False,
    skip_bad: bool = False,
    strict: bool = False,
) -> dict:
    """Split every image of ``img_dir`` (labels ``ann_dir/<stem>.txt``, optional) into ``out_dir``.

    Before any work: the settings, every image's header (a file that is no image format is skipped with
    a warning; an image above the pixel budget is an error), every label file (bad lines skipped with a
    ``file:line`` warning, or errors with ``strict``) and ``out_dir`` (claimed: refused when it holds
    results unless ``exist_ok``). A truncated / corrupt image raises :class:`DataError` naming it, with
    nothing written for it, unless ``skip_bad`` (then it is reported and the others are split).
    ``progress(name)`` is called after each image. Returns ``{"images", "patches", "objects",
    "skipped_nodata", "skipped_empty", "failed": {name: reason}, "label_issues": [message]}``.
    """
    from rsvision.outputs import claim_dir, unique_stems

    cfg = cfg or SplitConfig()
    check_split_config(cfg)
    if not (isinstance(workers, int) and workers >= 1):
        raise ConfigError(f"--workers must be >= 1, got {workers!r}")
    img_dir, out_dir = Path(img_dir), Path(out_dir)
    if not img_dir.is_dir():
        raise DataError("image folder does not exist", path=img_dir)
    if ann_dir is not None and not Path(ann_dir).is_dir():
        raise DataError("annotation folder does not exist", path=ann_dir)
    if not cfg.keep_empty and ann_dir is None:
        raise ConfigError("--no-keep-empty drops the windows without objects, so it needs --ann-dir "
                          "(without labels every window would be dropped)")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXT)
    if not images:
        raise DataError("no images found", path=img_dir)
    budget = max_pixels_budget(cfg.max_pixels)
    summary = {"images": 0, "patches": 0, "objects": 0, "skipped_nodata": 0, "skipped_empty": 0, "failed": {},
               "label_issues": []}
    jobs = []
    for p, image_id in zip(images, unique_stems(images)):
        try:
            h, w = probe_image(p)
        except NotAnImageError as exc:
            summary["failed"][p.name] = str(exc)
            log.info("%s (skipped)", exc)
            continue
        except DataError as exc:
            if not skip_bad:
                err = DataError(f"{exc}; nothing was split (pass --skip-bad to skip unreadable images)")
                err.path = exc.path
                raise err from exc
            summary["failed"][p.name] = str(exc)
            log.info("%s (skipped)", exc)
            continue
        _check_budget(p, h, w, budget)
        ann = None
        if ann_dir is not None:
            ap = Path(ann_dir) / f"{p.stem}.txt"
            if ap.is_file():
                ann = read_label_txt(ap, classes=cfg.classes, strict=strict)
                summary["label_issues"] += [f"{m} (line skipped)" for m in ann.errors]
                summary["label_issues"] += [f"{m} (object kept)" for m in ann.warnings]
            else:
                log.warning("%s: no annotation file %s, splitting without objects", p, ap.name)
        jobs.append((p, ann, out_dir, cfg, image_id))

    def collect(res: dict) -> None:
        if res["error"]:
            if not skip_bad:
                err = DataError(f"{res['error']}; nothing was written for this image (pass --skip-bad to skip "
                                "unreadable images and split the others)")
                err.path = res["path"]
                raise err
            summary["failed"][res["name"]] = res["error"]
            log.info("%s (skipped)", res["error"])
        else:
            summary["images"] += 1
            summary["patches"] += len(res["infos"])
            summary["objects"] += sum(i["objects"] for i in res["infos"])
            for k, v in res["stats"].items():
                summary[k] += v
        if progress:
            progress(res["name"])

    created = not out_dir.exists()
    try:
        with claim_dir(out_dir, exist_ok, what="--out"):
            if workers > 1 and len(jobs) > 1:
                import concurrent.futures as cf
                import multiprocessing as mp

                with cf.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
                    futures = [ex.submit(_split_job, job) for job in jobs]
                    try:
                        for f in cf.as_completed(futures):
                            collect(f.result())
                    except BaseException:
                        for f in futures:  # stop: the running images finish (their patches are complete)
                            f.cancel()
                        raise
            else:
                for job in jobs:
                    collect(_split_job(job))
    except BaseException:
        if created:
            _remove_empty_dirs(out_dir)
        raise
    return summary
