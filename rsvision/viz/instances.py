"""Instance masks drawn over an image: each mask blended in its class colour, its box tagged with class
and score (the tags and legend of :func:`rsvision.viz.boxes.draw_rotated_boxes`, so detect and instance
pictures read alike)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["draw_instances"]


def draw_instances(image: np.ndarray, masks: Sequence[np.ndarray], origins: Sequence[Sequence[int]],
                   labels: Sequence[int], scores: Sequence[float], class_names: Sequence[str], scale: float = 1.0,
                   alpha: float = 0.5, show_labels: bool = True) -> np.ndarray:
    """``(H, W, 3)`` uint8 ``image`` (the scene scaled by ``scale``) with instance ``masks[i]`` (bool crops
    whose top-left pixel is scene pixel ``origins[i]``) painted, lowest score first so the best stay on top."""
    import torch

    from rsvision.viz.boxes import class_colors, draw_rotated_boxes

    colors = np.asarray(class_colors(max(len(class_names), 1)), np.float32)
    out = np.asarray(image, np.float32).copy()
    H, W = out.shape[:2]
    boxes = []
    for i in np.argsort(np.asarray(scores, np.float64), kind="stable"):
        m = np.asarray(masks[i], bool)
        x0, y0 = int(origins[i][0]), int(origins[i][1])
        h, w = m.shape
        X0, Y0 = int(np.floor(x0 * scale)), int(np.floor(y0 * scale))
        X1, Y1 = min(int(np.ceil((x0 + w) * scale)), W), min(int(np.ceil((y0 + h) * scale)), H)
        if X1 > X0 and Y1 > Y0 and h and w:
            rows = np.clip(((np.arange(Y0, Y1) + 0.5) / scale - y0).astype(np.int64), 0, h - 1)
            cols = np.clip(((np.arange(X0, X1) + 0.5) / scale - x0).astype(np.int64), 0, w - 1)
            sub = m[rows][:, cols]
            region = out[Y0:Y1, X0:X1]
            region[sub] = (1 - alpha) * region[sub] + alpha * colors[int(labels[i]) % len(colors)]
    for i in range(len(masks)):
        m = np.asarray(masks[i], bool)
        ys, xs = np.nonzero(m)
        if not len(ys):
            boxes.append([0.0, 0.0, 0.0, 0.0, 0.0])
            continue
        x0, y0 = float(origins[i][0]), float(origins[i][1])
        bx0, bx1, by0, by1 = x0 + xs.min(), x0 + xs.max() + 1, y0 + ys.min(), y0 + ys.max() + 1
        boxes.append([(bx0 + bx1) / 2, (by0 + by1) / 2, bx1 - bx0, by1 - by0, 0.0])
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 5)
    return draw_rotated_boxes(out.astype(np.uint8), b, list(labels), list(scores), list(class_names), scale,
                              width=2 if scale >= 0.5 else 1, show_labels=show_labels, show_scores=show_labels)
