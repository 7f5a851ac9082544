"""Exact rotated-box IoU by batched convex-polygon clipping (mmcv ``box_iou_rotated`` semantics).

Each pair is intersected with Sutherland-Hodgman clipping of one box's quadrilateral by the four
half-planes of the other, done on whole tensors: a clip stage maps a polygon with ``n`` vertex slots
to ``n + 1`` slots (a convex polygon cut by a line gains at most one vertex), unused slots repeating
the last vertex, so degenerate (zero-length) edges are harmless and the shoelace area is exact. The
slot count adapts to the batch (float noise on near-coincident edges can add spurious vertex pairs;
they are kept, never truncated, because dropping one can cut away a real corner).
Dense ``N x M`` matrices only clip the pairs whose circumscribed circles and axis-aligned bounding
boxes both meet (others are exactly 0),
in chunks, so memory stays bounded. CPU and CUDA, float32 and float64, any angle.

Semantics (mmcv 1.7.2): areas are ``w * h``; a pair with either area below ``1e-14`` (zero-width or
negative-size boxes) has IoU 0; both centres are shifted by their midpoint before clipping (float32
accuracy for large coordinates); ``iof`` divides by the area of the box from ``boxes1``; touching
boxes give 0; NaN in a box gives NaN for its pairs. ``clockwise=True`` (default) reads angles in
rsvision's / MMRotate's sense (positive turns +x towards +y); ``clockwise=False`` negates both boxes'
angles first, as mmcv does, for boxes whose angles turn the other way.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_iou_rotated", "rbbox_overlaps", "rotated_intersection_area", "candidate_pairs"]

_MIN_AREA = 1e-14
_CHUNK = 1 << 16  # pairs clipped at once (~16 MB of float32 temporaries per stage)


def _corners(cx: Tensor, cy: Tensor, w: Tensor, h: Tensor, a: Tensor) -> Tensor:
    """(P,) fields -> (P, 4, 2) counter-clockwise (in x-right/y-up terms) corners."""
    cos, sin = torch.cos(a), torch.sin(a)
    wx, wy = w * 0.5 * cos, w * 0.5 * sin
    hx, hy = -h * 0.5 * sin, h * 0.5 * cos
    xs = torch.stack([cx - wx - hx, cx + wx - hx, cx + wx + hx, cx - wx + hx], dim=-1)
    ys = torch.stack([cy - wy - hy, cy + wy - hy, cy + wy + hy, cy - wy + hy], dim=-1)
    return torch.stack([xs, ys], dim=-1)


def _clip(poly: Tensor, a: Tensor, e: Tensor) -> Tensor:
    """Clip (P, n, 2) polygons by the half-planes left of lines through ``a`` (P, 2) along ``e`` (P, 2).

    Returns (P, m, 2) with ``m`` the largest vertex count in the batch (``n + 1`` at most for convex
    input, more only when float noise makes near-collinear vertices alternate sides: nothing is ever
    dropped); slots past a polygon's own count repeat its last vertex.
    """
    P, n, _ = poly.shape
    ex, ey = e[:, None, 0], e[:, None, 1]
    d = ex * (poly[..., 1] - a[:, None, 1]) - ey * (poly[..., 0] - a[:, None, 0])  # (P, n) signed dist
    nxt = torch.roll(poly, -1, dims=1)
    dn = torch.roll(d, -1, dims=1)
    inside = d >= 0
    cross = inside != (dn >= 0)
    denom = torch.where(cross, d - dn, torch.ones_like(d))
    t = (d / denom)[..., None]
    xpt = poly + t * (nxt - poly)
    pts = torch.stack([poly, xpt], dim=2).reshape(P, 2 * n, 2)
    valid = torch.stack([inside, cross], dim=2).reshape(P, 2 * n)
    # compact the valid slots to the front, order preserved: output slot k takes the k-th valid slot
    # (searchsorted on the running count); slots past the count repeat the last valid one
    cum = torch.cumsum(valid, dim=1, dtype=torch.int32)
    count = cum[:, -1:]
    m = max(int(count.max()), 1)
    want = torch.arange(1, m + 1, device=poly.device, dtype=torch.int32).expand(P, m)
    src = torch.searchsorted(cum, torch.minimum(want, count.clamp(min=1)).contiguous()).clamp(max=2 * n - 1)
    return torch.gather(pts, 1, src[..., None].expand(P, m, 2))


def _shoelace(poly: Tensor) -> Tensor:
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * (x * torch.roll(y, -1, dims=-1) - torch.roll(x, -1, dims=-1) * y).sum(-1)


def _pair_inter(b1: Tensor, b2: Tensor) -> Tensor:
    """Intersection areas of aligned (P, 5) pairs (no chunking)."""
    sx = (b1[:, 0] + b2[:, 0]) / 2
    sy = (b1[:, 1] + b2[:, 1]) / 2
    p1 = _corners(b1[:, 0] - sx, b1[:, 1] - sy, b1[:, 2], b1[:, 3], b1[:, 4])
    p2 = _corners(b2[:, 0] - sx, b2[:, 1] - sy, b2[:, 2], b2[:, 3], b2[:, 4])
    poly = p1
    for k in range(4):
        a = p2[:, k]
        poly = _clip(poly, a, p2[:, (k + 1) % 4] - a)
    return _shoelace(poly).clamp(min=0)


def rotated_intersection_area(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Exact intersection areas of aligned pairs: (P, 5), (P, 5) -> (P,). Boxes need ``w, h > 0``."""
    if boxes1.shape[0] == 0:
        return boxes1.new_zeros(0)
    out = [_pair_inter(b1, b2) for b1, b2 in zip(boxes1.split(_CHUNK), boxes2.split(_CHUNK))]
    return torch.cat(out)


def _finish(inter: Tensor, area1: Tensor, area2: Tensor, mode: str) -> Tensor:
    base = area1 if mode == "iof" else area1 + area2 - inter
    out = inter / base
    return torch.where((area1 < _MIN_AREA) | (area2 < _MIN_AREA), torch.zeros_like(out), out)


def box_iou_rotated(
    boxes1: Tensor,
    boxes2: Tensor,
    mode: str = "iou",
    aligned: bool = False,
    clockwise: bool = True,
) -> Tensor:
    """Rotated IoU / IoF, reference-exact to mmcv's ``box_iou_rotated``.

    Args:
        boxes1: ``(N, 5)`` boxes ``(cx, cy, w, h, a)``.
        boxes2: ``(M, 5)`` boxes (``M == N`` when ``aligned``).
        mode: ``"iou"`` or ``"iof"`` (intersection over the area of ``boxes1``).
        aligned: pairwise ``(N,)`` instead of the ``(N, M)`` matrix.
        clockwise: ``False`` negates all angles first (counter-clockwise angle convention).

    Returns:
        ``(N, M)`` or ``(N,)`` in the dtype of ``boxes1``.
    """
    if mode not in ("iou", "iof"):
        raise ValueError(f"mode must be 'iou' or 'iof', got {mode!r}")
    if not clockwise:
        flip = boxes1.new_tensor([1, 1, 1, 1, -1])
        boxes1, boxes2 = boxes1 * flip, boxes2 * flip
    boxes2 = boxes2.to(boxes1.dtype)
    n, m = boxes1.shape[0], boxes2.shape[0]
    if aligned:
        if n != m:
            raise ValueError(f"aligned IoU needs equal counts, got {n} and {m}")
        if n == 0:
            return boxes1.new_zeros(0)
        inter = rotated_intersection_area(boxes1, boxes2)
        return _finish(inter, boxes1[:, 2] * boxes1[:, 3], boxes2[:, 2] * boxes2[:, 3], mode)
    out = boxes1.new_zeros(n, m)
    if n == 0 or m == 0:
        return out
    area1 = boxes1[:, 2] * boxes1[:, 3]
    area2 = boxes2[:, 2] * boxes2[:, 3]
    i, j = candidate_pairs(boxes1, boxes2)
    if i.numel():
        inter = rotated_intersection_area(boxes1[i], boxes2[j])
        out[i, j] = _finish(inter, area1[i], area2[j], mode)
    nan1, nan2 = boxes1.isnan().any(1), boxes2.isnan().any(1)
    if nan1.any() or nan2.any():
        out[nan1] = float("nan")
        out[:, nan2] = float("nan")
    return out


def _half_extents(b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Circumradius and axis-aligned half extents of (N, 5) boxes."""
    cos, sin = torch.cos(b[:, 4]).abs(), torch.sin(b[:, 4]).abs()
    w, h = b[:, 2].abs() * 0.5, b[:, 3].abs() * 0.5
    return torch.sqrt(w * w + h * h), w * cos + h * sin, w * sin + h * cos


def _grow(v: Tensor) -> Tensor:
    """Inclusive margin so float rounding never drops a touching / overlapping pair."""
    return v * (1 + 1e-5) + 1e-3


def _sweep(q: Tensor, t: Tensor, lo: Tensor, hi: Tensor, order: Tensor, labels) -> tuple[list[Tensor], list[Tensor]]:
    """Pairs (query row, target row) for target sorted positions ``[lo, hi)`` per query, filtered by
    the exact necessary conditions (circles and axis-aligned boxes meet, equal labels).
    ``q``/``t`` are (N, 5) = (cx, cy, radius, x half extent, y half extent)."""
    counts = (hi - lo).clamp(min=0)
    ends = torch.cumsum(counts, 0)
    budget, n, s = 1 << 22, counts.shape[0], 0
    ii, jj = [], []
    while s < n:
        base = ends[s - 1] if s > 0 else ends.new_zeros(())
        e = min(max(int(torch.searchsorted(ends, base + budget, right=True)), s + 1), n)
        cnt = counts[s:e]
        rows = torch.repeat_interleave(torch.arange(s, e, device=lo.device), cnt)
        if rows.numel():
            offs = torch.arange(rows.numel(), device=lo.device) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
            cols = order[lo[rows] + offs]
            a, b = q[rows], t[cols]
            d = (a[:, :2] - b[:, :2]).abs()
            lim = _grow(a[:, 2:] + b[:, 2:])  # radius, x and y half extents
            keep = (d * d).sum(1) <= lim[:, 0] * lim[:, 0]
            keep &= (d[:, 0] <= lim[:, 1]) & (d[:, 1] <= lim[:, 2])
            if labels is not None:
                keep &= labels[0][rows] == labels[1][cols]
            ii.append(rows[keep])
            jj.append(cols[keep])
        s = e
    return ii, jj


def candidate_pairs(
    boxes1: Tensor, boxes2: Tensor | None = None, labels1: Tensor | None = None, labels2: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Index pairs ``(i, j)`` that may overlap; every other pair has IoU exactly 0.

    Sweep on the boxes' left edges: a pair whose x-extents meet has one left edge inside the other
    box's x-extent, so ``searchsorted`` on sorted left edges yields every such pair exactly once,
    after which the circumscribed circles and the axis-aligned boxes must meet too (with a small
    inclusive margin for float rounding). Cost ~ the number of x-overlapping pairs, in blocks of
    ~4M, not ``N x M``. ``boxes2=None`` gives the unordered pairs ``i < j`` of ``boxes1`` with itself
    (for NMS). With ``labels1``/``labels2`` only pairs of equal label are returned. NaN fields count
    as 0 in the search (callers give NaN boxes NaN / no suppression themselves).
    """
    dev = boxes1.device
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    self_pairs = boxes2 is None
    if self_pairs:
        boxes2, labels2 = boxes1, labels1
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        return empty, empty
    b1 = torch.nan_to_num(boxes1, nan=0.0)
    b2 = b1 if self_pairs else torch.nan_to_num(boxes2, nan=0.0)
    r1, ex1, ey1 = _half_extents(b1)
    r2, ex2, ey2 = (r1, ex1, ey1) if self_pairs else _half_extents(b2)
    left1, right1 = b1[:, 0] - _grow(ex1), b1[:, 0] + _grow(ex1)
    left2, right2 = b2[:, 0] - _grow(ex2), b2[:, 0] + _grow(ex2)
    q1 = torch.stack([b1[:, 0], b1[:, 1], r1, ex1, ey1], 1)
    q2 = q1 if self_pairs else torch.stack([b2[:, 0], b2[:, 1], r2, ex2, ey2], 1)
    labels = None if labels1 is None or labels2 is None else (labels1, labels2)
    sorted2, order2 = torch.sort(left2, stable=True)
    if self_pairs:  # each unordered pair once: targets after the query in left-edge order
        rank = torch.empty_like(order2)
        rank[order2] = torch.arange(order2.numel(), device=dev)
        lo = rank + 1
        hi = torch.searchsorted(sorted2, right1, right=True)
        ii, jj = _sweep(q1, q2, lo, hi, order2, labels)
        i, j = (torch.cat(ii), torch.cat(jj)) if ii else (empty, empty)
        return torch.minimum(i, j), torch.maximum(i, j)
    # boxes2 whose left edge lies in [left1, right1] ...
    ii, jj = _sweep(q1, q2, torch.searchsorted(sorted2, left1), torch.searchsorted(sorted2, right1, right=True),
                    order2, labels)
    # ... plus boxes1 whose left edge lies in (left2, right2]
    sorted1, order1 = torch.sort(left1, stable=True)
    lab_rev = None if labels is None else (labels[1], labels[0])
    jj2, ii2 = _sweep(q2, q1, torch.searchsorted(sorted1, left2, right=True),
                      torch.searchsorted(sorted1, right2, right=True), order1, lab_rev)
    ii, jj = ii + ii2, jj + jj2
    if not ii:
        return empty, empty
    return torch.cat(ii), torch.cat(jj)


def rbbox_overlaps(bboxes1: Tensor, bboxes2: Tensor, mode: str = "iou", is_aligned: bool = False) -> Tensor:
    """MMRotate's ``rbbox_overlaps``: :func:`box_iou_rotated` after clamping ``w, h >= 1e-3``.

    The clamp turns zero-size boxes into tiny real ones (IoU > 0 with boxes that contain them)
    instead of the reference-exact 0; MMRotate's assigners use this variant, and so does rsvision's
    detector for training-target assignment. Not differentiable (inputs are detached, as there).
    """
    if bboxes1.shape[0] * bboxes2.shape[0] == 0:
        shape = (bboxes1.shape[0], 1) if is_aligned else (bboxes1.shape[0], bboxes2.shape[0])
        return bboxes1.new_zeros(shape)
    b1 = bboxes1.detach().clone()
    b2 = bboxes2.detach().clone()
    b1[:, 2:4] = b1[:, 2:4].clamp(min=1e-3)
    b2[:, 2:4] = b2[:, 2:4].clamp(min=1e-3)
    return box_iou_rotated(b1, b2, mode, aligned=is_aligned)
