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


def label_font(image_side: int, size: int | None = None):
    """A scalable font sized for the picture: about 1/55 of its shorter side, 12..32 px (Pillow's own
    bundled font, so no system font is needed)."""
    from PIL import ImageFont

    px = size or int(min(32, max(12, round(image_side / 55))))
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


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
    show_labels: bool = True,
    font_size: int | None = None,
) -> np.ndarray:
    """Draw le90 boxes ``(N, 5)`` on an ``(H, W, 3)`` (or ``(H, W)``) uint8 image; returns a new RGB array.

    Each box carries its class name and score (``show_labels`` / ``show_scores``) on a filled tag in
    the class colour, sized to the picture so it stays legible; ``legend`` adds a corner key of the
    classes present. ``scale`` multiplies box coordinates (the image is assumed already scaled by it).
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
    font = label_font(min(pil.size), font_size)
    b = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes, dtype=torch.float64)
    b = b.reshape(-1, 5)
    n = len(b)
    labels_l = [int(v) for v in (labels if labels is not None else [0] * n)]
    scores_l = [float(v) for v in scores] if scores is not None else None
    ncls = max(len(class_names) if class_names else 0, (max(labels_l) + 1) if labels_l else 1)
    colors = class_colors(ncls)

    def name_of(c: int) -> str:
        return class_names[c] if class_names and c < len(class_names) else str(c)

    if n:
        polys = (obb2poly(b, "le90") * scale).numpy()
        order = np.argsort([scores_l[i] for i in range(n)]) if scores_l is not None else range(n)
        for i in order:  # best boxes last, so their tags are on top
            pts = [(float(polys[i, 2 * k]), float(polys[i, 2 * k + 1])) for k in range(4)]
            col = colors[labels_l[i]]
            draw.line(pts + [pts[0]], fill=col, width=width)
            # mark the box's "front" edge (between vertices 2 and 3) with a thicker line
            draw.line([pts[1], pts[2]], fill=col, width=width + 1)
            parts = ([name_of(labels_l[i])] if show_labels else []) + (
                [f"{scores_l[i]:.2f}"] if show_scores and scores_l is not None else [])
            if parts:
                text = " ".join(parts)
                x0, y0 = min(p[0] for p in pts), min(p[1] for p in pts)
                l, t, r, btm = draw.textbbox((0, 0), text, font=font)
                tw, th = r - l + 4, btm - t + 4
                x0 = float(np.clip(x0, 0, max(pil.width - tw, 0)))
                y0 = float(np.clip(y0 - th, 0, max(pil.height - th, 0)))
                draw.rectangle([x0, y0, x0 + tw, y0 + th], fill=col)
                dark = sum(col) > 382  # black text on light tags, white on dark
                draw.text((x0 + 2 - l, y0 + 2 - t), text, fill=(0, 0, 0) if dark else (255, 255, 255), font=font)
    if legend and (class_names or labels_l):
        present = sorted(set(labels_l))
        _, t, _, btm = draw.textbbox((0, 0), "Ag", font=font)
        step = btm - t + 6
        y = 4
        for c in present:
            draw.rectangle([4, y, 4 + step - 4, y + step - 4], fill=colors[c], outline=(0, 0, 0))
            draw.text((8 + step, y - t), name_of(c), fill=(255, 255, 255), font=font, stroke_width=2,
                      stroke_fill=(0, 0, 0))
            y += step
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
