"""Synthetic multi-task data: the oriented objects of :mod:`.objects` with all three label kinds.

Why: MTP tests need images whose semantic mask, instance masks and rotated boxes agree, small enough
for a CPU, in both folder layouts the multi-task readers take: DOTA (labels derived from the
polygons) and SAMRS (grey semantic PNGs, a COCO instance JSON with polygon segmentations and
labelTxt boxes), so the SAMRS reader is exercised without the real SAMRS files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from rsvision.data.synthetic.objects import CLASSES, make_dota_dataset, make_image, objects_to_polys

__all__ = ["make_multitask_sample", "write_multitask_dataset"]


def make_multitask_sample(size: int = 128, seed: int = 0, num_objects: int | tuple[int, int] = (3, 8),
                          classes: Sequence[str] = CLASSES) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """One image ``(3, H, W)`` uint8, its labels (:func:`rsvision.data.multitask.polygons_to_labels`,
    label = index in ``classes``) and the ``(N, 8)`` polygons they come from."""
    from rsvision.data.multitask import polygons_to_labels

    img, objs = make_image(size, size, seed, num_objects, classes)
    polys = objects_to_polys(objs)
    labels = [list(classes).index(o.name) for o in objs]
    return img.transpose(2, 0, 1), polygons_to_labels(polys, labels, size, size), polys


def write_multitask_dataset(out: str | Path, num_images: int, size: int = 128, seed: int = 0,
                            layout: str = "dota", num_objects: int | tuple[int, int] = (3, 8),
                            classes: Sequence[str] = CLASSES) -> Path:
    """Write ``num_images`` synthetic images in the ``dota`` layout (``images/`` + ``labelTxt/``) or the
    ``samrs`` layout (``images/``, ``segs/`` grey PNGs, ``instances.json``, ``rbbtxts/``)."""
    if layout == "dota":
        return make_dota_dataset(out, num_images, size, seed, num_objects, classes)
    if layout != "samrs":
        raise ValueError(f"layout must be dota or samrs, got {layout!r}")
    from PIL import Image

    from rsvision.data.dota.labels import write_label_txt
    from rsvision.outputs import atomic_write

    out = Path(out)
    for d in ("images", "segs", "rbbtxts"):
        (out / d).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        img_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        img, labels, polys = make_multitask_sample(size, img_seed, num_objects, classes)
        name = f"mt{seed:03d}_{i:05d}"
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(out / "images" / f"{name}.png")
        Image.fromarray(labels["semantic"].astype(np.uint8)).save(out / "segs" / f"{name}.png")
        names = [classes[k] for k in labels["labels"]]
        kept = _kept_polys(polys)
        write_label_txt(out / "rbbtxts" / f"{name}.txt", kept, names)
        images.append({"id": i + 1, "file_name": f"{name}.png", "height": size, "width": size})
        for poly, m, k in zip(kept, labels["masks"], labels["mask_labels"]):
            ys, xs = np.nonzero(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(k) + 1, "iscrowd": 0,
                         "segmentation": [poly.tolist()], "area": float(m.sum()),
                         "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": j + 1, "name": c} for j, c in enumerate(classes)]}
    with atomic_write(out / "instances.json") as f:
        json.dump(coco, f)
    return out


def _kept_polys(polys: np.ndarray) -> np.ndarray:
    """The polygons of the objects the converter kept (its boxes, in order)."""
    from rsvision.data.detection import polys_to_boxes

    return np.asarray(polys).reshape(-1, 8)[polys_to_boxes(polys)[1]]
