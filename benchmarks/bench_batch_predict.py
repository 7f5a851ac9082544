"""Scenes per hour of ``predict_many`` (Dask LocalCluster) for 1 vs 2 (or more) worker processes.

Generates ``--scenes`` RGB GeoTIFFs of ``--size`` px (UTM, different CRSs in turn) once, saves an
LSKNet-T Oriented R-CNN checkpoint (published widths FPN 256 / FC 1024 unless ``--tiny``; random
weights unless ``--checkpoint``), then for each worker count runs
:func:`rsvision.tasks.batch.predict_many` into a fresh folder and reports:

- ``scenes_per_hour``: scenes / wall time of the whole call (cluster start, one model load per
  worker, every scene, the merged GeoParquet), what a user waits for;
- ``steady_scenes_per_hour``: from the scenes' own seconds (manifests) spread over the workers,
  i.e. without the start-up, what a long archive run approaches.

Each worker runs torch with cores // N threads, so the comparison is N processes x (cores / N)
threads against 1 x cores threads. Numbers depend on the machine being otherwise idle.

    python benchmarks/bench_batch_predict.py --workers 1 2 --scenes 8 --size 1024
    python benchmarks/bench_batch_predict.py --device cuda --workers 1 2   # when a GPU is lent
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

CRSS = ("EPSG:32632", "EPSG:32633", "EPSG:32631")


def make_scenes(folder: Path, n: int, size: int) -> list[Path]:
    from rsvision.data.synthetic.objects import make_geotiff_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"scene{i:03d}.tif"
        if not p.exists():
            make_geotiff_scene(p, size, size, seed=i, crs=CRSS[i % len(CRSS)])
        paths.append(p)
    return paths


def make_checkpoint(path: Path, tiny: bool) -> Path:
    import torch

    from rsvision.tasks.detection import DetectionTask

    if not path.exists():
        torch.manual_seed(0)
        fpn, fc = (16, 32) if tiny else (256, 1024)
        task = DetectionTask(model={"type": "OrientedRCNN", "backbone": "lsknet_t", "fpn_channels": fpn,
                                    "fc_channels": fc}, data={"class_names": ["plane", "ship"], "img_size": 1024})
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--tiny", action="store_true", help="reduced widths (FPN 16 / FC 32): a quick smoke run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default="data/bench_batch", help="scenes and checkpoint are made here once")
    ap.add_argument("--out", default="runs/bench_batch_predict")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from rsvision.tasks.batch import predict_many

    data = Path(args.data)
    scenes = make_scenes(data / f"scenes_{args.size}", args.scenes, args.size)
    ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(
        data / ("det_tiny.ckpt" if args.tiny else "det.ckpt"), args.tiny)
    rows = []
    for n in args.workers:
        out = Path(args.out) / f"workers_{n}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        res = predict_many(ckpt, scenes, out, cluster=f"local:{n}", device=args.device, png=False)
        wall = time.time() - t0
        busy = sum(m["seconds"] for m in res.done)
        row = {"workers": n, "threads_per_worker": max(1, (os.cpu_count() or 1) // n), "scenes": len(res.done),
               "failed": len(res.failed), "wall_s": round(wall, 2),
               "scenes_per_hour": round(3600 * len(res.done) / wall, 1),
               "steady_scenes_per_hour": round(3600 * len(res.done) / max(busy / n, 1e-9), 1),
               "mean_s_per_scene": round(busy / max(len(res.done), 1), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"size": args.size, "cores": os.cpu_count(), "device": args.device, "tiny": args.tiny, "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
