"""Speed of rsvision's rotated ops against shapely baselines (CPU, and CUDA when present).

    python benchmarks/bench_rotated_ops.py [--threads 1] [--shapely-rows 250] [--full]
        [--old-proposals 500] [--old-full] [--only nms]

* IoU 2000 x 2000: ``box_iou_rotated`` vs shapely 2 vectorised ``intersection(...).area`` on the same
  pairs, for a sparse scene (boxes spread over a 1024 px image, typical detector output) and a dense
  one (every pair overlaps: worst case for rsvision's circle prefilter). Shapely is timed on the
  first ``--shapely-rows`` rows and scaled linearly to 2000 rows (``--full`` runs them all).
* NMS on 5000 boxes (500 objects x 10 jittered detections) vs a greedy loop that computes each kept
  box's IoU with the remaining boxes with vectorised shapely; the keep lists are checked equal.
* Dense NMS, Oriented R-CNN post-processing: ``multiclass_nms_rotated`` on N class-agnostic
  proposals (centres in 512 x 512, sizes 5-65 px) x 15 classes with near-uniform softmax scores
  (an untrained detector: every class above ``score_thr``), score_thr 0.05, iou_thr 0.1, with
  ``max_num`` 2000 and without. The one-shot all-pairs path (``_nms_all_pairs``, the previous
  implementation) and a shapely greedy loop run on a subsample (``--old-proposals``, keep lists
  checked equal); ``--old-full`` runs the all-pairs path on the full cases too (minutes).
* Sparse NMS: 100,000 boxes of a merged 20000 x 20000 px scene (50,000 objects x 2 detections),
  ``nms_rotated`` and 15-class ``batched_nms_rotated``, block path vs all-pairs path.
* RoIAlignRotated: 2000 rois, 7x7, sampling 2, on a (1, 256, 200, 200) map (absolute time only).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import shapely
import torch

from rsvision.ops import (
    batched_nms_rotated,
    box_iou_rotated,
    multiclass_nms_rotated,
    nms_rotated,
    obb2poly,
    roi_align_rotated,
)
from rsvision.ops.nms import _nms_all_pairs


def random_boxes(n: int, gen: torch.Generator, spread: float, size=(10.0, 100.0)) -> torch.Tensor:
    c = torch.rand(n, 2, generator=gen) * spread
    wh = torch.rand(n, 2, generator=gen) * (size[1] - size[0]) + size[0]
    a = (torch.rand(n, 1, generator=gen) - 0.5) * math.pi
    return torch.cat([c, wh, a], 1)


def to_shapely(boxes: torch.Tensor) -> np.ndarray:
    poly = obb2poly(boxes.double()).view(-1, 4, 2).numpy()
    return shapely.polygons(np.concatenate([poly, poly[:, :1]], axis=1))


def shapely_iou_rows(p1: np.ndarray, p2: np.ndarray, a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(p1[:, None], p2[None, :]))
    return inter / (a1[:, None] + a2[None, :] - inter)


def timeit(fn, repeat: int = 3, sync=None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def bench_iou(name: str, b1: torch.Tensor, b2: torch.Tensor, rows: int, devices) -> None:
    p1, p2 = to_shapely(b1), to_shapely(b2)
    a1 = (b1[:, 2] * b1[:, 3]).double().numpy()
    a2 = (b2[:, 2] * b2[:, 3]).double().numpy()
    rows = min(rows, len(b1))
    t0 = time.perf_counter()
    ref = shapely_iou_rows(p1[:rows], p2, a1[:rows], a2)
    t_shapely = (time.perf_counter() - t0) * len(b1) / rows
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else None
        x1, x2 = b1.to(dev), b2.to(dev)
        box_iou_rotated(x1, x2)  # warm-up
        t = timeit(lambda: box_iou_rotated(x1, x2), sync=sync)
        out = box_iou_rotated(x1, x2).cpu().double().numpy()
        err = np.abs(out[:rows] - ref).max()
        frac = (out > 0).mean()
        print(
            f"IoU {len(b1)}x{len(b2)} {name:6s} [{dev}]: rsvision {t:7.3f} s | shapely {t_shapely:7.2f} s"
            f"{' (scaled from %d rows)' % rows if rows < len(b1) else ''} | speed-up x{t_shapely / t:6.1f}"
            f" | overlapping pairs {frac:.1%} | max |diff| {err:.1e} (float32)"
        )


def shapely_greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float, labels=None) -> list[int]:
    order = torch.sort(scores, descending=True, stable=True).indices.numpy()
    polys = to_shapely(boxes)[order]
    areas = (boxes[:, 2] * boxes[:, 3]).double().numpy()[order]
    lab = None if labels is None else labels.numpy()[order]
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for k in range(len(order)):
        if not alive[k]:
            continue
        keep.append(int(order[k]))
        rest = np.nonzero(alive[k + 1 :])[0] + k + 1
        if lab is not None:
            rest = rest[lab[rest] == lab[k]]
        if rest.size:
            inter = shapely.area(shapely.intersection(polys[k], polys[rest]))
            iou = inter / (areas[k] + areas[rest] - inter)
            alive[rest[iou >= thr]] = False
    return keep


def bench_nms(devices) -> None:
    gen = torch.Generator().manual_seed(1)
    objs = random_boxes(500, gen, 2048.0)
    boxes = objs.repeat_interleave(10, 0)
    boxes = boxes + torch.randn(boxes.shape, generator=gen) * torch.tensor([3.0, 3.0, 3.0, 3.0, 0.05])
    scores = torch.rand(len(boxes), generator=gen)
    for thr in (0.1, 0.5):
        t0 = time.perf_counter()
        ref = shapely_greedy_nms(boxes, scores, thr)
        t_shapely = time.perf_counter() - t0
        for dev in devices:
            sync = torch.cuda.synchronize if dev == "cuda" else None
            b, s = boxes.to(dev), scores.to(dev)
            nms_rotated(b, s, thr)
            t = timeit(lambda: nms_rotated(b, s, thr), sync=sync)
            keep = nms_rotated(b, s, thr).cpu().tolist()
            print(
                f"NMS {len(boxes)} boxes thr {thr} [{dev}]: rsvision {t:7.3f} s | shapely greedy {t_shapely:7.2f} s"
                f" | speed-up x{t_shapely / t:6.1f} | kept {len(keep)} | same keep list: {keep == ref}"
            )


def dense_proposals(n: int, num_classes: int, seed: int = 0):
    """Class-agnostic boxes in 512 x 512 with near-uniform softmax scores (untrained detector)."""
    gen = torch.Generator().manual_seed(seed)
    boxes = random_boxes(n, gen, 512.0, size=(5.0, 65.0))
    scores = torch.softmax(torch.randn(n, num_classes + 1, generator=gen) * 0.1, 1)
    return boxes, scores


def candidates(boxes: torch.Tensor, scores: torch.Tensor, score_thr: float):
    """The (box, score, label) candidates multiclass_nms_rotated runs batched NMS on."""
    c = scores.shape[1] - 1
    flat = scores[:, :-1].reshape(-1)
    inds = (flat > score_thr).nonzero().squeeze(1)
    return boxes[inds // c], flat[inds], inds % c


def bench_nms_dense(devices, old_proposals: int, old_full: bool) -> None:
    c, score_thr, iou_thr = 15, 0.05, 0.1
    for n in (2000, 10000):
        boxes, scores = dense_proposals(n, c)
        cb, cs, cl = candidates(boxes, scores, score_thr)
        for dev in devices:
            sync = torch.cuda.synchronize if dev == "cuda" else None
            b, s = boxes.to(dev), scores.to(dev)
            for max_num in (2000, -1):
                multiclass_nms_rotated(b, s, score_thr, iou_thr, max_num)
                t = timeit(lambda: multiclass_nms_rotated(b, s, score_thr, iou_thr, max_num), repeat=2, sync=sync)
                kept = len(multiclass_nms_rotated(b, s, score_thr, iou_thr, max_num)[0])
                print(f"multiclass NMS dense {n} x {c} ({len(cs)} candidates) max_num {max_num:5d} [{dev}]: "
                      f"rsvision {t:7.3f} s | kept {kept}")
        if old_full:
            t0 = time.perf_counter()
            ref = _nms_all_pairs(cb, cs, iou_thr, cl)
            t_old = time.perf_counter() - t0
            new = batched_nms_rotated(cb, cs, cl, iou_thr)
            print(f"  all-pairs path on all {len(cs)} candidates: {t_old:7.2f} s"
                  f" | same keep list: {torch.equal(ref, new)}")
    # side by side on a subsample: block path, all-pairs path, shapely greedy loop
    boxes, scores = dense_proposals(old_proposals, c, seed=1)
    cb, cs, cl = candidates(boxes, scores, score_thr)
    t_new = timeit(lambda: batched_nms_rotated(cb, cs, cl, iou_thr))
    new = batched_nms_rotated(cb, cs, cl, iou_thr)
    t0 = time.perf_counter()
    old = _nms_all_pairs(cb, cs, iou_thr, cl)
    t_old = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = shapely_greedy_nms(cb, cs, iou_thr, cl)
    t_shapely = time.perf_counter() - t0
    print(f"batched NMS dense {old_proposals} x {c} ({len(cs)} candidates, no max_num) [cpu]: rsvision {t_new:7.3f} s"
          f" | all-pairs path {t_old:7.2f} s | shapely greedy {t_shapely:7.2f} s | kept {len(new)}"
          f" | same keep lists: {new.tolist() == old.tolist() == ref}")


def bench_nms_sparse(devices) -> None:
    gen = torch.Generator().manual_seed(3)
    objs = random_boxes(50000, gen, 20000.0, size=(10.0, 60.0))
    boxes = objs.repeat_interleave(2, 0)
    boxes = boxes + torch.randn(boxes.shape, generator=gen) * torch.tensor([2.0, 2.0, 2.0, 2.0, 0.05])
    scores = torch.rand(len(boxes), generator=gen)
    labels = torch.randint(0, 15, (50000,), generator=gen).repeat_interleave(2)
    for lab in (None, labels):
        name = "nms_rotated" if lab is None else "batched_nms_rotated (15 classes)"
        for dev in devices:
            sync = torch.cuda.synchronize if dev == "cuda" else None
            b, s, la = boxes.to(dev), scores.to(dev), None if lab is None else lab.to(dev)
            fn = (lambda: nms_rotated(b, s, 0.1)) if lab is None else (lambda: batched_nms_rotated(b, s, la, 0.1))
            t = timeit(fn, repeat=2, sync=sync)
            keep = fn()
            t0 = time.perf_counter()
            old = _nms_all_pairs(b, s, 0.1, la)
            if sync:
                sync()
            t_old = time.perf_counter() - t0
            print(f"{name} sparse {len(boxes)} boxes [{dev}]: rsvision {t:7.3f} s | all-pairs path {t_old:7.2f} s"
                  f" | kept {len(keep)} | same keep list: {torch.equal(keep, old)}")


def bench_roi_align(devices) -> None:
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(1, 256, 200, 200, generator=gen)
    boxes = random_boxes(2000, gen, 800.0, size=(16.0, 200.0))
    rois = torch.cat([torch.zeros(2000, 1), boxes], 1)
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else None
        f, r = feats.to(dev), rois.to(dev)
        t = timeit(lambda: roi_align_rotated(f, r, 7, 0.25, 2, True, True), repeat=2, sync=sync)
        print(f"RoIAlignRotated 2000 rois x 256 ch, 7x7, sr 2 [{dev}]: {t:.3f} s forward")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapely-rows", type=int, default=250)
    ap.add_argument("--full", action="store_true", help="time shapely on all 2000 rows")
    ap.add_argument("--old-proposals", type=int, default=500, help="proposals of the dense side-by-side subsample")
    ap.add_argument("--old-full", action="store_true", help="all-pairs NMS path on the full dense cases (minutes)")
    ap.add_argument("--only", choices=["iou", "nms", "roi"], help="run one group of benchmarks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, shapely {shapely.__version__}, threads {args.threads}, devices {devices}")
    rows = 2000 if args.full else args.shapely_rows
    if args.only in (None, "iou"):
        gen = torch.Generator().manual_seed(0)
        bench_iou("sparse", random_boxes(2000, gen, 1024.0), random_boxes(2000, gen, 1024.0), rows, devices)
        dense = (random_boxes(2000, gen, 20.0, (60, 200)), random_boxes(2000, gen, 20.0, (60, 200)))
        bench_iou("dense", *dense, rows, devices)
    if args.only in (None, "nms"):
        bench_nms(devices)
        bench_nms_dense(devices, args.old_proposals, args.old_full)
        bench_nms_sparse(devices)
    if args.only in (None, "roi"):
        bench_roi_align(devices)


if __name__ == "__main__":
    main()
