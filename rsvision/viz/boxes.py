"""Drawing rotated boxes on images (PIL), one colour per class, optional scores and a legend.

Polygons come from ``rsvision.ops.obb2poly`` so the drawing shows exactly the box the model
predicts. Large scenes are drawn on a downscaled overview: pass ``scale`` (< 1) and the boxes
are scaled with it, so a 100-megapixel raster never has to be held at full resolution.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def class_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` well separated saturated RGB colours (golden-ratio hue steps)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def draw_rotated_boxes(
    image: np.ndarray,
    boxes: torch.Tensor | np.ndarray,
    labels: Sequence[int] | torch.Tensor | None = None,
    scores: Sequence[float] | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    scale: float = 1.0,
    width: int = 2,
    show_scores: bool = True,
    legend: bool = True,
) -> np.ndarray:
    """Draw le90 boxes ``(N, 5)`` on an ``(H, W, 3)`` (or ``(H, W)``) uint8 image; returns a new RGB array.

    ``scale`` multiplies box coordinates (the image is assumed already scaled by it).
    """
    from PIL import Image, ImageDraw

    from rsvision.ops import obb2poly

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    if img.shape[-1] > 3:
        img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    pil = Image.fromarray(np.ascontiguousarray(img)).convert("RGB")
    draw = ImageDraw.Draw(pil)
    b = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes, dtype=torch.float64)
    b = b.reshape(-1, 5)
    n = len(b)
    labels_l = [int(v) for v in (labels if labels is not None else [0] * n)]
    scores_l = [float(v) for v in scores] if scores is not None else None
    ncls = max(len(class_names) if class_names else 0, (max(labels_l) + 1) if labels_l else 1)
    colors = class_colors(ncls)
    if n:
        polys = (obb2poly(b, "le90") * scale).numpy()
        for i in range(n):
            pts = [(float(polys[i, 2 * k]), float(polys[i, 2 * k + 1])) for k in range(4)]
            col = colors[labels_l[i]]
            draw.line(pts + [pts[0]], fill=col, width=width)
            # mark the box's "front" edge (between vertices 2 and 3) with a thicker line
            draw.line([pts[1], pts[2]], fill=col, width=width + 1)
            if show_scores and scores_l is not None:
                draw.text((pts[0][0] + 1, pts[0][1] - 11), f"{scores_l[i]:.2f}", fill=col)
    if legend and class_names:
        present = sorted(set(labels_l)) if labels_l else []
        y = 4
        for c in present:
            name = class_names[c] if c < len(class_names) else str(c)
            draw.rectangle([4, y, 14, y + 10], fill=colors[c])
            draw.text((18, y - 1), name, fill=(255, 255, 255))
            y += 14
    return np.asarray(pil)


def save_drawn(path: str | Path, image: np.ndarray, boxes, labels=None, scores=None, class_names=None,
               scale: float = 1.0, **kwargs) -> Path:
    """:func:`draw_rotated_boxes` and write the result as PNG/JPEG (by suffix)."""
    from PIL import Image

    from rsvision.outputs import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(draw_rotated_boxes(image, boxes, labels, scores, class_names, scale, **kwargs)).save(tmp)
    return path
