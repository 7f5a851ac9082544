"""Whole-scene sliding-window segmentation and change detection: megapixels/s and peak memory.

The dense counterpart of ``bench_predict.py`` (detection), on the same generated ``--size`` x ``--size``
RGB GeoTIFF (``data/bench_scene_<size>.tif``; change detection pairs it with a second scene of another
seed). Each task is an LSKNet-T + UperNet with random weights (``--channels``, default 256, a
published-size UperNet), predicted through the library entry point ``task.predict`` -- lazy window
reads, blended strips, mask GeoTIFF + overview PNG written -- with the fast backbone unless
``--no-fast``. Each task runs in its own child process so that every peak RSS is that task's alone.

    python benchmarks/bench_dense_scene.py --threads 2                 # both tasks, 8000 x 8000
    python benchmarks/bench_dense_scene.py --tasks segment --size 2048 # quick
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path


def _scene(size: int, seed: int) -> Path:
    from rsvision.data.synthetic.objects import make_geotiff_scene

    path = Path(f"data/bench_scene_{size}.tif" if seed == 0 else f"data/bench_scene_{size}_s{seed}.tif")
    if not path.exists():
        make_geotiff_scene(path, size, size, seed=seed, label_path=path.with_suffix(".txt"))
    return path


def run_task(name: str, args: argparse.Namespace, queue) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a = _scene(args.size, 0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = {"backbone": "lsknet_t", "decoder": "upernet", "channels": args.channels, "in_chans": 3}
    data = {"img_size": args.window, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
    sliding = {"size": args.window, "overlap": args.overlap, "batch_size": args.batch_size}
    if name == "segment":
        from rsvision.tasks.segmentation import SegmentationTask

        task = SegmentationTask(model=model, data={**data, "classes": [f"c{i}" for i in range(6)]}, sliding=sliding)
        inputs = [a]
    else:
        from rsvision.tasks.change import ChangeTask

        root = Path(f"data/bench_pair_{args.size}")
        for d, src in (("A", a), ("B", _scene(args.size, 1))):
            (root / d).mkdir(parents=True, exist_ok=True)
            link = root / d / "scene.tif"
            if not link.exists():
                link.symlink_to(src.resolve())
        task = ChangeTask(model=model, data={**data, "classes": ["unchanged", "changed"]}, sliding=sliding)
        inputs = [root]
    task.eval()
    out = Path(args.out) / name  # a rerun replaces its own files (exist_ok), deletes nothing else
    t0 = time.time()
    (res,) = list(task.predict(inputs, out=out, fast=not args.no_fast, exist_ok=True))
    dt = time.time() - t0
    stats = res.get("stats", {})
    mpx = args.size * args.size / 1e6
    queue.put({
        "task": name, "scene_px": [args.size, args.size], "threads": args.threads, "torch": torch.__version__,
        "model": f"lsknet_t + upernet {args.channels} (random weights)", "fast": not args.no_fast,
        "window": args.window, "overlap": args.overlap, "batch_size": args.batch_size,
        "predict_and_write_s": round(dt, 1), "MP_per_s": round(mpx / dt, 4),
        "windows": stats.get("windows"), "windows_skipped": stats.get("windows_skipped"),
        "s_per_window": round(dt / stats["windows"], 3) if stats.get("windows") else None,
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_model_MB": round(rss_before, 1), "files": {k: str(v) for k, v in res["files"].items()},
    })


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["segment", "change"], choices=["segment", "change"])
    ap.add_argument("--size", type=int, default=8000)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None, help="windows per forward (default: the library's, 1 on a CPU)")
    ap.add_argument("--channels", type=int, default=256, help="UperNet width")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-fast", action="store_true")
    ap.add_argument("--out", default="runs/bench_dense_scene")
    args = ap.parse_args(argv)
    from rsvision.runtime import windows_per_forward

    args.batch_size = windows_per_forward(args.batch_size, "cpu")  # reported as used
    ctx = mp.get_context("spawn")
    results = []
    for name in args.tasks:
        q = ctx.Queue()
        p = ctx.Process(target=run_task, args=(name, args, q))
        p.start()
        results.append(q.get())
        p.join()
        print(json.dumps(results[-1], indent=2), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
