"""Synthetic bi-temporal pairs for change detection.

Date B is date A with some buildings removed and new ones built (the *change*), then a global
illumination change (gain / offset), a seasonal shift of the vegetation background and fresh sensor
noise, none of which is change. A model that thresholds raw differences fails; one that learns
object-level differences succeeds, which is what the tests check.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rsvision.data.synthetic.segmentation import _write_image, random_boxes


def make_change_pair(
    size: int | tuple[int, int] = 64,
    bands: int = 3,
    seed: int = 0,
    num_objects: int = 6,
    num_removed: int = 2,
    num_added: int = 2,
    noise: float = 6.0,
    illumination: float = 0.3,
    seasonal: float = 50.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pair: images A, B ``(bands, H, W)`` uint8 and label ``(H, W)`` uint8 (1 = changed).

    ``illumination`` is the largest relative gain change, ``seasonal`` the largest per-band shift
    of the background (digital numbers); both are applied to B only and are not labelled.
    """
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    # Smooth vegetation / bare-soil background: low-frequency field mixing two spectra.
    f = sum(np.sin(2 * np.pi * (rng.uniform(0.5, 2) * yy + rng.uniform(0.5, 2) * xx) + rng.uniform(0, 6)) for _ in range(3))
    f = (f - f.min()) / (np.ptp(f) + 1e-6)
    veg, soil = rng.uniform(50, 110, bands), rng.uniform(110, 160, bands)
    background = veg[:, None, None] * f + soil[:, None, None] * (1 - f)
    roof = rng.uniform(170, 240, (num_objects + num_added, bands))

    def paint(boxes, colours):
        img = background.copy()
        occ = np.zeros((h, w), bool)
        for (y0, x0, y1, x1), c in zip(boxes, colours):
            img[:, y0:y1, x0:x1] = c[:, None, None]
            occ[y0:y1, x0:x1] = True
        return img, occ

    boxes = random_boxes(h, w, rng, num_objects + num_added, 0.08, 0.2)
    old, new = boxes[:num_objects], boxes[num_objects:]
    keep = list(range(num_removed, num_objects))  # the first ``num_removed`` objects are demolished
    img_a, occ_a = paint(old, roof[:num_objects])
    img_b, occ_b = paint([old[i] for i in keep] + new, [roof[i] for i in keep] + list(roof[num_objects:]))
    # Change = pixels whose content differs before the nuisance shifts (a building replaced by
    # another one counts, a demolished one hidden under a kept one does not).
    changed = np.abs(img_a - img_b).max(0) > 1e-6
    # Not change: seasonal shift of the background, global illumination, noise.
    season = rng.uniform(-seasonal, seasonal, bands)[:, None, None] * f
    gain = 1 + rng.uniform(-illumination, illumination)
    offset = rng.uniform(-10, 10)
    img_b = (img_b + season * (~occ_b)) * gain + offset
    img_a = img_a + rng.normal(0, noise, img_a.shape)
    img_b = img_b + rng.normal(0, noise, img_b.shape)
    to8 = lambda a: np.clip(a, 0, 255).astype(np.uint8)  # noqa: E731
    return to8(img_a), to8(img_b), changed.astype(np.uint8)


def write_change_folder(root: str | Path, n: int = 8, size: int = 64, bands: int = 3, seed: int = 0, fmt: str = "png") -> Path:
    """Write a LEVIR-CD style folder ``root/{A,B,label}/pair_XXX.<fmt>`` (labels 0 / 255)."""
    root = Path(root)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a, b, lab = make_change_pair(size, bands, seed=seed + i)
        name = f"pair_{i:03d}.{fmt}"
        _write_image(root / "A" / name, a)
        _write_image(root / "B" / name, b)
        _write_image(root / "label" / name, (lab * 255)[None])
    return root
