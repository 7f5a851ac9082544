"""Greedy rotated NMS with mmcv ``nms_rotated`` semantics, fast on sparse and on dense input.

Semantics: a box is suppressed by a higher-ranked *kept* box when ``IoU >= threshold`` (inclusive,
as mmcv); results are indices into the input in decreasing score order, ties broken by input order
(stable sort); identical to mmcv's CPU kernel whenever no pairwise IoU sits at the threshold. A box
with a NaN or infinite field never suppresses and is never suppressed (its IoUs are NaN).

Algorithm (exact, block-sequential): the ranked boxes are taken in blocks of consecutive ranks.
Every live box of a block has already been tested against all boxes kept before the block (whose
decisions are final: a later box cannot change them), so the block is resolved among itself: exact
IoU of its possibly overlapping pairs (:func:`~rsvision.ops.iou.candidate_pairs`, then an
upper-bound filter) in one batched call and a greedy walk over the sparse "i suppresses j" edges;
the boxes it keeps then suppress the later boxes right away. A box is thus tested only against
nearby boxes that are *kept* while it is alive: dense candidates (Oriented R-CNN's 2000 proposals
x 15 classes) cost ~(boxes x nearby kept boxes) exact IoUs instead of all overlapping pairs, and
``max_num`` stops at the block where that many boxes are kept (later boxes are only looked at up
to a horizon that grows 4x when needed). Blocks grow while the wasted in-block work (pairs whose
suppressor is itself suppressed) stays small, so a sparse scene takes a handful of blocks. The
overlap search runs on float64 copies in which every (class, y strip) has its own stretch of the
x axis: only same-class pairs in the same or adjacent strips are ever enumerated.

Every pair's IoU comes from the same kernel, argument order (higher rank first) and upper bound as
in the one-shot all-pairs pass (:func:`_nms_all_pairs`, the previous implementation, kept for
tests and benchmarks), so the keep lists are equal. The one exception is an IoU within a last-bit
rounding of the threshold: :func:`~rsvision.ops.iou.rotated_intersection_area` can round the last
bit of a pair differently depending on the batch it comes in (its polygons get as many vertex
slots as the batch's largest), and the two paths batch pairs differently.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .iou import _finish, _half_extents, candidate_pairs, rotated_intersection_area

__all__ = ["nms_rotated", "batched_nms_rotated", "multiclass_nms_rotated"]

_BLOCK = 256  # ranks in the first block
_WASTE = 1 << 15  # in-block exact-IoU pairs of suppressed suppressors tolerated per block (~40 ms)
_Geo = tuple  # (boxes, areas, x half extents, y half extents), all in rank order


def _geometry(b: Tensor) -> _Geo:
    _, ex, ey = _half_extents(b)
    return b, b[:, 2] * b[:, 3], ex, ey


def _bound_ok(geo: _Geo, i: Tensor, j: Tensor, thr: float) -> Tensor:
    """Pairs whose IoU upper bound (intersection <= overlap of the axis-aligned boxes and <= the
    smaller area) can reach ``thr``: neighbours that merely touch skip the exact kernel."""
    b, area, ex, ey = geo
    ox = torch.minimum(b[i, 0] + ex[i], b[j, 0] + ex[j]) - torch.maximum(b[i, 0] - ex[i], b[j, 0] - ex[j])
    oy = torch.minimum(b[i, 1] + ey[i], b[j, 1] + ey[j]) - torch.maximum(b[i, 1] - ey[i], b[j, 1] - ey[j])
    bound = torch.minimum(ox.clamp(min=0) * oy.clamp(min=0), torch.minimum(area[i], area[j]))
    ub = bound / (area[i] + area[j] - bound)
    return ~(ub * (1 + 1e-4) + 1e-6 < thr)  # margin for float rounding; NaN stays in


def _iou_hit(geo: _Geo, i: Tensor, j: Tensor, thr: float) -> Tensor:
    """``IoU(b[i], b[j]) >= thr`` with the exact kernel (higher-ranked box first)."""
    b, area = geo[0], geo[1]
    return _finish(rotated_intersection_area(b[i], b[j]), area[i], area[j], "iou") >= thr


def _walk(m: int, i: Tensor, j: Tensor) -> np.ndarray:
    """Greedy pass over ``m`` ranked boxes and suppression edges ``i -> j`` (``i < j``): kept positions.

    Only sources matter: a source's fate is sealed by the earlier sources, the others are kept
    when no kept source removed them.
    """
    removed = np.zeros(m, dtype=bool)
    if i.numel():
        i_np, j_np = i.cpu().numpy(), j.cpu().numpy()
        sort = np.argsort(i_np, kind="stable")
        i_np, j_np = i_np[sort], j_np[sort]
        src, starts = np.unique(i_np, return_index=True)
        ends = np.append(starts[1:], len(i_np))
        for s, a, e in zip(src.tolist(), starts.tolist(), ends.tolist()):
            if not removed[s]:
                removed[j_np[a:e]] = True
    return np.flatnonzero(~removed)


def _search_boxes(b: Tensor, lab: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Boxes for the overlap search only, ``(k0, k1)``: the x-sweep of
    :func:`~rsvision.ops.iou.candidate_pairs` made two-dimensional and per class.

    Each (class, y strip) gets its own stretch of the x axis (float64, far inside the search's
    1e-3 margin), strips at least as tall as any two boxes' y extents, so only pairs of one class
    in the same or adjacent strips are ever enumerated: ``k0`` shifts a box by its own key, ``k1``
    by its key minus one (a box of ``k0`` meets one of ``k1`` only if the latter is one strip
    higher). ``k1`` is None when there are too few strips to gain anything.
    """
    if b.device.type == "mps" or b.shape[0] == 0:
        return b, None
    s = b.to(torch.float64, copy=True)
    _, ex, ey = _half_extents(s)
    ok = torch.isfinite(s).all(1)
    if not bool(ok.any()):
        return b, None
    xlo, xhi = float((s[ok, 0] - ex[ok]).min()), float((s[ok, 0] + ex[ok]).max())
    ylo, yhi = float((s[ok, 1] - ey[ok]).min()), float((s[ok, 1] + ey[ok]).max())
    span = (xhi - xlo) * (1 + 1e-3) + 16.0
    strip_h = 2 * float(ey[ok].max()) * (1 + 1e-3) + 1e-2  # >= any grown y overlap distance
    n_strips = int((yhi - ylo) / strip_h) + 1
    if n_strips < 3 and lab is None:
        return b, None
    key = torch.zeros(len(s), dtype=torch.float64, device=s.device)
    if n_strips >= 3:
        strip = torch.floor((s[:, 1] - ylo) / strip_h).clamp(0, n_strips - 1)
        key = torch.where(ok, strip, key)
    else:
        n_strips = 1
    if lab is not None:  # a spare strip per class keeps "key - 1" inside the class's stretch
        key = key + torch.unique(lab, return_inverse=True)[1].to(torch.float64) * (n_strips + 1)
    if (float(key.max()) + 2) * span > 1e12:  # too far apart for the margin: plain boxes + label filter
        return b, None
    k0 = s.clone()
    k0[:, 0] += key * span
    if n_strips < 3:
        return k0, None
    s[:, 0] += (key - 1) * span
    return k0, s


def _pairs(srch: tuple, lab: Tensor | None, a: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Possibly overlapping pairs among the ranks ``a`` (``i < j``, local) or between ``a`` and ``c``."""
    k0, k1 = srch
    la = lab[a] if lab is not None else None
    if c is None:
        i, j = candidate_pairs(k0[a], None, la, la)
        if k1 is not None:
            i2, j2 = candidate_pairs(k0[a], k1[a], la, la)
            i, j = torch.cat([i, torch.minimum(i2, j2)]), torch.cat([j, torch.maximum(i2, j2)])
        return i, j
    lc = lab[c] if lab is not None else None
    parts = [candidate_pairs(k0[a], k0[c], la, lc)]
    if k1 is not None:
        parts += [candidate_pairs(k0[a], k1[c], la, lc), candidate_pairs(k1[a], k0[c], la, lc)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _kill(geo: _Geo, srch: tuple, lab: Tensor | None, live: Tensor, a: Tensor, c: Tensor, thr: float) -> None:
    """Suppress the candidates ``c`` (ranks) hit by the kept boxes ``a`` (ranks, all ``< c``)."""
    if a.numel() == 0 or c.numel() == 0:
        return
    i, j = _pairs(srch, lab, a, c)
    i, j = a[i], c[j]
    m = _bound_ok(geo, i, j, thr)
    i, j = i[m], j[m]
    if j.numel():
        live[j[_iou_hit(geo, i, j, thr)]] = False


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None, limit: int = -1) -> Tensor:
    n = boxes.shape[0]
    dev = boxes.device
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    if n == 0:
        return empty
    order = torch.sort(scores, descending=True, stable=True).indices
    if iou_threshold <= 0:
        return _nms_all_pairs(boxes, scores, iou_threshold, idxs, order)[: limit if limit > 0 else None]
    thr = iou_threshold
    b = boxes[order]
    lab = idxs[order] if idxs is not None else None
    geo = _geometry(b)
    srch = _search_boxes(b, lab)
    finite = torch.isfinite(b).all(1)
    live = finite.clone()  # finite boxes not suppressed yet; the others are always kept (NaN IoUs)
    kept, kept_f = [], []  # all kept ranks / finite ones, per block
    n_kept = 0
    # horizon: boxes beyond it have not been tested against the kept boxes yet (only with max_num)
    horizon = n if limit <= 0 else min(n, max(4 * limit, 4 * _BLOCK))
    pos, size = 0, _BLOCK
    while pos < n and (limit <= 0 or n_kept < limit):
        if pos >= horizon:  # test the next stretch against everything kept so far
            new_h = min(n, 4 * horizon)
            ext = horizon + live[horizon:new_h].nonzero().squeeze(1)
            _kill(geo, srch, lab, live, torch.cat(kept_f), ext, thr)
            horizon = new_h
        end = min(horizon, pos + size)
        # the block's live boxes were already tested against all earlier kept boxes: resolve them
        # among themselves (local indices follow rank order)
        cand = pos + live[pos:end].nonzero().squeeze(1)
        i, j = _pairs(srch, lab, cand)
        m = _bound_ok(geo, cand[i], cand[j], thr)
        i, j = i[m], j[m]
        hit = _iou_hit(geo, cand[i], cand[j], thr) if i.numel() else m[:0]
        keep_local = _walk(cand.numel(), i[hit], j[hit])
        new = cand[torch.as_tensor(keep_local, dtype=torch.long, device=dev)]
        bad = pos + (~finite[pos:end]).nonzero().squeeze(1)
        kept.append(torch.sort(torch.cat([new, bad])).values if bad.numel() else new)
        kept_f.append(new)
        n_kept += kept[-1].numel()
        # the new kept boxes suppress the rest of the horizon right away, so a box is tested
        # against kept boxes only while it is alive
        _kill(geo, srch, lab, live, new, end + live[end:horizon].nonzero().squeeze(1), thr)
        # next block size: grow while few in-block pairs belong to suppressed suppressors
        is_kept = np.zeros(cand.numel() + 1, dtype=bool)
        is_kept[keep_local] = True
        waste = int((~is_kept[i.cpu().numpy()]).sum()) if i.numel() else 0
        if waste > _WASTE:
            size = max(size // 2, 32)
        else:  # waste grows ~quadratically with the block: f * f * waste <= _WASTE
            f = 8
            while f > 1 and f * f * waste > _WASTE:
                f //= 2
            size *= f
        pos = end
    keep = torch.cat(kept) if kept else empty
    if limit > 0:
        keep = keep[:limit]
    return order[keep]


def _nms_all_pairs(
    boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None, order: Tensor | None = None
) -> Tensor:
    """One-shot reference path: exact IoU of *all* possibly overlapping pairs, then one greedy walk.

    Fast when few pairs overlap, ~all-pairs on dense input; kept to cross-check :func:`_nms` and to
    benchmark against it.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if order is None:
        order = torch.sort(scores, descending=True, stable=True).indices
    if iou_threshold <= 0:  # every pair has IoU >= 0: only the best box (per class) survives
        if idxs is None:
            return order[:1]
        seen: dict = {}
        keep = [k for k, c in enumerate(idxs[order].tolist()) if seen.setdefault(c, k) == k]
        return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]
    b = boxes[order]
    lab = idxs[order] if idxs is not None else None
    geo = _geometry(b)
    i, j = candidate_pairs(b, None, lab, lab)  # unordered pairs, i < j (i ranks higher)
    if i.numel():
        m = _bound_ok(geo, i, j, iou_threshold)
        i, j = i[m], j[m]
        hit = _iou_hit(geo, i, j, iou_threshold)
        i, j = i[hit], j[hit]
    keep = _walk(n, i, j)
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float, *, max_num: int = -1) -> Tensor:
    """Greedy NMS of rotated boxes (the ``torchvision.ops.nms`` interface).

    Args:
        boxes: ``(N, 5)`` boxes ``(cx, cy, w, h, a)``.
        scores: ``(N,)`` scores.
        iou_threshold: a box is suppressed by a higher-scoring kept box when ``IoU >= iou_threshold``.
        max_num: stop once this many boxes are kept (``-1``: all); equals truncating the full result.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, in decreasing score order.
    """
    return _nms(boxes, scores, float(iou_threshold), None, int(max_num))


def batched_nms_rotated(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *, max_num: int = -1
) -> Tensor:
    """Per-category NMS: boxes with different ``idxs`` never suppress each other.

    Equivalent to MMRotate's centre-shift trick, but exact (no float32 precision lost to huge
    offsets: the shift only steers the float64 overlap search, IoUs use the boxes as given).
    Returns ``(K,)`` int64 indices in decreasing score order over all categories, at most
    ``max_num`` of them when ``max_num > 0`` (the first ``max_num`` of the full result).
    """
    return _nms(boxes, scores, float(iou_threshold), idxs, int(max_num))


def multiclass_nms_rotated(
    multi_bboxes: Tensor,
    multi_scores: Tensor,
    score_thr: float,
    iou_thr: float,
    max_num: int = -1,
    score_factors: Tensor | None = None,
    return_inds: bool = False,
):
    """MMRotate's ``multiclass_nms_rotated``.

    Args:
        multi_bboxes: ``(N, 5)`` class-agnostic or ``(N, 5 * C)`` per-class boxes.
        multi_scores: ``(N, C + 1)`` scores, background in the **last** column (ignored).
        score_thr: keep (box, class) candidates with score ``> score_thr`` (strict).
        iou_thr: rotated NMS threshold (suppress at ``IoU >= iou_thr``), per class.
        max_num: keep at most this many detections (``-1``: all); NMS stops once that many are kept.
        score_factors: optional ``(N,)`` factors multiplied into the scores after thresholding.
        return_inds: also return the candidate index ``row * C + class`` of each detection.

    Returns:
        ``dets (K, 6)`` = ``(cx, cy, w, h, a, score)`` in decreasing score order, ``labels (K,)``
        (and ``inds (K,)`` when ``return_inds``).
    """
    num_classes = multi_scores.shape[1] - 1
    n = multi_scores.shape[0]
    if multi_bboxes.shape[1] > 5:
        bboxes = multi_bboxes.view(n, -1, 5)
    else:
        bboxes = multi_bboxes[:, None].expand(n, num_classes, 5)
    scores = multi_scores[:, :-1]
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
    bboxes = bboxes.reshape(-1, 5)
    scores = scores.reshape(-1)
    labels = labels.reshape(-1)
    valid = scores > score_thr
    if score_factors is not None:
        factors = score_factors.view(-1, 1).expand(n, num_classes).reshape(-1)
        scores = scores * factors
    inds = valid.nonzero(as_tuple=False).squeeze(1)
    bboxes, scores, labels = bboxes[inds], scores[inds], labels[inds]
    keep = batched_nms_rotated(bboxes, scores, labels, iou_thr, max_num=max_num)
    dets = torch.cat([bboxes[keep], scores[keep, None]], dim=1)
    if return_inds:
        return dets, labels[keep], inds[keep]
    return dets, labels[keep]
