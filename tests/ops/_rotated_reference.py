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


def _norm_le90(a: float) -> float:
    return (a + math.pi / 2) % math.pi - math.pi / 2


def xywha_encode_row(p, g, stds=(0.1, 0.1, 0.2, 0.2, 0.1)) -> list[float]:
    """DeltaXYWHAOBBoxCoder.encode (le90, edge_swap, proj_xy) for one pair, in Python floats."""
    px, py, pw, ph, pa = p
    gx, gy, gw, gh, ga = g
    c, s = math.cos(pa), math.sin(pa)
    dx = (c * (gx - px) + s * (gy - py)) / pw
    dy = (-s * (gx - px) + c * (gy - py)) / ph
    d1, d2 = _norm_le90(ga - pa), _norm_le90(ga - pa + math.pi / 2)
    if abs(d1) < abs(d2):
        da, dw, dh = d1, math.log(gw / pw), math.log(gh / ph)
    else:
        da, dw, dh = d2, math.log(gh / pw), math.log(gw / ph)
    return [v / sd for v, sd in zip((dx, dy, dw, dh, da), stds)]


def xywha_decode_row(p, d, max_shape=None, stds=(0.1, 0.1, 0.2, 0.2, 0.1), clip=16 / 1000) -> list[float]:
    px, py, pw, ph, pa = p
    dx, dy, dw, dh, da = (v * sd for v, sd in zip(d, stds))
    m = abs(math.log(clip))
    dw, dh = min(max(dw, -m), m), min(max(dh, -m), m)
    gw, gh = pw * math.exp(dw), ph * math.exp(dh)
    gx = dx * pw * math.cos(pa) - dy * ph * math.sin(pa) + px
    gy = dx * pw * math.sin(pa) + dy * ph * math.cos(pa) + py
    ga = _norm_le90(pa + da)
    if max_shape is not None:
        gx, gy = min(max(gx, 0), max_shape[1] - 1), min(max(gy, 0), max_shape[0] - 1)
    if gw > gh:
        return [gx, gy, gw, gh, ga]
    return [gx, gy, gh, gw, _norm_le90(ga + math.pi / 2)]


def midpoint_decode_row(anchor, d, stds=(1, 1, 1, 1, 0.5, 0.5), clip=16 / 1000) -> list[float]:
    """MidpointOffsetCoder.decode (le90) for one anchor, in Python floats."""
    x1, y1, x2, y2 = anchor
    dx, dy, dw, dh, da, db = (v * sd for v, sd in zip(d, stds))
    m = abs(math.log(clip))
    dw, dh = min(max(dw, -m), m), min(max(dh, -m), m)
    px, py, pw, ph = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    gw, gh = pw * math.exp(dw), ph * math.exp(dh)
    gx, gy = px + pw * dx, py + ph * dy
    da, db = min(max(da, -0.5), 0.5), min(max(db, -0.5), 0.5)
    pts = [(gx + da * gw, gy - gh / 2), (gx + gw / 2, gy + db * gh), (gx - da * gw, gy + gh / 2), (gx - gw / 2, gy - db * gh)]
    vec = [(x - gx, y - gy) for x, y in pts]
    lens = [math.hypot(*v) for v in vec]
    longest = max(lens)
    rect = [c for (vx, vy), n in zip(vec, lens) for c in (gx + vx * longest / n, gy + vy * longest / n)]
    return poly2obb_le90_row(rect)


#: Hypothesis explores new random examples locally but replays a fixed set in CI (no flaky runs).
import os as _os  # noqa: E402

CI = bool(_os.environ.get("CI")) or _os.environ.get("RSVISION_REQUIRE_SHARED") == "1"
