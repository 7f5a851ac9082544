"""Slow, obvious reference implementations (Python loops, shapely) for the fast rotated ops."""
from __future__ import annotations

import math

import numpy as np
import torch
from shapely.geometry import Polygon


def corners(box) -> list[tuple[float, float]]:
    cx, cy, w, h, a = (float(v) for v in box)
    c, s = math.cos(a), math.sin(a)
    out = []
    for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        out.append((cx + c * dx - s * dy, cy + s * dx + c * dy))
    return out


def shapely_iou(b1, b2, mode: str = "iou") -> float:
    """IoU of two rotated boxes with shapely in float64 (0 when an area is below 1e-14, as mmcv)."""
    a1 = float(b1[2]) * float(b1[3])
    a2 = float(b2[2]) * float(b2[3])
    if a1 < 1e-14 or a2 < 1e-14:
        return 0.0
    inter = Polygon(corners(b1)).intersection(Polygon(corners(b2))).area
    return inter / (a1 if mode == "iof" else a1 + a2 - inter)


def shapely_iou_matrix(boxes1, boxes2, mode: str = "iou") -> np.ndarray:
    return np.array([[shapely_iou(a, b, mode) for b in boxes2] for a in boxes1], dtype=np.float64).reshape(
        len(boxes1), len(boxes2)
    )


def greedy_nms(boxes, scores, thr: float, labels=None) -> list[int]:
    """Textbook greedy NMS, one pair at a time with shapely IoU (suppress at IoU >= thr)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    removed = set()
    keep = []
    for pos, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        for j in order[pos + 1 :]:
            if j in removed or (labels is not None and int(labels[i]) != int(labels[j])):
                continue
            if shapely_iou(boxes[i], boxes[j]) >= thr:
                removed.add(j)
    return keep


def roi_align_rotated_loop(features, rois, out_hw, scale, sampling_ratio, aligned, clockwise):
    """mmcv's roi_align_rotated forward, sample by sample (channels vectorised)."""
    feats = features.double()
    B, C, H, W = feats.shape
    ph_n, pw_n = out_hw
    out = torch.zeros(len(rois), C, ph_n, pw_n, dtype=torch.float64)
    for n, roi in enumerate(rois.tolist()):
        b, cx, cy, w, h, a = roi
        off = 0.5 if aligned else 0.0
        cx, cy, w, h = cx * scale - off, cy * scale - off, w * scale, h * scale
        t = -a if clockwise else a
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bh, bw = h / ph_n, w / pw_n
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(h / ph_n)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(w / pw_n)
        count = max(gh * gw, 1)
        c, s = math.cos(t), math.sin(t)
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = torch.zeros(C, dtype=torch.float64)
                for iy in range(gh):
                    yy = -h / 2 + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        xx = -w / 2 + pw * bw + (ix + 0.5) * bw / gw
                        y = yy * c - xx * s + cy
                        x = yy * s + xx * c + cx
                        if y < -1 or y > H or x < -1 or x > W:
                            continue
                        y, x = max(y, 0.0), max(x, 0.0)
                        yl, xl = int(y), int(x)
                        if yl >= H - 1:
                            yl = yh = H - 1
                            y = float(yl)
                        else:
                            yh = yl + 1
                        if xl >= W - 1:
                            xl = xh = W - 1
                            x = float(xl)
                        else:
                            xh = xl + 1
                        ly, lx = y - yl, x - xl
                        f = feats[int(b)]
                        acc += (1 - ly) * (1 - lx) * f[:, yl, xl] + (1 - ly) * lx * f[:, yl, xh]
                        acc += ly * (1 - lx) * f[:, yh, xl] + ly * lx * f[:, yh, xh]
                out[n, :, ph, pw] = acc / count
    return out


def poly2obb_le90_row(p) -> list[float]:
    """poly2obb le90 for one polygon, in plain Python floats."""
    x1, y1, x2, y2, x3, y3, x4, y4 = (float(v) for v in p)
    e1 = math.hypot(x1 - x2, y1 - y2)
    e2 = math.hypot(x2 - x3, y2 - y3)
    a = math.atan2(y2 - y1, x2 - x1) if e1 > e2 else math.atan2(y4 - y1, x4 - x1)
    a = (a + math.pi / 2) % math.pi - math.pi / 2
    return [(x1 + x3) / 2, (y1 + y3) / 2, max(e1, e2), min(e1, e2), a]
