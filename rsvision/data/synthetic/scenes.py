"""Synthetic labelled scenes (land-cover-like textures) for classification tests and the demo.

Why: tests and ``rsvision demo classify`` need a folder-per-class dataset that a small CNN learns
in about a minute on a CPU, with any band count and dtype, reproducible from a seed, without
shipping data. Each class is a texture *pattern* (smooth water, blobby forest, striped fields,
gridded roofs, speckled bare soil, meandering roads, ...) times a class *spectral signature*
(one value per band, so extra bands such as NIR carry class information as in real imagery),
with random orientation, frequency, colour jitter and noise so no two images are equal.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["SCENE_CLASSES", "scene_image", "make_scene_dataset", "make_multilabel_dataset", "write_image"]

SCENE_CLASSES: tuple[str, ...] = ("water", "forest", "field", "residential", "bare", "road")
_PATTERNS = ("smooth", "blobs", "stripes", "grid", "speckle", "lines")
_RGB = (  # (dark, bright) RGB reflectance of water, forest, field, residential, bare, road
    ((0.05, 0.12, 0.22), (0.12, 0.25, 0.40)),
    ((0.08, 0.22, 0.08), (0.20, 0.42, 0.18)),
    ((0.35, 0.40, 0.15), (0.65, 0.60, 0.35)),
    ((0.30, 0.30, 0.32), (0.75, 0.45, 0.40)),
    ((0.55, 0.45, 0.32), (0.80, 0.70, 0.52)),
    ((0.20, 0.35, 0.18), (0.70, 0.70, 0.68)),
)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinear-upsampled random grid in [0, 1]: low-frequency noise with ~``cells`` blobs per side."""
    g = rng.random((cells + 2, cells + 2))
    x = np.linspace(0, cells, size)
    i = np.floor(x).astype(int)
    f = x - i
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
    out = rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def _pattern(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A texture in [0, 1] of shape (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == "smooth":
        t = 0.3 + 0.3 * _smooth_noise(rng, size, 2)
    elif kind == "blobs":
        t = _smooth_noise(rng, size, int(rng.integers(6, 10)))
        t = (t > 0.45).astype(np.float32) * 0.6 + 0.4 * _smooth_noise(rng, size, 16)
    elif kind == "stripes":
        freq = rng.uniform(5, 9)
        t = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * u + rng.uniform(0, 6.3)))
    elif kind == "grid":
        freq = rng.uniform(4, 7)
        a = (np.sin(2 * np.pi * freq * u) > 0.2) & (np.sin(2 * np.pi * freq * v) > 0.2)
        t = a.astype(np.float32)
    elif kind == "speckle":
        t = 0.5 + 0.25 * _smooth_noise(rng, size, 3) + 0.25 * rng.random((size, size))
    elif kind == "lines":
        t = 0.2 * _smooth_noise(rng, size, 4)
        for _ in range(int(rng.integers(1, 3))):
            off = rng.uniform(0.2, 0.8)
            wig = 0.05 * np.sin(2 * np.pi * rng.uniform(1, 3) * v)
            t = np.maximum(t, (np.abs(u - off + wig) < 0.035).astype(np.float32))
    else:  # pragma: no cover
        raise ValueError(kind)
    return t.astype(np.float32)


def _signature(cls: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark / bright reflectance per band in [0, 1] for class ``cls`` (fixed, class-specific)."""
    rng = np.random.default_rng(1000 + cls)
    lo = rng.uniform(0.05, 0.45, bands)
    hi = np.clip(lo + rng.uniform(0.2, 0.5, bands), 0, 1)
    if cls < len(_RGB):  # plausible colours for the named classes' first three bands
        n = min(bands, 3)
        lo[:n], hi[:n] = _RGB[cls][0][:n], _RGB[cls][1][:n]
    return lo, hi


def scene_image(cls: int, size: int = 64, bands: int = 3, rng: np.random.Generator | None = None,
                dtype: str = "uint8") -> np.ndarray:
    """One ``(bands, size, size)`` scene of class index ``cls`` in ``dtype`` (uint8 0-255,
    uint16 0-10000 like Sentinel-2 L2A, float32 reflectance 0-1)."""
    rng = rng or np.random.default_rng()
    t = _pattern(_PATTERNS[cls % len(_PATTERNS)], rng, size)
    lo, hi = _signature(cls, bands)
    jitter = rng.normal(0, 0.04, bands)
    img = (lo + jitter)[:, None, None] + (hi - lo)[:, None, None] * t[None]
    img = img + rng.normal(0, 0.03, img.shape)
    img = np.clip(img, 0, 1)
    if dtype == "uint8":
        return np.round(img * 255).astype(np.uint8)
    if dtype == "uint16":
        return np.round(img * 10000).astype(np.uint16)
    if dtype in ("float32", "float"):
        return img.astype(np.float32)
    raise ValueError(f"dtype must be uint8, uint16 or float32, got {dtype!r}")


def write_image(path: str | Path, img: np.ndarray) -> Path:
    """Write ``(C, H, W)``: PNG / JPEG through PIL (uint8, 1 / 3 / 4 bands), TIFF through rasterio."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        from rasterio.transform import Affine

        transform = Affine(1.0, 0.0, 0.0, 0.0, -1.0, float(img.shape[1]))  # 1 px = 1 unit, no CRS
        with rasterio.open(path, "w", driver="GTiff", transform=transform, width=img.shape[2], height=img.shape[1],
                           count=img.shape[0], dtype=img.dtype.name) as dst:
            dst.write(img)
        return path
    from PIL import Image

    if img.dtype != np.uint8 or img.shape[0] not in (1, 3, 4):
        raise ValueError(f"{path.suffix} needs uint8 with 1, 3 or 4 bands; use .tif for {img.shape[0]} x {img.dtype}")
    arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    Image.fromarray(arr).save(path)
    return path


def _suffix(bands: int, dtype: str, fmt: str | None) -> str:
    if fmt:
        return "." + fmt.lstrip(".")
    return ".png" if dtype == "uint8" and bands in (1, 3, 4) else ".tif"


def make_scene_dataset(root: str | Path, num_classes: int = 4, per_class: int = 20, size: int = 64,
                       bands: int = 3, dtype: str = "uint8", seed: int = 0, fmt: str | None = None,
                       class_names: Sequence[str] | None = None) -> list[str]:
    """Write ``root/<class>/<class>_<i>.<ext>`` and return the class names.

    ``fmt``: ``png`` / ``jpg`` / ``tif`` (default: PNG for uint8 with 1, 3 or 4 bands, else GeoTIFF).
    More than six classes reuse the patterns with other spectral signatures.
    """
    root = Path(root)
    names = list(class_names) if class_names else [
        SCENE_CLASSES[k] if k < len(SCENE_CLASSES) else f"class{k}" for k in range(num_classes)]
    rng = np.random.default_rng(seed)
    ext = _suffix(bands, dtype, fmt)
    for k, name in enumerate(names):
        for i in range(per_class):
            write_image(root / name / f"{name}_{i:03d}{ext}", scene_image(k, size, bands, rng, dtype))
    return names


def make_multilabel_dataset(root: str | Path, num_classes: int = 4, count: int = 40, size: int = 64,
                            bands: int = 3, seed: int = 0) -> tuple[Path, list[str]]:
    """Images made of four quadrants of random classes; ``root/labels.csv`` lists ``path,labels``
    (labels joined by ``;``). Returns the CSV path and the class names."""
    root = Path(root)
    names = [SCENE_CLASSES[k] if k < len(SCENE_CLASSES) else f"class{k}" for k in range(num_classes)]
    rng = np.random.default_rng(seed)
    h = size // 2
    rows = []
    for i in range(count):
        img = np.zeros((bands, size, size), np.uint8)
        present = set()
        for qy in range(2):
            for qx in range(2):
                k = int(rng.integers(num_classes))
                present.add(k)
                img[:, qy * h:(qy + 1) * h, qx * h:(qx + 1) * h] = scene_image(k, h, bands, rng)
        rel = f"images/img_{i:04d}{_suffix(bands, 'uint8', None)}"
        write_image(root / rel, img)
        rows.append((rel, ";".join(names[k] for k in sorted(present))))
    csv_path = root / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        w.writerows(rows)
    return csv_path, names
