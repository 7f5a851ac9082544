"""Sliding-window inference for segmentation and change detection over images of any size.

Windows come from the shared tiler (:func:`rsvision.data.tiling.sliding_windows`), pixels are read
lazily per window (rasterio windows for files, slices for arrays), class probabilities of
overlapping windows are blended with a weight that falls off towards each window's border (the
centre of a window sees more context), and finished row strips are handed on as soon as no later
window touches them, so a scene is never held in memory whole: only ``classes x window x width``.

When the image fits in one window the model runs once on the image itself, so the result equals a
plain forward pass (tested). Flip test-time augmentation averages the softmax over the identity,
horizontal and vertical flips.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from rsvision.data.tiling import Window, window_starts
from rsvision.errors import BandMismatchError, DataError

__all__ = [
    "ArraySource", "RasterSource", "PairSource", "blend_weights", "iter_blended_strips",
    "sliding_window_inference", "predict_probs", "open_source",
]

PredictFn = Callable[[torch.Tensor], torch.Tensor]


class ArraySource:
    """An in-memory ``(C, H, W)`` image (or ``(2, C, H, W)`` pair) read window by window."""

    def __init__(self, array: np.ndarray | torch.Tensor):
        self.array = array
        self.height, self.width = int(array.shape[-2]), int(array.shape[-1])
        self.count = int(array.shape[-3])
        self.transform = None
        self.crs = None
        self.path = None

    def read(self, w: Window) -> np.ndarray:
        a = self.array[..., w.y0 : w.y1, w.x0 : w.x1]
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        return a.astype(np.float32, copy=False)

    def valid(self, w: Window) -> np.ndarray:
        return np.ones((w.height, w.width), bool)


class RasterSource:
    """A raster file (GeoTIFF, ENVI, PNG, JPEG, ... anything GDAL opens) read lazily by windows.

    ``bands`` are 1-based band indexes to read (default: all except an alpha band). ``valid``
    comes from GDAL's dataset mask, which covers nodata values and alpha.
    """

    def __init__(self, path: str | Path, bands: Sequence[int] | None = None):
        import rasterio
        from rasterio.enums import ColorInterp
        from rasterio.errors import NotGeoreferencedWarning

        self.path = Path(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(f"cannot open raster: {exc}", path=self.path) from exc
        if bands is None:
            bands = [i + 1 for i, ci in enumerate(self.ds.colorinterp) if ci != ColorInterp.alpha] or [1]
        bad = [b for b in bands if not 1 <= b <= self.ds.count]
        if bad:
            raise BandMismatchError(f"band(s) {bad} not in a {self.ds.count}-band raster", path=self.path)
        self.bands = list(bands)
        self.count = len(self.bands)
        self.height, self.width = self.ds.height, self.ds.width
        georef = self.ds.crs is not None or not self.ds.transform.is_identity
        self.transform = self.ds.transform if georef else None
        self.crs = self.ds.crs
        self.has_mask = self.ds.nodata is not None or any(ci == ColorInterp.alpha for ci in self.ds.colorinterp)

    def read(self, w: Window) -> np.ndarray:
        from rasterio.windows import Window as RWindow

        try:
            return self.ds.read(self.bands, window=RWindow(w.x0, w.y0, w.width, w.height)).astype(np.float32)
        except Exception as exc:  # truncated / corrupt files fail here, not at open
            raise DataError(f"cannot read window {w}: {exc}", path=self.path) from exc

    def valid(self, w: Window) -> np.ndarray:
        if not self.has_mask:
            return np.ones((w.height, w.width), bool)
        from rasterio.windows import Window as RWindow

        return self.ds.dataset_mask(window=RWindow(w.x0, w.y0, w.width, w.height)) > 0

    def close(self) -> None:
        self.ds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PairSource:
    """Two co-registered sources read as ``(2, C, h, w)`` pairs (date A, date B)."""

    def __init__(self, a, b):
        if (a.height, a.width) != (b.height, b.width):
            raise DataError(f"pair sizes differ: {a.height}x{a.width} vs {b.height}x{b.width}", path=getattr(b, "path", None))
        if a.count != b.count:
            raise BandMismatchError(f"pair band counts differ: {a.count} vs {b.count}", path=getattr(b, "path", None))
        self.a, self.b = a, b
        self.height, self.width, self.count = a.height, a.width, a.count
        self.transform, self.crs, self.path = a.transform, a.crs, a.path

    def read(self, w: Window) -> np.ndarray:
        return np.stack([self.a.read(w), self.b.read(w)], 0)

    def valid(self, w: Window) -> np.ndarray:
        return self.a.valid(w) & self.b.valid(w)

    def close(self) -> None:
        for s in (self.a, self.b):
            if hasattr(s, "close"):
                s.close()


def open_source(x: Any, bands: Sequence[int] | None = None):
    """Array/tensor -> :class:`ArraySource`; path -> :class:`RasterSource`; source -> itself."""
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return ArraySource(x)
    if isinstance(x, (str, Path)):
        return RasterSource(x, bands)
    return x


def blend_weights(height: int, width: int, kind: str = "triangle", floor: float = 0.05) -> np.ndarray:
    """``(H, W)`` float32 window weights, highest in the centre, never zero (image borders need them).

    ``triangle``: separable tent ``min(i + 1, n - i) / ceil(n / 2)``; ``uniform``: all ones.
    """
    if kind == "uniform":
        return np.ones((height, width), np.float32)
    if kind != "triangle":
        raise ValueError(f"unknown blend weight {kind!r}")

    def tent(n: int) -> np.ndarray:
        i = np.arange(n)
        return np.maximum(np.minimum(i + 1, n - i) / np.ceil(n / 2), floor)

    return np.outer(tent(height), tent(width)).astype(np.float32)


@torch.no_grad()
def predict_probs(predict_fn: PredictFn, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Softmax of ``predict_fn(batch)`` (``(B, ..., H, W)`` -> ``(B, K, H, W)``), flip-TTA averaged."""
    probs = predict_fn(batch).float().softmax(1)
    if tta:
        for dims in ((-1,), (-2,)):
            probs = probs + predict_fn(batch.flip(dims)).float().softmax(1).flip(dims)
        probs = probs / 3
    return probs


def iter_blended_strips(
    predict_fn: PredictFn,
    source: Any,
    size: int,
    gap: int,
    num_classes: int,
    batch_size: int = 4,
    tta: bool = False,
    weight: str = "triangle",
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(y0, probs)``: finished row strips ``probs`` of shape ``(K, h, W)`` from row ``y0`` down.

    ``source`` is anything with ``height``, ``width`` and ``read(window)`` (see :func:`open_source`);
    ``predict_fn`` maps a float batch (``(B, C, h, w)`` or ``(B, 2, C, h, w)``) to logits
    ``(B, K, h, w)``. Strips are yielded top to bottom and cover every row exactly once.
    """
    source = open_source(source)
    H, W = source.height, source.width
    ys = window_starts(H, size, gap)
    xs = window_starts(W, size, gap)
    wh, ww = min(size, H), min(size, W)
    weights = torch.from_numpy(blend_weights(wh, ww, weight))
    total, done = len(ys) * len(xs), 0
    acc = np.zeros((num_classes, wh, W), np.float32)
    wsum = np.zeros((wh, W), np.float32)
    for r, y0 in enumerate(ys):  # invariant: the buffer holds rows [y0, y0 + wh)
        wins = [Window(x0, y0, ww, wh) for x0 in xs]
        for i in range(0, len(wins), batch_size):
            group = wins[i : i + batch_size]
            batch = torch.from_numpy(np.stack([source.read(w) for w in group])).to(device)
            probs = predict_probs(predict_fn, batch, tta).cpu()
            if probs.shape[1] != num_classes or probs.shape[-2:] != (wh, ww):
                raise ValueError(f"model returned {tuple(probs.shape)}, expected (B, {num_classes}, {wh}, {ww})")
            for w, p in zip(group, probs):
                acc[:, :, w.x0 : w.x1] += (p * weights).numpy()
                wsum[:, w.x0 : w.x1] += weights.numpy()
            done += len(group)
            if progress is not None:
                progress(done, total)
        end = ys[r + 1] if r + 1 < len(ys) else H  # rows < next window start are final
        k = end - y0
        yield y0, acc[:, :k] / wsum[None, :k]
        acc = np.concatenate([acc[:, k:], np.zeros((num_classes, k, W), np.float32)], 1)
        wsum = np.concatenate([wsum[k:], np.zeros((k, W), np.float32)], 0)


def sliding_window_inference(
    predict_fn: PredictFn,
    image: Any,
    size: int,
    gap: int,
    num_classes: int,
    **kwargs: Any,
) -> np.ndarray:
    """Blended class probabilities ``(K, H, W)`` of a whole image (array, tensor, path or source)."""
    source = open_source(image)
    out = np.empty((num_classes, source.height, source.width), np.float32)
    for y0, strip in iter_blended_strips(predict_fn, source, size, gap, num_classes, **kwargs):
        out[:, y0 : y0 + strip.shape[1]] = strip
    return out
