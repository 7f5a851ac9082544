"""Whole-scene instance segmentation: windows of the shared tiler, masks merged, outputs per scene.

Why not :func:`rsvision.tasks.predict_scene.predict_scene`: that one merges rotated boxes; an instance
also carries a mask, which must be cut out per window and kept small. Here windows come from
:func:`rsvision.data.tiling.sliding_windows` and are read lazily through :mod:`rsvision.data.sources`
(prefetched, as detection reads them); each detection keeps only the part of its window mask under its
box (``masks[i]``: a bool crop whose top-left pixel is scene pixel ``origins[i]``), so memory grows with
the objects, not with the scene. Merging: a detection touching a window border that lies inside the
scene, within the overlap band, is dropped (the neighbouring window sees that object whole), then
per-class NMS on the boxes (IoU ``nms_iou``) removes the duplicates of the overlaps.

Outputs (:func:`write_instance_outputs`): ``<stem>_instances.png`` (masks over a decimated overview),
``<stem>_instances.json`` (per instance: class, score, box, pixel area and its outline as GeoJSON-style
geometry in scene pixels) and, for georeferenced rasters, ``<stem>.geojson`` in the raster's CRS.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from rsvision.data.tiling import Window, batched, prefetch, sliding_windows
from rsvision.errors import BandMismatchError, ConfigError, DataError
from rsvision.runtime import kept_memory, windows_per_forward
from rsvision.tasks.predict_scene import select_detections

__all__ = ["SceneInstances", "predict_instances", "write_instance_outputs"]


@dataclass
class SceneInstances:
    """Merged instances of one scene, in scene pixels (boxes ``x1 y1 x2 y2``)."""

    boxes: torch.Tensor  # (K, 4) float32
    scores: torch.Tensor  # (K,)
    labels: torch.Tensor  # (K,) int64
    masks: list  # K bool arrays (h_i, w_i)
    origins: np.ndarray  # (K, 2) int64: scene (x, y) of each mask crop's top-left pixel
    height: int
    width: int
    class_names: list[str]
    transform: Any = None
    crs: Any = None
    path: str | None = None
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def filtered(self, score_thr: float = 0.0, classes: Sequence[str] | None = None,
                 max_det: int | None = None) -> "SceneInstances":
        """Instances scoring >= ``score_thr`` of the named ``classes`` (None: all), at most ``max_det``, best first."""
        idx = select_detections(self.scores, self.labels, self.class_names, score_thr, classes, max_det)
        ii = idx.tolist()
        return dataclasses.replace(self, boxes=self.boxes[idx], scores=self.scores[idx], labels=self.labels[idx],
                                   masks=[self.masks[i] for i in ii], origins=self.origins[ii].reshape(-1, 2))

    def full_masks(self) -> torch.Tensor:
        """``(K, H, W)`` bool masks at scene size (for scoring; K x H x W bytes)."""
        out = torch.zeros((len(self), self.height, self.width), dtype=torch.bool)
        for i, (m, (x0, y0)) in enumerate(zip(self.masks, self.origins)):
            h, w = m.shape
            out[i, y0:y0 + h, x0:x0 + w] = torch.from_numpy(np.ascontiguousarray(m))
        return out

    def areas(self) -> list[int]:
        return [int(np.count_nonzero(m)) for m in self.masks]


def _crop(mask: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The part of a window mask under its box (whole pixels), and the crop's window offset."""
    h, w = mask.shape
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    return mask[y0:max(y1, y0), x0:max(x1, x0)].copy(), x0, y0


def _cut_by_window(box: np.ndarray, w: Window, H: int, W: int, overlap: int, tol: float = 1.0) -> bool:
    """True when ``box`` (scene px) touches a border of ``w`` that lies inside the scene and stays within
    the overlap band there: the neighbouring window holds that object whole."""
    if overlap <= 0:
        return False
    x1, y1, x2, y2 = box
    return bool((w.x1 < W and x2 >= w.x1 - tol and x1 >= w.x1 - overlap)
                or (w.x0 > 0 and x1 <= w.x0 + tol and x2 <= w.x0 + overlap)
                or (w.y1 < H and y2 >= w.y1 - tol and y1 >= w.y1 - overlap)
                or (w.y0 > 0 and y1 <= w.y0 + tol and y2 <= w.y0 + overlap))


@torch.no_grad()
@kept_memory()
def predict_instances(model: torch.nn.Module, source: Any, mean: Sequence[float], std: Sequence[float],
                      class_names: Sequence[str], window: int = 1024, overlap: int | None = None,
                      batch_size: int | None = None, nms_iou: float = 0.5, score_thr: float = 0.0,
                      max_det: int | None = None, bands: Sequence[int] | None = None,
                      device: str | torch.device | None = None,
                      progress: bool | Callable[[int, int], None] = False,
                      train_dtype: str | None = None) -> SceneInstances:
    """Instance masks of a scene of any size (``source``: raster path or ``(C, H, W)`` array, raw units).

    ``model``: a :class:`~rsvision.models.detectors.mask_rcnn.MaskRCNN` in eval mode; ``mean`` / ``std``:
    the checkpoint's per-band normalisation; ``overlap`` None: 200, at most a quarter of the window;
    ``bands``: 0-based bands to read (default all non-alpha). Invalid pixels (nodata, alpha, NaN) are
    read as the band means; a scene without a usable pixel raises DataError.
    """
    from torchvision.ops import batched_nms

    from rsvision.data.detection import pad_to_multiple
    from rsvision.data.raster import normalize
    from rsvision.data.sources import open_source

    if overlap is None:
        overlap = min(200, window // 4)
    if window < 32 or not 0 <= overlap < window:
        raise ConfigError(f"need --window >= 32 and 0 <= --overlap < --window, got {window} / {overlap}")
    src = open_source(source, [b + 1 for b in bands] if bands is not None else None, list(mean), train_dtype)
    if src.count != len(mean):
        raise BandMismatchError(f"raster has {src.count} bands, the model expects {len(mean)} (checkpoint bands)",
                                path=getattr(src, "path", None))
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    batch_size = windows_per_forward(batch_size, dev)  # None: 1 on a CPU, 2 on a GPU
    m = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
    H, W = src.height, src.width
    wins = sliding_windows(H, W, window, overlap)
    bar = None
    if progress is True:
        from rsvision.progress import progress as progress_display

        bar = progress_display()
        bar.start()
        job = bar.add_task("segmenting instances", total=len(wins))
    boxes, scores, labels, masks, origins = [], [], [], [], []
    done = skipped = cut = read_px = 0

    def batches():
        nonlocal skipped, read_px
        for group in batched(wins, batch_size):
            keep = [w for w in group if src.any_valid(w)]
            skipped += len(group) - len(keep)
            read_px += sum(w.width * w.height for w in keep)
            yield len(group), keep, [normalize(torch.from_numpy(np.ascontiguousarray(src.read(w))), m, s) for w in keep]

    t0 = time.perf_counter()
    try:
        for n, group, imgs in prefetch(batches()):
            sizes = [tuple(x.shape[-2:]) for x in imgs]
            outs = model(pad_to_multiple(imgs, 32).to(dev), image_sizes=sizes) if imgs else []
            for w, out in zip(group, outs):
                b = out["boxes"].detach().float().cpu().numpy()
                sc = out["scores"].detach().float().cpu()
                lab = out["labels"].detach().long().cpu()
                wm = out["masks"].detach().cpu().numpy()
                for j in range(len(b)):
                    if float(sc[j]) < score_thr:
                        continue
                    crop, cx, cy = _crop(wm[j], b[j])
                    if not crop.any():
                        continue
                    ys, xs = np.nonzero(crop)  # the box of the mask itself: what the outputs describe
                    crop = crop[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
                    ox, oy = w.x0 + cx + int(xs.min()), w.y0 + cy + int(ys.min())
                    sb = np.array([ox, oy, ox + crop.shape[1], oy + crop.shape[0]], np.float32)
                    if _cut_by_window(sb, w, H, W, overlap):
                        cut += 1
                        continue
                    boxes.append(sb), scores.append(float(sc[j])), labels.append(int(lab[j]))
                    masks.append(crop), origins.append((ox, oy))
            done += n
            if bar is not None:
                bar.update(job, completed=done)
            elif callable(progress):
                progress(done, len(wins))
    finally:
        if bar is not None:
            bar.stop()
        transform, crs, path = getattr(src, "transform", None), getattr(src, "crs", None), getattr(src, "path", None)
        if hasattr(src, "close") and src is not source and not isinstance(source, (np.ndarray, torch.Tensor)):
            src.close()
    invalid = int(getattr(src, "invalid_pixels", 0))
    if wins and (skipped == len(wins) or (read_px and invalid >= read_px)):
        raise DataError("no usable pixels (all nodata, NaN or inf): nothing segmented", path=path)
    bt = torch.tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    st, lt = torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.long)
    n_raw = len(bt)
    keep = batched_nms(bt, st, lt, nms_iou) if n_raw else torch.zeros(0, dtype=torch.long)
    if max_det is not None:
        keep = keep[:max_det]
    ii = keep.tolist()
    seconds = time.perf_counter() - t0
    return SceneInstances(bt[keep], st[keep], lt[keep], [masks[i] for i in ii],
                          np.asarray([origins[i] for i in ii], np.int64).reshape(-1, 2), H, W, list(class_names),
                          transform, crs, str(path) if path is not None else None,
                          {"windows": len(wins), "windows_skipped": skipped, "raw_instances": n_raw,
                           "cut_by_window": cut, "invalid_pixels": invalid,
                           "seconds": round(seconds, 3)})


def _georeferenced(det: SceneInstances) -> bool:
    t = det.transform
    return det.crs is not None or (t is not None and not t.is_identity)


def write_instance_outputs(det: SceneInstances, out_dir: str | Path, name: str, source: Any = None,
                           png: bool = True, json_out: bool = True, geojson: bool = True,
                           bands: Sequence[int] | None = None, labels: bool = True,
                           png_max_side: int = 4096) -> dict[str, Path]:
    """Write the picture, the per-image JSON (pixel outlines) and, when georeferenced, the GeoJSON (CRS)."""
    from rsvision.geo.instances import instance_features, write_instances_geojson
    from rsvision.outputs import atomic_path, atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    names = det.class_names
    props = [{"id": i, "class": names[int(lab)], "score": round(float(sc), 4),
              "box": [round(float(v), 2) for v in box], "area_px": a}
             for i, (lab, sc, box, a) in enumerate(zip(det.labels.tolist(), det.scores.tolist(), det.boxes.tolist(),
                                                       det.areas()))]
    if png and (source is not None or det.path is not None):
        from PIL import Image

        from rsvision.tasks.predict_scene import read_overview
        from rsvision.viz.instances import draw_instances

        img, scale = read_overview(source if source is not None else det.path, png_max_side, bands)
        pic = draw_instances(img, det.masks, det.origins, det.labels.tolist(), det.scores.tolist(), names, scale,
                             show_labels=labels)
        path = out / f"{name}_instances.png"
        with atomic_path(path) as tmp:
            Image.fromarray(pic).save(tmp)
        written["png"] = path
    if json_out:
        feats = instance_features(det.masks, det.origins, props)
        doc = {"image": det.path, "width": det.width, "height": det.height, "classes": names,
               "coordinates": "pixels (x right, y down; (0, 0) the top-left corner of the top-left pixel)",
               "instances": [{**f["properties"], "geometry": f["geometry"]} for f in feats], "stats": det.stats}
        path = out / f"{name}_instances.json"
        with atomic_write(path) as f:
            import json

            json.dump(doc, f)
        written["json"] = path
    if geojson and _georeferenced(det):
        feats = instance_features(det.masks, det.origins, props, det.transform)
        written["geojson"] = write_instances_geojson(feats, det.crs, out / f"{name}.geojson")
    return written
