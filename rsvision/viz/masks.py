"""Class masks as pictures: a deterministic palette, colourised masks, masks blended over an image.

Why in ``viz``: colouring is for people looking at results; data readers and tasks only pass
class indices and palettes around.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["default_palette", "colorize", "overlay", "stretch", "with_legend", "side_by_side", "save_palette_png"]


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
    rgb = stretch(image, rgb).astype(np.float32)
    col = colorize(mask, palette, ignore_index).astype(np.float32)
    valid = (np.asarray(mask) != ignore_index)[..., None]
    out = np.where(valid, (1 - alpha) * rgb + alpha * col, rgb)
    return out.astype(np.uint8)


def stretch(image: np.ndarray, rgb: Sequence[int] | None = None) -> np.ndarray:
    """``(C, H, W)`` any dtype -> ``(H, W, 3)`` uint8, bands ``rgb`` (0-based; default the first three,
    or the first as grey) stretched between their 2nd and 98th percentiles."""
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
    return np.clip((img - lo) / np.maximum(hi - lo, 1e-6) * 255, 0, 255).transpose(1, 2, 0).astype(np.uint8)


def _font(side: int):
    from rsvision.viz.boxes import label_font

    return label_font(side)


def with_legend(picture: np.ndarray, class_names: Sequence[str], palette: Sequence[Sequence[int]],
                present: Sequence[int] | None = None) -> np.ndarray:
    """``picture`` with a key panel on its right: a colour swatch and the name of each class
    (``present``: only these indices, e.g. the classes the mask contains)."""
    from PIL import Image, ImageDraw

    pic = Image.fromarray(np.ascontiguousarray(picture)).convert("RGB")
    idx = list(range(len(class_names))) if present is None else [int(i) for i in present]
    font = _font(max(pic.height, 240))
    probe = ImageDraw.Draw(pic)
    _, t, _, b = probe.textbbox((0, 0), "Ag", font=font)
    row = b - t + 8
    width = 16 + row + max((probe.textlength(str(class_names[i]), font=font) for i in idx), default=0)
    canvas = Image.new("RGB", (pic.width + int(width) + 8, max(pic.height, row * len(idx) + 12)), (255, 255, 255))
    canvas.paste(pic, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0, y = pic.width + 8, 6
    for i in idx:
        draw.rectangle([x0, y, x0 + row - 6, y + row - 6], fill=tuple(int(v) for v in palette[i]), outline=(0, 0, 0))
        draw.text((x0 + row, y - t), str(class_names[i]), fill=(0, 0, 0), font=font)
        y += row
    return np.asarray(canvas)


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str], gap: int = 6) -> np.ndarray:
    """Equal-height RGB panels in a row, each under its title (e.g. date A | date B | prediction)."""
    from PIL import Image, ImageDraw

    ims = [Image.fromarray(np.ascontiguousarray(p)).convert("RGB") for p in panels]
    h = max(im.height for im in ims)
    font = _font(max(h, 240))
    _, t, _, b = ImageDraw.Draw(ims[0]).textbbox((0, 0), "Ag", font=font)
    head = b - t + 10
    canvas = Image.new("RGB", (sum(im.width for im in ims) + gap * (len(ims) - 1), h + head), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for im, title in zip(ims, titles):
        canvas.paste(im, (x, head))
        draw.text((x + 4, 5 - t), title, fill=(0, 0, 0), font=font)
        x += im.width + gap
    return np.asarray(canvas)


def save_palette_png(path, mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> None:
    """An ``(H, W)`` uint8 class-index mask as a palette ("P") PNG: the pixel values stay the class
    indices (tools reading the mask see 0..K-1), viewers show the class colours (ignore: black)."""
    from PIL import Image

    im = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    flat[: len(pal)] = pal
    if ignore_index < 256:
        flat[ignore_index] = 0
    im.putpalette(flat.ravel().tolist())
    im.save(path, format="PNG")
