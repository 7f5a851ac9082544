"""Merge patch-level detections back onto the full images (MMRotate's ``merge_det`` rule).

Each detection of patch ``<id>__<size>__<x>___<y>`` is shifted by ``(x, y)``; then, per original
image and class, rotated NMS (:func:`rsvision.ops.nms_rotated`, suppress at ``IoU >= iou_thr``,
default 0.1) removes the duplicates that overlapping windows produce. The kept rows keep their
original (shifted) polygons; the NMS sees them as ``le90`` rotated boxes (:func:`rsvision.ops.poly2obb`).

:func:`merge_task1_dir` reads and merges everything before it claims the output folder
(:func:`rsvision.outputs.claim_dir`: refused when it holds results unless ``exist_ok``); it writes each
``Task1_<class>.txt`` atomically and touches no other file there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch

from rsvision.errors import ConfigError, DataError
from rsvision.ops import nms_rotated, poly2obb

from .labels import Detection, read_task1_dir, write_task1
from .split import parse_patch_name

__all__ = ["merge_detections", "merge_task1_dir"]


def _check_iou_thr(iou_thr: float) -> None:
    if not (isinstance(iou_thr, (int, float)) and 0 <= iou_thr <= 1):
        raise ConfigError(f"--iou-thr must be in [0, 1], got {iou_thr!r}")


def merge_detections(
    dets: Mapping[str, Iterable[Detection]], iou_thr: float = 0.1
) -> dict[str, list[Detection]]:
    """``{class: [Detection on patches]}`` -> ``{class: [Detection on full images]}`` (score order).

    Rows whose image name is not a patch name are taken as full-image detections (offset 0).
    """
    _check_iou_thr(iou_thr)
    out: dict[str, list[Detection]] = {}
    for cls, rows in dets.items():
        groups: dict[str, list[Detection]] = {}
        for d in rows:
            try:
                name, x, y = parse_patch_name(d.image)
            except ValueError:
                name, x, y = d.image, 0, 0
            poly = tuple(float(v) + (x if i % 2 == 0 else y) for i, v in enumerate(d.poly))
            groups.setdefault(name, []).append(Detection(name, d.score, poly))
        merged = []
        for name in sorted(groups):
            g = groups[name]
            polys = torch.tensor([d.poly for d in g], dtype=torch.float64)
            scores = torch.tensor([d.score for d in g], dtype=torch.float64)
            keep = nms_rotated(poly2obb(polys), scores, iou_thr)
            merged += [g[i] for i in keep.tolist()]
        out[cls] = merged
    return out


def merge_task1_dir(
    in_dir: str | Path, out_dir: str | Path, iou_thr: float = 0.1, exist_ok: bool = False
) -> dict[str, int]:
    """Read patch-level ``Task1_<class>.txt`` files, merge, write full-image ones. Returns counts per class.

    A bad row is a :class:`DataError` naming the file and line, raised before ``out_dir`` is touched; an
    ``out_dir`` that already holds files is refused unless ``exist_ok`` (then the Task1 files of the merged
    classes are replaced and nothing else is touched).
    """
    from rsvision.outputs import claim_dir

    _check_iou_thr(iou_thr)
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if in_dir.resolve() == out_dir.resolve():
        raise DataError("merge output folder must differ from the input folder", path=out_dir)
    dets = read_task1_dir(in_dir)
    if not dets:
        raise DataError("no Task1_<class>.txt files found", path=in_dir)
    merged = merge_detections(dets, iou_thr)
    with claim_dir(out_dir, exist_ok, what="--out"):
        write_task1(out_dir, merged)
    return {c: len(v) for c, v in merged.items()}
