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

import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rsvision.data.sources import open_source
from rsvision.data.tiling import Window, prefetch, window_starts

__all__ = ["blend_weights", "iter_blended_strips", "sliding_window_inference", "predict_probs"]

PredictFn = Callable[[torch.Tensor], torch.Tensor]


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
    min_size: int = 32,
    stats: dict | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(y0, probs)``: finished row strips ``probs`` of shape ``(K, h, W)`` from row ``y0`` down.

    ``source`` is anything with ``height``, ``width`` and ``read(window)`` (see :func:`open_source`);
    ``predict_fn`` maps a float batch (``(B, C, h, w)`` or ``(B, 2, C, h, w)``) to logits
    ``(B, K, h, w)``. Strips are yielded top to bottom and cover every row exactly once. Images
    smaller than ``min_size`` on a side are padded to it (with the source's fill values, i.e. the band
    means) so a network with a stride-32 stem still sees a valid input; the padding is cropped off.
    The next windows are read in a background thread while the model runs; windows that the source's
    nodata / alpha mask rules out are not run (``stats``: windows, windows_skipped, seconds, mp_per_s).
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
    stats = stats if stats is not None else {}
    stats.update(windows=total, windows_skipped=0)

    def batches():
        """(row, windows kept, raw batch, windows in the group), read ahead in a thread; windows
        the nodata / alpha mask rules out entirely are skipped (their pixels come out as nodata)."""
        for r, y0 in enumerate(ys):
            wins = [Window(x0, y0, ww, wh) for x0 in xs]
            for i in range(0, len(wins), batch_size):
                group = [w for w in wins[i : i + batch_size] if source.any_valid(w)]
                stats["windows_skipped"] += min(batch_size, len(wins) - i) - len(group)
                batch = torch.from_numpy(np.stack([source.read(w) for w in group])) if group else None
                yield r, group, batch, min(batch_size, len(wins) - i)

    def strip(r: int):
        nonlocal acc, wsum
        y0 = ys[r]
        end = ys[r + 1] if r + 1 < len(ys) else H  # rows < next window start are final
        k = end - y0
        out = np.divide(acc[:, :k], wsum[None, :k], out=np.zeros_like(acc[:, :k]), where=wsum[None, :k] > 0)
        acc = np.concatenate([acc[:, k:], np.zeros((num_classes, k, W), np.float32)], 1)
        wsum = np.concatenate([wsum[k:], np.zeros((k, W), np.float32)], 0)
        return y0, out

    t0 = time.perf_counter()
    row = 0  # invariant: the buffer holds rows [ys[row], ys[row] + wh)
    for r, group, batch, n in prefetch(batches()):
        while r > row:
            yield strip(row)
            row += 1
        if group:
            probs = predict_probs(predict_fn, _pad_small(batch.to(device), min_size, source), tta)[..., :wh, :ww].cpu()
            if probs.shape[1] != num_classes or probs.shape[-2:] != (wh, ww):
                raise ValueError(f"model returned {tuple(probs.shape)}, expected (B, {num_classes}, {wh}, {ww})")
            for w, p in zip(group, probs):
                acc[:, :, w.x0 : w.x1] += (p * weights).numpy()
                wsum[:, w.x0 : w.x1] += weights.numpy()
        done += n
        if progress is not None:
            progress(done, total)
    while row < len(ys):
        yield strip(row)
        row += 1
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    stats["mp_per_s"] = round(H * W / 1e6 / max(stats["seconds"], 1e-9), 3)


def _pad_small(batch: torch.Tensor, min_size: int, source: Any) -> torch.Tensor:
    """Pad ``(..., C, h, w)`` on the bottom / right up to ``min_size`` with the source's per-band fill."""
    h, w = batch.shape[-2:]
    if h >= min_size and w >= min_size:
        return batch
    shape = (*batch.shape[:-2], max(h, min_size), max(w, min_size))
    fill = getattr(source, "fill", None)
    out = torch.zeros(shape, dtype=batch.dtype, device=batch.device)
    if fill is not None:
        out += torch.as_tensor(fill, dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
    out[..., :h, :w] = batch
    return out


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
