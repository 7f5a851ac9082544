"""DOTA task-1 (oriented boxes) evaluation, identical to the official devkit's ``voc_eval``.

Reproduced details (``DOTA_devkit/dota_evaluation_task1.py``):

* detections of a class are ranked with ``np.argsort(-confidence)`` (the devkit's own, unstable,
  call, so score ties order the same way);
* a detection is compared with the ground truths of its image whose axis-aligned boxes overlap
  under the devkit's ``+1`` pixel convention, by exact polygon IoU (shapely instead of the devkit's
  compiled ``polyiou``); the best one (first on ties) matches when ``IoU > iou_thr`` (strict);
* matching a difficult ground truth (``difficult != 0``; split truncation writes 2) is neither a
  true nor a false positive; a ground truth matched twice makes the second a false positive;
  ``npos`` counts only non-difficult ground truth;
* AP is VOC07 11-point (``metric="voc07"``, the devkit's default) or all-point (``"voc12"``).

Detections on images that have no annotation file are ignored (counted in the log), like
detections outside the server's image set. The result is the detect metric JSON of CONVENTIONS:
fractions, ``AP[class] = None`` for classes without (non-difficult) ground truth, and ``mAP`` the
mean over the classes that have some (``None`` when no class has any).

A ground-truth class outside the evaluated class list is an error naming the label file and line
(it would otherwise be dropped, or, with an inferred list, become a class nothing can match); Task1
files of classes outside the list are ignored with a warning.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import shapely

from rsvision.errors import ConfigError, DataError

from .labels import (
    DIOR_CLASSES,
    DOTA1_0_CLASSES,
    DOTA1_5_CLASSES,
    DOTA2_0_CLASSES,
    Detection,
    read_label_txt,
    read_task1_dir,
)

__all__ = ["voc_ap", "poly_iou", "evaluate_class", "evaluate_polys", "evaluate", "load_ground_truth"]

log = logging.getLogger(__name__)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = True) -> float:
    """PASCAL VOC average precision: 11-point (VOC07) or area under the interpolated curve."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _polygons(polys: np.ndarray) -> np.ndarray:
    p = np.asarray(polys, dtype=np.float64).reshape(-1, 4, 2)
    geoms = shapely.polygons(np.concatenate([p, p[:, :1]], axis=1))
    bad = ~shapely.is_valid(geoms)
    if bad.any():  # self-intersecting quadrilaterals: use their valid form instead of failing
        geoms[bad] = shapely.make_valid(geoms[bad])
    return geoms


def poly_iou(gt_geoms: np.ndarray, det_geom) -> np.ndarray:
    """IoU of one polygon with an array of polygons (shapely geometries)."""
    inter = shapely.area(shapely.intersection(gt_geoms, det_geom))
    union = shapely.area(gt_geoms) + shapely.area(det_geom) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def evaluate_class(
    dets: Sequence[tuple[str, float, np.ndarray]],
    gts: Mapping[str, tuple[np.ndarray, np.ndarray]],
    iou_thr: float = 0.5,
    use_07_metric: bool = True,
    errors: dict[str, tuple[int, int]] | None = None,
) -> tuple[float | None, int, np.ndarray, np.ndarray]:
    """One class: ``dets`` = [(image, score, poly8)], ``gts[image] = (polys (N, 8), difficult (N,))``.

    Returns ``(ap, npos, recall, precision)``; ``ap`` is None when ``npos == 0``. ``errors`` (a dict) is
    filled with ``{image: (false positives, missed non-difficult ground truths)}`` for the images that
    have detections or ground truth of the class.
    """
    recs = {}
    npos = 0
    for name, (polys, diff) in gts.items():
        polys = np.asarray(polys, dtype=np.float64).reshape(-1, 8)
        diff = np.asarray(diff).reshape(-1).astype(bool)
        npos += int((~diff).sum())
        recs[name] = {
            "polys": polys,
            "geoms": _polygons(polys) if len(polys) else None,
            "difficult": diff,
            "det": np.zeros(len(polys), dtype=bool),
            "xmin": polys[:, 0::2].min(1) if len(polys) else None,
            "ymin": polys[:, 1::2].min(1) if len(polys) else None,
            "xmax": polys[:, 0::2].max(1) if len(polys) else None,
            "ymax": polys[:, 1::2].max(1) if len(polys) else None,
        }
    dets = [d for d in dets if d[0] in recs]
    confidence = np.array([float(d[1]) for d in dets], dtype=np.float64)
    order = np.argsort(-confidence)
    nd = len(dets)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for k, i in enumerate(order):
        image, _, poly = dets[i]
        r = recs[image]
        bb = np.asarray(poly, dtype=np.float64).reshape(8)
        ovmax, jmax = -np.inf, -1
        if len(r["polys"]):
            ixmin = np.maximum(r["xmin"], bb[0::2].min())
            iymin = np.maximum(r["ymin"], bb[1::2].min())
            ixmax = np.minimum(r["xmax"], bb[0::2].max())
            iymax = np.minimum(r["ymax"], bb[1::2].max())
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[0::2].max() - bb[0::2].min() + 1.0) * (bb[1::2].max() - bb[1::2].min() + 1.0)
                   + (r["xmax"] - r["xmin"] + 1.0) * (r["ymax"] - r["ymin"] + 1.0) - inters)
            keep = np.where(inters / uni > 0)[0]
            if len(keep):
                ious = poly_iou(r["geoms"][keep], _polygons(bb[None])[0])
                jmax = int(keep[int(np.argmax(ious))])
                ovmax = float(np.max(ious))
        if ovmax > iou_thr:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[k] = 1.0
                    r["det"][jmax] = True
                else:
                    fp[k] = 1.0
        else:
            fp[k] = 1.0
    if errors is not None:
        fp_img: dict[str, int] = {}
        for k, i in enumerate(order):
            fp_img[dets[i][0]] = fp_img.get(dets[i][0], 0) + int(fp[k])
        for name, r in recs.items():
            if len(r["polys"]) or name in fp_img:
                errors[name] = (fp_img.get(name, 0), int((~r["det"] & ~r["difficult"]).sum()))
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    if npos == 0:
        return None, 0, np.zeros(0), np.zeros(0)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric), npos, rec, prec


def _check_metric(metric: str, iou_thr: float | None = None) -> bool:
    if metric not in ("voc07", "voc12"):
        raise ValueError(f"metric must be 'voc07' or 'voc12', got {metric!r}")
    if iou_thr is not None and not (isinstance(iou_thr, (int, float)) and 0 <= iou_thr <= 1):
        raise ConfigError(f"--iou-thr must be in [0, 1], got {iou_thr!r}")
    return metric == "voc07"


def evaluate_polys(
    dets: Mapping[str, Iterable],
    gts: Mapping[str, Mapping],
    classes: Sequence[str],
    iou_thr: float = 0.5,
    metric: str = "voc07",
    per_image: bool = False,
) -> dict:
    """Evaluate in-memory detections -> the detect metric JSON dict (``per_image``: with per-image
    ``{"image", "errors", "FP", "missed"}`` records, ``{class: count}`` each, as :mod:`rsvision.tasks.per_image`
    describes).

    Args:
        dets: ``{class: [(image, score, poly8) or Detection]}``.
        gts: ``{image: {"polys": (N, 8), "classes": [N names], "difficult": (N,)}}``; every image
            of the evaluated set must be a key (an image without objects maps to empty arrays).
        classes: the classes to score (others are ignored, in detections and ground truth).
    """
    use07 = _check_metric(metric, iou_thr)
    ap_out: dict[str, float | None] = {}
    num_gt: dict[str, int] = {}
    errs: dict[str, dict[str, tuple[int, int]]] = {}
    for c in classes:
        per_image_gt = {}
        for name, g in gts.items():
            names = list(g.get("classes", []))
            sel = np.array([n == c for n in names], dtype=bool)
            polys = np.asarray(g["polys"], dtype=np.float64).reshape(-1, 8)[sel]
            diff = np.asarray(g.get("difficult", np.zeros(len(names))), dtype=np.int64).reshape(-1)[sel]
            per_image_gt[name] = (polys, diff)
        rows = [(d.image, d.score, np.asarray(d.poly)) if isinstance(d, Detection) else d for d in dets.get(c, [])]
        errs[c] = {}
        ap, npos, _, _ = evaluate_class(rows, per_image_gt, iou_thr, use07, errs[c] if per_image else None)
        ap_out[c] = None if ap is None else min(ap, 1.0)  # 11 x (1/11) sums to 1 + 2e-16
        num_gt[c] = npos
    scored = [v for v in ap_out.values() if v is not None]
    res = {
        "task": "detect",
        "metric": metric,
        "iou_thr": float(iou_thr),
        "mAP": float(np.mean(scored)) if scored else None,
        "AP": ap_out,
        "num_gt": num_gt,
    }
    if per_image:
        res["per_image"] = [{"image": name,
                             "errors": {c: sum(errs[c][name]) for c in classes if name in errs[c]},
                             "FP": {c: errs[c][name][0] for c in classes if name in errs[c]},
                             "missed": {c: errs[c][name][1] for c in classes if name in errs[c]}} for name in gts]
    return res


def load_ground_truth(ann_dir: str | Path, classes: Sequence[str] | None = None) -> dict[str, dict]:
    """``{image stem: {"polys", "classes", "difficult", "lines"}}`` from every ``*.txt`` labelTxt in ``ann_dir``.

    Degenerate polygons are kept (the devkit counts them as ground truth that nothing matches). With
    ``classes``, an object of another class is a :class:`DataError` naming the file and line.
    """
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise DataError("annotation folder does not exist", path=ann_dir)
    out = {}
    for p in sorted(ann_dir.glob("*.txt")):
        ann = read_label_txt(p, on_error="skip", allow_degenerate=True)
        out[p.stem] = {"polys": ann.polys, "classes": ann.classes, "difficult": ann.difficult, "lines": ann.lines,
                       "path": p}
    if not out:
        raise DataError("no labelTxt (*.txt) files in the annotation folder", path=ann_dir)
    if classes is not None:
        _check_gt_classes(out, set(classes), f"is not in the evaluated class list ({_short(classes)})")
    return out


def _short(names: Sequence[str]) -> str:
    names = list(names)
    return ", ".join(names) if len(names) <= 20 else ", ".join(names[:20]) + f", ... ({len(names)} classes)"


def _check_gt_classes(gts: Mapping[str, Mapping], known: set[str], why: str, found: str = "") -> None:
    """DataError at the first object whose class is not ``known`` (file:line), listing every such class."""
    first: dict[str, tuple[Path, int | None]] = {}
    for name, g in gts.items():
        lines = list(g.get("lines") or [None] * len(g["classes"]))
        for c, ln in zip(g["classes"], lines):
            if c not in known and c not in first:
                first[c] = (Path(g.get("path", name)), ln)
    if not first:
        return
    (c0, (path, line)), others = next(iter(first.items())), list(first.items())[1:]
    more = "".join(f"; also {c!r} ({p}:{ln})" for c, (p, ln) in others[:5])
    raise DataError(f"ground-truth class {c0!r} {why}{more}{found}; fix the label, or choose the class list "
                    "with --version", path=path, line=line)


_KNOWN_LISTS = (("dota1.0", DOTA1_0_CLASSES), ("dota1.5", DOTA1_5_CLASSES), ("dota2.0", DOTA2_0_CLASSES),
                ("dior", DIOR_CLASSES))


def _default_classes(names: set[str]) -> list[str] | None:
    """The smallest known class list holding ``names`` (None when none does)."""
    for _, lst in _KNOWN_LISTS:
        if names <= set(lst):
            return list(lst)
    return None


def evaluate(
    dets_dir: str | Path,
    ann_dir: str | Path,
    classes: Sequence[str] | None = None,
    iou_thr: float = 0.5,
    metric: str = "voc07",
    strict_classes: bool = False,
    images: Sequence[str] | None = None,
    per_image: bool = False,
) -> dict:
    """Evaluate ``Task1_<class>.txt`` files against a labelTxt folder -> detect metric JSON dict.

    ``images``: score only these image names' ground truth (None: every label file in ``ann_dir``).
    ``per_image``: add per-image error records (:func:`evaluate_polys`).
    A name with no label file is a :class:`DataError`: its objects would silently count as none.

    ``classes=None`` picks the smallest known class list (DOTA v1.0, v1.5, v2.0, DIOR-R) that holds every
    class seen in the ground truth and the detections (else the one holding the ground-truth classes); a
    ground-truth class in none of them is a :class:`DataError` naming the label file and line and the
    classes found. Given ``classes`` are scored and other ground truth is ignored, or, with
    ``strict_classes`` (the CLI's ``--version``), is such an error too.
    """
    _check_metric(metric, iou_thr)
    gts = load_ground_truth(ann_dir, classes if strict_classes else None)
    if images is not None:
        missing = sorted(set(images) - set(gts))
        if missing:
            raise DataError(f"{len(missing)} evaluated image(s) have no label file, e.g. {missing[:3]}", path=ann_dir)
        gts = {k: v for k, v in gts.items() if k in set(images)}
    dets = read_task1_dir(dets_dir, classes)  # with a class list, only its files are read
    gt_names = {c for g in gts.values() for c in g["classes"]}
    if classes is None:
        det_names = {c for c, v in dets.items() if v}
        classes = _default_classes(gt_names | det_names) or _default_classes(gt_names)
        if classes is None:
            known = set().union(*(lst for _, lst in _KNOWN_LISTS))
            _check_gt_classes(gts, known, f"is in no known class list ({', '.join(n for n, _ in _KNOWN_LISTS)})",
                              f"; classes found in {ann_dir}: {_short(sorted(gt_names))}")
            raise DataError(f"classes found in the ground truth fit no single known class list: "
                            f"{_short(sorted(gt_names))}; choose one with --version", path=ann_dir)
    ignored = sorted(p.name for p in Path(dets_dir).glob("Task1_*.txt") if p.name[6:-4] not in set(classes))
    if ignored:
        log.warning("%s: Task1 file(s) of class(es) outside the evaluated list ignored: %s", dets_dir,
                    ", ".join(ignored))
    unknown = {d.image for rows in dets.values() for d in rows} - set(gts)
    if unknown:
        log.warning("%d image name(s) in the detections have no annotation file (ignored), e.g. %s",
                    len(unknown), sorted(unknown)[:3])
    res = evaluate_polys(dets, gts, list(classes), iou_thr, metric, per_image)
    if res["mAP"] is None:
        log.warning("%s: no class has (non-difficult) ground truth, so mAP is undefined (null)", ann_dir)
    return res
