"""Class masks as pictures: a deterministic palette, colourised masks, masks blended over an image.

Why in ``viz``: colouring is for people looking at results; data readers and tasks only pass
class indices and palettes around.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["default_palette", "colorize", "overlay"]


def default_palette(n: int) -> list[list[int]]:
    """``n`` distinct display colours (index 0 dark grey), deterministic."""
    rng = np.random.default_rng(12345)
    base = [[64, 64, 64], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
            [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]]
    while len(base) < n:
        base.append(rng.integers(0, 256, 3).tolist())
    return base[:n]


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 colours (ignore / out-of-range pixels black)."""
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)
    m = np.asarray(mask).astype(np.int64)
    valid = (m >= 0) & (m < len(pal)) & (m != ignore_index)
    out = np.zeros(m.shape + (3,), np.uint8)
    out[valid] = pal[m[valid]]
    return out


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5,
            ignore_index: int = 255, rgb: Sequence[int] | None = None) -> np.ndarray:
    """Blend a colourised mask over an image ``(C, H, W)`` (contrast-stretched) -> RGB uint8.

    ``rgb``: 0-based band indices shown as red, green, blue (default the first three, or the first
    band as grey): multispectral rasters rarely store red, green, blue as bands 1, 2, 3.
    """
    img = np.asarray(image, np.float32)
    if rgb is not None:
        rgb = [int(b) for b in rgb]
        if len(rgb) != 3 or not all(0 <= b < img.shape[0] for b in rgb):
            raise ValueError(f"rgb bands must be three indices in 0..{img.shape[0] - 1}, got {rgb}")
        img = img[rgb]
    elif img.shape[0] < 3:
        img = np.repeat(img[:1], 3, 0)
    img = img[:3]
    lo = np.percentile(img, 2, axis=(1, 2), keepdims=True)
    hi = np.percentile(img, 98, axis=(1, 2), keepdims=True)
    rgb = np.clip((img - lo) / np.maximum(hi - lo, 1e-6) * 255, 0, 255).transpose(1, 2, 0)
    col = colorize(mask, palette, ignore_index).astype(np.float32)
    valid = (np.asarray(mask) != ignore_index)[..., None]
    out = np.where(valid, (1 - alpha) * rgb + alpha * col, rgb)
    return out.astype(np.uint8)
