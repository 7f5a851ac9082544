"""Synthetic land-cover scenes with index masks, for tests and demos of semantic segmentation.

Each class has its own spectral signature (any band count) plus texture noise; scenes are a
vegetation / bare background with water ellipses, roads (thin bands) and rectangular buildings on
top, so a small model separates them by colour *and* shape within a few dozen steps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SEG_CLASSES = ("background", "building", "road", "water")


def class_signatures(num_classes: int, bands: int, seed: int = 0) -> np.ndarray:
    """Per-class mean reflectance ``(K, bands)`` in [40, 215], well separated (fixed by ``seed``)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 215, num_classes)
    sig = np.stack([rng.permutation(base) for _ in range(bands)], 1)
    return sig.astype(np.float32)


def _ellipse(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(0.08, 0.25) * h, rng.uniform(0.08, 0.25) * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def random_label_map(height: int, width: int, rng: np.random.Generator, num_buildings: int = 6) -> np.ndarray:
    """Index mask ``(H, W)`` uint8 over :data:`SEG_CLASSES` (0 background, 1 building, 2 road, 3 water)."""
    mask = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 3)):
        mask[_ellipse(height, width, rng)] = 3
    for _ in range(rng.integers(1, 3)):  # straight roads, horizontal or vertical
        t = int(rng.integers(3, max(4, min(height, width) // 12)))
        if rng.random() < 0.5:
            y = int(rng.integers(0, height - t))
            mask[y : y + t] = 2
        else:
            x = int(rng.integers(0, width - t))
            mask[:, x : x + t] = 2
    for box in random_boxes(height, width, rng, num_buildings):
        y0, x0, y1, x1 = box
        mask[y0:y1, x0:x1] = 1
    return mask


def random_boxes(height: int, width: int, rng: np.random.Generator, n: int, lo: float = 0.06, hi: float = 0.18) -> list[tuple[int, int, int, int]]:
    """``n`` axis-aligned boxes ``(y0, x0, y1, x1)`` with sides in [lo, hi] of the image size."""
    boxes = []
    for _ in range(n):
        bh = max(3, int(rng.uniform(lo, hi) * height))
        bw = max(3, int(rng.uniform(lo, hi) * width))
        y0 = int(rng.integers(0, max(1, height - bh)))
        x0 = int(rng.integers(0, max(1, width - bw)))
        boxes.append((y0, x0, y0 + bh, x0 + bw))
    return boxes


def render(mask: np.ndarray, signatures: np.ndarray, rng: np.random.Generator, noise: float = 12.0) -> np.ndarray:
    """Image ``(bands, H, W)`` uint8 whose pixels follow their class signature plus noise."""
    img = signatures[mask].transpose(2, 0, 1)  # (bands, H, W)
    img = img + rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_segmentation_sample(
    size: int | tuple[int, int] = 64, bands: int = 3, seed: int = 0, noise: float = 12.0, signature_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image ``(bands, H, W)`` uint8 and index mask ``(H, W)`` uint8 over :data:`SEG_CLASSES`."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    mask = random_label_map(h, w, rng)
    img = render(mask, class_signatures(len(SEG_CLASSES), bands, signature_seed), rng, noise)
    return img, mask


def write_segmentation_folder(
    root: str | Path, n: int = 8, size: int = 64, bands: int = 3, seed: int = 0, fmt: str = "png",
    zero_is_ignore: bool = False,
) -> Path:
    """Write ``root/images/*`` and ``root/masks/*`` (PNG for 1/3 bands, else GeoTIFF with ``fmt='tif'``).

    ``zero_is_ignore`` shifts labels by one (LoveDA / converted ISPRS encoding, 0 = no data).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, mask = make_segmentation_sample(size, bands, seed=seed + i)
        if zero_is_ignore:
            mask = mask + 1
        name = f"scene_{i:03d}"
        _write_image(root / "images" / f"{name}.{fmt}", img)
        _write_image(root / "masks" / f"{name}.{fmt}", mask[None])
    return root


def _write_image(path: Path, arr: np.ndarray, transform=None, crs=None) -> None:
    """Write ``(C, H, W)`` uint8 as PNG (C in 1, 3, 4) or GeoTIFF (``.tif``, any C)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        profile = dict(driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0], dtype=arr.dtype.name)
        if transform is not None:
            profile.update(transform=transform, crs=crs)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr)
        return
    from PIL import Image

    if arr.shape[0] == 1:
        Image.fromarray(arr[0]).save(path)
    elif arr.shape[0] in (3, 4):
        Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0))).save(path)
    else:
        raise ValueError(f"{path}: PNG holds 1, 3 or 4 bands, not {arr.shape[0]}; use fmt='tif'")
