"""Python = CLI speed: ``predict_scene`` called from plain Python vs. in a process set up as the CLI.

Each variant runs in its own fresh interpreter (the allocator setting is process-wide), interleaved,
``--reps`` times, on the same generated 2048 x 2048 GeoTIFF with a published-width LSKNet-T Oriented
R-CNN (FPN 256, FC 1024, random weights), ``--windows`` 1024 px windows, ``--threads`` threads:

- ``cli``: ``keep_freed_memory()`` applied at start, as the ``rsvision`` command does;
- ``python``: a plain Python caller (library entry points keep freed memory for the call);
- ``python+system``: the same with ``RSVISION_MALLOC=system`` (glibc's defaults: the opt-out, and what
  a Python caller got before the entry points kept memory).

The plain and fast (``optimize_for_inference``) detectors are both timed. Prints medians (s) and
ratios to ``cli``; the goal is ``python`` within 10% of ``cli``.

    python benchmarks/bench_python_vs_cli.py --reps 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, time
mode, scene, windows, threads, fast = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
import torch
torch.set_num_threads(threads)
if mode == "cli":
    from rsvision.runtime import keep_freed_memory
    keep_freed_memory()
import rsvision.models.detectors  # noqa: F401
from rsvision.models import build_model
from rsvision.models.fast import optimize_for_inference
from rsvision.tasks.predict_scene import predict_scene
torch.manual_seed(0)
model = build_model({"type": "OrientedRCNN", "backbone": "lsknet_t", "num_classes": 15}).eval()
if fast:
    model = optimize_for_inference(model)
kw = dict(window=1024, overlap=200, batch_size=1, max_windows=windows)
predict_scene(model, scene, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], [str(i) for i in range(15)],
              **{**kw, "max_windows": 1})  # warm-up window
t0 = time.perf_counter()
predict_scene(model, scene, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], [str(i) for i in range(15)], **kw)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    tmp = Path(tempfile.mkdtemp(prefix="rsv-bench-"))
    scene = tmp / "scene.tif"
    arr = (np.random.default_rng(0).random((3, 2048, 2048)) * 255).astype(np.uint8)
    with rasterio.open(scene, "w", driver="GTiff", width=2048, height=2048, count=3, dtype="uint8",
                       crs="EPSG:32632", transform=from_origin(500000, 5000000, 0.5, 0.5), tiled=True) as ds:
        ds.write(arr)
    variants = {"cli": {}, "python": {}, "python+system": {"RSVISION_MALLOC": "system"}}
    times: dict[str, list[float]] = {f"{v}/{p}": [] for v in variants for p in ("plain", "fast")}
    for _ in range(args.reps):  # interleaved: machine drift hits every variant alike
        for v, env in variants.items():
            for path in ("plain", "fast"):
                mode = "cli" if v == "cli" else "python"
                r = subprocess.run([sys.executable, "-c", CHILD, mode, str(scene), str(args.windows), str(args.threads),
                                    "1" if path == "fast" else "0"], capture_output=True, text=True,
                                   env={**os.environ, **env, "OMP_NUM_THREADS": str(args.threads)}, check=True)
                times[f"{v}/{path}"].append(json.loads(r.stdout.strip().splitlines()[-1])["seconds"])
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"benchmark": "python_vs_cli", "windows": args.windows, "threads": args.threads, "reps": args.reps,
           "median_s": {k: round(v, 3) for k, v in med.items()},
           "ratio_to_cli": {k: round(v / med[f"cli/{k.split('/')[1]}"], 3) for k, v in med.items()},
           "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()}}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
