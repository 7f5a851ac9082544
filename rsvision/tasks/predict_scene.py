"""Whole-scene rotated detection: the one function that ``detect predict``, ``detect eval``, the demo
and Python users call.

Windows come from the shared tiler (:func:`rsvision.data.tiling.sliding_windows`) and are read
lazily (rasterio windows through :mod:`rsvision.tasks.sliding` sources), so a raster far larger
than memory is processed window by window; per window the model sees a normalised, 32-padded
batch; boxes are shifted back to scene pixels and merged with per-class rotated NMS (DOTA's
merge rule, IoU 0.1). Multi-scale testing runs the same windows on the image resampled by each
rate (0.5 / 1.0 / 1.5 as published) and merges everything together.

:meth:`rsvision.tasks.detection.DetectionTask.predict` / ``evaluate`` run it over many scenes.
Outputs for a scene (:func:`write_scene_outputs`): DOTA Task1 files, a PNG with the boxes drawn
per class (on a downscaled overview for big scenes) and, for georeferenced rasters, GeoJSON
polygons in the raster's CRS.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rsvision.data.tiling import Window, batched, prefetch, sliding_windows
from rsvision.errors import BandMismatchError, ConfigError
from rsvision.runtime import kept_memory, windows_per_forward

__all__ = ["SceneDetections", "predict_scene", "write_scene_outputs", "read_overview", "select_detections"]


def select_detections(scores: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], score_thr: float = 0.0,
                      classes: Sequence[str] | None = None, max_det: int | None = None) -> torch.Tensor:
    """Indices of the detections scoring >= ``score_thr`` of the named ``classes`` (None: all), best first,
    at most ``max_det``: the ``--score-thr`` / ``--classes`` / ``--max-det`` rule of every predict output.

    scores: (N,), labels: (N,) long. Raises ConfigError naming unknown classes.
    """
    keep = scores >= score_thr
    if classes is not None:
        unknown = sorted(set(classes) - set(class_names))
        if unknown:
            raise ConfigError(f"--classes: unknown class(es) {', '.join(unknown)}; the model's classes are "
                              f"{', '.join(class_names)}")
        wanted = torch.tensor([c in set(classes) for c in class_names], dtype=torch.bool)
        keep &= wanted[labels] if len(labels) else keep
    idx = keep.nonzero().flatten()
    idx = idx[torch.argsort(scores[idx], descending=True, stable=True)]
    return idx if max_det is None else idx[: int(max_det)]


@dataclass
class SceneDetections:
    """Merged detections of one scene, in scene pixels (le90)."""

    boxes: torch.Tensor  # (K, 5) float32
    scores: torch.Tensor  # (K,)
    labels: torch.Tensor  # (K,) int64
    height: int
    width: int
    class_names: list[str]
    transform: Any = None
    crs: Any = None
    path: str | None = None
    stats: dict = field(default_factory=dict)

    def polys(self) -> torch.Tensor:
        from rsvision.ops import obb2poly

        return obb2poly(self.boxes.double(), "le90")

    def filtered(self, score_thr: float = 0.0, classes: Sequence[str] | None = None,
                 max_det: int | None = None) -> "SceneDetections":
        """The detections scoring >= ``score_thr`` of the named ``classes`` (None: all), best ``max_det``
        first; what every output of ``predict`` (Task1, GeoJSON, PNG) then holds."""
        idx = select_detections(self.scores, self.labels, self.class_names, score_thr, classes, max_det)
        idx = idx.sort().values  # the merge order, so files differ only by what was dropped
        return dataclasses.replace(self, boxes=self.boxes[idx], scores=self.scores[idx], labels=self.labels[idx])


def _open(source: Any, bands: Sequence[int] | None, fill: Sequence[float] | None = None,
          train_dtype: str | None = None):
    from rsvision.data.sources import open_source

    return open_source(source, [b + 1 for b in bands] if bands is not None else None, fill, train_dtype)


@torch.no_grad()
@kept_memory()
def predict_scene(
    model: torch.nn.Module,
    source: str | Path | np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    window: int = 1024,
    overlap: int | None = None,
    batch_size: int | None = None,
    scales: Sequence[float] = (1.0,),
    nms_iou: float = 0.1,
    score_thr: float = 0.0,
    max_det: int | None = None,
    bands: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = False,
    max_windows: int | None = None,
    train_dtype: str | None = None,
) -> SceneDetections:
    """Detect rotated objects in a scene of any size.

    Args:
        model: a detector in eval mode (``model(images) -> [{"boxes", "scores", "labels"}]``).
        source: raster path (GeoTIFF, PNG, JPEG, ...) or a ``(C, H, W)`` array in raw pixel units.
        mean, std: per-band normalisation of the checkpoint (raw units).
        batch_size: windows per forward pass (None: 1 on a CPU, 2 on a GPU; see
            :func:`rsvision.runtime.windows_per_forward`).
        window, overlap: window size and overlap in pixels *of the network input*; at rate ``s`` a
            window covers ``window / s`` scene pixels; ``overlap=None``: 200, at most window / 4.
        scales: test rates (``(0.5, 1.0, 1.5)`` for the published multi-scale test).
        nms_iou: per-class rotated NMS threshold for merging windows and scales.
        score_thr: drop detections below this score before merging.
        max_det: keep at most this many detections per scene (highest scores).
        bands: 0-based bands to read (default: all non-alpha bands, which must match ``mean``).
        progress: True for a rich progress bar, or a callback ``(done, total)``.
        max_windows: process only the first N windows (benchmarks time a part of a huge scene).
        train_dtype: dtype of the training images (a raster of another dtype is rescaled to its range).

    Nodata / alpha / NaN / inf pixels are read as the band means (0 after normalisation) and counted
    in ``stats["invalid_pixels"]``; detections are kept only where their centre lies on the image
    (not in the padding of a window); a scene without a usable pixel raises DataError.

    Raises:
        BandMismatchError: the raster's band count differs from the checkpoint's.
    """
    from rsvision.data.detection import pad_to_multiple
    from rsvision.data.raster import normalize
    from rsvision.ops import batched_nms_rotated

    if overlap is None:
        overlap = min(200, window // 4)
    if not 0 <= overlap < window:
        from rsvision.errors import ConfigError

        raise ConfigError(f"window overlap must be in [0, window), got overlap={overlap}, window={window}")
    src = _open(source, bands, list(mean), train_dtype)
    if src.count != len(mean):
        raise BandMismatchError(f"raster has {src.count} bands, the model expects {len(mean)} (checkpoint bands)",
                                path=getattr(src, "path", None))
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    batch_size = windows_per_forward(batch_size, dev)
    m = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
    s_ = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
    H, W = src.height, src.width
    jobs: list[tuple[float, Window]] = []
    for rate in scales:
        size = max(32, int(round(window / rate)))
        gap = min(int(round(overlap / rate)), size - 1)
        jobs += [(float(rate), w) for w in sliding_windows(H, W, size, gap)]
    n_all = len(jobs)
    if max_windows is not None:
        jobs = jobs[:max_windows]
    total = len(jobs)
    bar = None
    if progress is True:
        from rsvision.progress import progress as progress_display

        bar = progress_display()
        bar.start()
        task = bar.add_task("detecting", total=total)
    all_b, all_s, all_l = [], [], []
    done = read_px = skipped = 0

    def batches():
        """(windows, prepared images) per batch, all-nodata windows left out (read ahead in a thread)."""
        nonlocal read_px, skipped
        for rate in sorted(set(r for r, _ in jobs)):
            wins = [w for r, w in jobs if r == rate]
            for group in batched(wins, batch_size):
                keep_w, imgs = [], []
                for w in group:
                    if not src.any_valid(w):  # outside the footprint / all nodata: nothing to detect
                        skipped += 1
                        continue
                    x = normalize(torch.from_numpy(np.ascontiguousarray(src.read(w))), m, s_)  # invalid: mean
                    read_px += w.width * w.height
                    if rate != 1.0:
                        nh, nw = max(1, round(w.height * rate)), max(1, round(w.width * rate))
                        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False,
                                          antialias=rate < 1)[0]
                    keep_w.append(w)
                    imgs.append(x)
                yield len(group), keep_w, imgs

    t0 = time.perf_counter()
    try:
        for n, group, imgs in prefetch(batches()):
            if imgs:
                outs = model(pad_to_multiple(imgs, 32).to(dev), image_sizes=[tuple(x.shape[-2:]) for x in imgs])
            for w, img, out in zip(group, imgs, outs if imgs else []):
                b = out["boxes"].detach().float().cpu().clone()
                sc = out["scores"].detach().float().cpu()
                lab = out["labels"].detach().long().cpu()
                sx, sy = w.width / img.shape[-1], w.height / img.shape[-2]
                b[:, 0] = b[:, 0] * sx + w.x0
                b[:, 1] = b[:, 1] * sy + w.y0
                b[:, 2:4] *= math.sqrt(sx * sy)
                inside = (b[:, 0] >= w.x0) & (b[:, 0] < w.x0 + w.width) & (b[:, 1] >= w.y0) & (b[:, 1] < w.y0 + w.height)
                keep = (sc >= score_thr) & inside  # a centre in the 32-padding is not on the image
                all_b.append(b[keep]), all_s.append(sc[keep]), all_l.append(lab[keep])
            done += n
            if bar is not None:
                bar.update(task, completed=done)
            elif callable(progress):
                progress(done, total)
    finally:
        if bar is not None:
            bar.stop()
        transform, crs, path = getattr(src, "transform", None), getattr(src, "crs", None), getattr(src, "path", None)
        if hasattr(src, "close") and not isinstance(source, (np.ndarray, torch.Tensor)) and src is not source:
            src.close()
    seconds = time.perf_counter() - t0
    invalid = int(getattr(src, "invalid_pixels", 0))
    if total and (skipped == total or (read_px and invalid >= read_px)):
        from rsvision.errors import DataError

        raise DataError("no usable pixels (all nodata, NaN or inf): nothing detected", path=path)
    boxes = torch.cat(all_b) if all_b else torch.zeros(0, 5)
    scores = torch.cat(all_s) if all_s else torch.zeros(0)
    labels = torch.cat(all_l) if all_l else torch.zeros(0, dtype=torch.long)
    n_raw = len(boxes)
    if n_raw:
        # max_num stops the greedy pass early (same result as truncating; <= 0 means "all" there)
        keep = batched_nms_rotated(boxes, scores, labels, nms_iou, max_num=-1 if max_det is None else max_det)
        if max_det is not None:
            keep = keep[:max_det]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return SceneDetections(boxes, scores, labels, H, W, list(class_names), transform, crs,
                           str(path) if path is not None else None,
                           {"windows": total, "windows_total": n_all, "windows_skipped": skipped,
                            "raw_detections": n_raw, "megapixels": H * W / 1e6, "invalid_pixels": invalid,
                            "seconds": round(seconds, 3),
                            "s_per_window": round(seconds / max(total - skipped, 1), 3),
                            "mp_per_s": round(H * W / 1e6 * total / max(n_all, 1) / max(seconds, 1e-9), 3)})


def read_overview(source: Any, max_side: int = 4096, bands: Sequence[int] | None = None) -> tuple[np.ndarray, float]:
    """A downscaled ``(h, w, 3)`` uint8 view of a scene for drawing, and its scale factor.

    Rasters are read decimated by GDAL (``out_shape``), never at full size; non-uint8 data is
    stretched per band between the 2nd and 98th percentiles.
    """
    src = _open(source, bands)
    H, W = src.height, src.width
    scale = min(1.0, max_side / max(H, W))
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    if hasattr(src, "ds"):
        from rasterio.enums import Resampling

        arr = src.ds.read(src.bands, out_shape=(len(src.bands), h, w), resampling=Resampling.average)
    else:
        a = src.read(Window(0, 0, W, H))
        arr = F.interpolate(torch.from_numpy(a)[None], size=(h, w), mode="area")[0].numpy() if scale < 1 else a
    if hasattr(src, "close") and src is not source and not isinstance(source, (np.ndarray, torch.Tensor)):
        src.close()
    arr = arr[:3] if arr.shape[0] >= 3 else np.repeat(arr[:1], 3, 0)
    if arr.dtype != np.uint8:
        a = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo = np.percentile(a, 2, axis=(1, 2), keepdims=True)
        hi = np.percentile(a, 98, axis=(1, 2), keepdims=True)
        arr = np.clip((a - lo) / np.maximum(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(1, 2, 0)), scale


def write_scene_outputs(det: SceneDetections, out_dir: str | Path, name: str | None = None,
                        source: Any = None, task1: bool = True, png: bool = True, geojson: bool = True,
                        png_max_side: int = 4096, bands: Sequence[int] | None = None,
                        draw_thr: float = 0.0, labels: bool = True) -> dict[str, Path]:
    """Write Task1 files (``Task1_<class>.txt``, appended), ``<name>.png`` and ``<name>.geojson``.

    GeoJSON is written only for georeferenced rasters (a CRS or a non-identity transform). Task1
    and GeoJSON hold every detection of ``det`` (with scores), the PNG those scoring >= ``draw_thr``
    (filter ``det`` first with :meth:`SceneDetections.filtered` to apply thresholds to every output),
    each box tagged with its class (``labels``) and score. ``bands``: 0-based bands shown as RGB.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or (Path(det.path).stem if det.path else "scene")
    written: dict[str, Path] = {}
    polys = det.polys().numpy()
    if task1:
        from rsvision.data.dota.labels import append_task1

        written["task1"] = append_task1(out, name, polys, det.scores.numpy(),
                                        [det.class_names[int(v)] for v in det.labels])
    if png and (source is not None or det.path is not None):
        from rsvision.viz.boxes import save_drawn

        img, scale = read_overview(source if source is not None else det.path, png_max_side, bands)
        k = det.scores >= draw_thr
        written["png"] = save_drawn(out / f"{name}.png", img, det.boxes[k], det.labels[k], det.scores[k], det.class_names,
                                    scale=scale, show_labels=labels, show_scores=labels, width=2 if scale >= 0.5 else 1)
    if geojson and det.transform is not None:
        from rsvision.geo.writers import write_geojson

        props = [{"class": det.class_names[int(lab)], "score": round(float(s), 4)} for lab, s in zip(det.labels, det.scores)]
        written["geojson"] = write_geojson(polys, props, det.transform, det.crs, out / f"{name}.geojson")
    return written
