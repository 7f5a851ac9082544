"""rsvision rotated detectors (backbones x presets x plain / fast) beside Ultralytics YOLO11-obb, one run.

    python benchmarks/bench_detectors.py                              # 1x3x1024x1024, 2 threads
    python benchmarks/bench_detectors.py --models lsknet_t --presets tiny small published --repeats 5
    python benchmarks/bench_detectors.py --no-yolo --size 512          # without ultralytics

Every detector is built with random weights at its published width for the preset's FPN / FC widths
and proposal counts (``rsvision.tasks.detection.DETECT_PRESETS``) and timed on one window, end to end
(backbone, FPN, RPN, proposals, rotated RoI Align, RoI head, rotated NMS: ``OrientedRCNN.predict``).
Ultralytics (a benchmark-only dependency, never imported by rsvision: ``pip install ultralytics``)
builds YOLO11n-obb / YOLO11s-obb from its YAMLs, fused, and runs ``model.model(x)`` (the network;
its NMS is not included, so the YOLO rows are a lower bound). All callables take turns (each timed call
after an untimed one), medians are shown, FLOPs are counted by torch's FlopCounterMode on the same
input, and GFLOP/s are compared with a 2048^2 fp32 matmul timed in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from bench_backbones import _interleaved, _matmul_gflops  # noqa: E402  (one timing method for every benchmark)


def build_detector(backbone: str, preset: str):
    from rsvision.models import build_model
    from rsvision.tasks.detection import DETECT_PRESETS

    p = DETECT_PRESETS[preset]
    torch.manual_seed(0)
    return build_model({"type": "OrientedRCNN", "backbone": backbone, "num_classes": 15,
                        "fpn_channels": p["fpn_channels"], "fc_channels": p["fc_channels"], "rpn": dict(p["rpn"])}).eval()


def build_yolo(name: str):
    from ultralytics import YOLO

    m = YOLO(f"{name}.yaml").model.eval()
    return m.fuse() if hasattr(m, "fuse") else m


def gflop(fn) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lsknet_t", "lsknet_s", "haksnet_t"])
    ap.add_argument("--presets", nargs="+", default=["published", "small", "tiny"])
    ap.add_argument("--yolo", nargs="+", default=["yolo11n-obb", "yolo11s-obb"])
    ap.add_argument("--no-yolo", action="store_true")
    ap.add_argument("--no-fast", action="store_true", help="Only the plain detectors.")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from rsvision.models.fast import optimize_for_inference
    from rsvision.runtime import kept_memory

    torch.set_num_threads(args.threads)
    x = torch.rand(1, 3, args.size, args.size)
    fns, flops = {}, {}
    for name in args.models:
        for preset in args.presets:
            det = build_detector(name, preset)
            key = f"{name} {preset}"
            fns[f"{key} plain"] = (lambda d: lambda: d.predict(x))(det)
            flops[f"{key} plain"] = gflop(fns[f"{key} plain"])
            if not args.no_fast:
                fast = optimize_for_inference(det)
                fns[f"{key} fast"] = (lambda d: lambda: d.predict(x))(fast)
                flops[f"{key} fast"] = flops[f"{key} plain"]
    if not args.no_yolo:
        try:
            for name in args.yolo:
                y = build_yolo(name)
                fns[name] = (lambda m: lambda: m(x))(y)
                flops[name] = gflop(fns[name])
        except ImportError:
            print("ultralytics is not installed: YOLO rows skipped (pip install ultralytics)")
    load0 = os.getloadavg()[0]
    with torch.inference_mode(), kept_memory():
        matmul, _ = _matmul_gflops()
        times = _interleaved(fns, args.repeats)
    load1 = os.getloadavg()[0]
    print(f"1x3x{args.size}x{args.size}, {args.threads} threads, medians of {args.repeats}; "
          f"load average {load0:.2f} -> {load1:.2f}; 2048^2 matmul {matmul:.0f} GFLOP/s")
    print(f"{'model':34s} {'s / window':>10s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'of matmul':>9s}")
    rows = {}
    for k, (wall, cpu, best) in times.items():
        rows[k] = {"seconds": wall, "cpu_seconds": cpu, "gflop": flops[k], "gflops_per_s": flops[k] / wall}
        print(f"{k:34s} {wall:10.3f} {flops[k]:8.1f} {flops[k] / wall:8.1f} {flops[k] / wall / matmul:9.2f}")
    res = {"size": args.size, "threads": args.threads, "matmul_gflops": matmul, "load": [load0, load1], "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
