"""The one tiler shared by ``dota split``, whole-scene detection and sliding-window segmentation.

Windows follow the DOTA / MMRotate ``img_split`` rule: start every ``size - gap`` pixels and
shift the last window back so it ends exactly at the image border (never a partial window when
the image is larger than the window). Images smaller than the window get a single window at 0
(callers pad).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class Window:
    """A window in pixel coordinates of the full image: columns [x0, x0+width), rows [y0, y0+height)."""

    x0: int
    y0: int
    width: int
    height: int

    @property
    def x1(self) -> int:
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        return self.y0 + self.height


def window_starts(length: int, size: int, gap: int) -> list[int]:
    """Start offsets of windows of ``size`` with overlap ``gap`` along an axis of ``length``.

    >>> window_starts(1000, 1024, 200)
    [0]
    >>> window_starts(2000, 1024, 200)
    [0, 976]
    """
    if size <= 0 or gap < 0 or gap >= size:
        raise ValueError(f"need size > gap >= 0, got size={size}, gap={gap}")
    step = size - gap
    n = 1 if length <= size else math.ceil((length - size) / step + 1)
    starts = [step * i for i in range(n)]
    if len(starts) > 1 and starts[-1] + size > length:
        starts[-1] = length - size
    return starts


def sliding_windows(height: int, width: int, size: int, gap: int) -> list[Window]:
    """All windows covering an image of ``height`` x ``width``, row-major (y outer, x inner).

    Windows are clipped to the image, so for images smaller than ``size`` the window is the
    whole image (``width``/``height`` smaller than ``size``); callers pad to ``size`` if needed.
    """
    out = []
    for y0 in window_starts(height, size, gap):
        for x0 in window_starts(width, size, gap):
            out.append(Window(x0, y0, min(size, width - x0), min(size, height - y0)))
    return out


def batched(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    """Yield consecutive groups of at most ``batch_size`` windows."""
    for i in range(0, len(windows), batch_size):
        yield windows[i : i + batch_size]


def split_windows(
    height: int, width: int, sizes: list[int], gaps: list[int], img_rate_thr: float = 0.6
) -> list[Window]:
    """Windows of MMRotate's ``img_split.get_sliding_window`` (the rule ``dota split`` follows).

    For each ``(size, gap)`` the starts are :func:`window_starts` along x and y, enumerated x-outer /
    y-inner (MMRotate's ``itertools.product(x_start, y_start)`` order). Windows keep their full
    ``size`` (they may extend past a small image: the caller pads). A window is kept when the image
    covers more than ``img_rate_thr`` of it; if none does, the best-covered ones (within 0.01) are kept.
    """
    wins: list[Window] = []
    for size, gap in zip(sizes, gaps):
        for x0 in window_starts(width, size, gap):
            for y0 in window_starts(height, size, gap):
                wins.append(Window(x0, y0, size, size))
    if not wins:
        return wins
    rates = [
        (max(0, min(w.x1, width) - w.x0) * max(0, min(w.y1, height) - w.y0)) / (w.width * w.height) for w in wins
    ]
    if not any(r > img_rate_thr for r in rates):
        best = max(rates)
        rates = [1.0 if abs(r - best) < 0.01 else r for r in rates]
    return [w for w, r in zip(wins, rates) if r > img_rate_thr]


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Yield ``items`` while a background thread produces the next ``depth`` of them.

    Whole-scene prediction reads and prepares the next windows (GDAL and numpy release the GIL)
    while the model runs on the current ones. Exceptions of the producer are raised in the consumer.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((None, item))
            q.put((None, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((exc, None))

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)
