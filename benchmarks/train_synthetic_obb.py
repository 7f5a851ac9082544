"""Train a small LSKNet-T Oriented R-CNN on synthetic oriented objects; evaluate on a separate test split.

Generates ``train`` (seed 0), ``val`` (seed 2) and ``test`` (seed 1) DOTA-format splits of the
synthetic ship / vehicle / tank data, trains with ``configs/synthetic_obb_lsknet_t.yaml`` within a
wall-clock budget, then scores the best checkpoint on the *test* split with the same whole-image
DOTA evaluation as ``rsvision detect eval``. Prints (and writes ``result.json``) mAP@0.5 (VOC07),
per-class AP and wall times. Target: mAP >= 0.7 within 20 minutes on 2 CPU cores.

    python benchmarks/train_synthetic_obb.py --minutes 20   # 1 compute thread + 1 data worker = 2 cores
    python benchmarks/train_synthetic_obb.py --preset small --epochs 6 --minutes 600   # presets at equal epochs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "synthetic_obb_lsknet_t.yaml"))
    ap.add_argument("--data", default="data/synthetic_obb", help="where the splits are generated")
    ap.add_argument("--out", default="runs/bench_synthetic_obb")
    ap.add_argument("--train-images", type=int, default=400)
    ap.add_argument("--val-images", type=int, default=16)
    ap.add_argument("--test-images", type=int, default=60)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget (wall clock)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="compute threads (a data worker uses another core)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default=None, choices=("tiny", "small", "published"),
                    help="detector widths and proposal counts of this preset (default: the config's own)")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="config override key=value")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from rsvision.config import load_config, parse_set
    from rsvision.data.synthetic.objects import make_dota_dataset
    from rsvision.tasks import evaluate, load_task, train
    from rsvision.tasks.detection import DetectConfig

    data = Path(args.data)
    t0 = time.time()
    for split, seed, n in (("train", 0, args.train_images), ("val", 2, args.val_images), ("test", 1, args.test_images)):
        d = data / split
        if not (d / "images").is_dir() or len(list((d / "images").glob("*.png"))) != n:
            make_dota_dataset(d, n, args.size, seed=seed)
    t_gen = time.time() - t0
    overrides = {"data.root": str(data), "trainer.out": args.out, "trainer.max_time": args.minutes,
                 "trainer.threads": args.threads, "trainer.device": args.device, "data.img_size": args.size,
                 "trainer.progress": "none" if not sys.stdout.isatty() else "rich"}
    if args.epochs:
        overrides["trainer.max_epochs"] = args.epochs
    if args.preset:  # the config sets widths explicitly (explicit values win over a preset): replace them
        from rsvision.tasks.detection import DETECT_PRESETS

        p = DETECT_PRESETS[args.preset]
        overrides.update({"model.preset": args.preset, "model.fpn_channels": p["fpn_channels"],
                          "model.fc_channels": p["fc_channels"], "model.kwargs.rpn": dict(p["rpn"])})
    overrides.update(parse_set(args.set_))
    cfg = load_config(args.config, DetectConfig, overrides)
    t1 = time.time()
    result = train(cfg)
    best = str(result.best) if result.best else None
    t_train = time.time() - t1
    task = load_task(result.checkpoint)
    t2 = time.time()
    res = evaluate(task, data / "test", dets=Path(args.out) / "test_dets", batch_size=4, iou_thr=0.5, metric="voc07")
    t_eval = time.time() - t2
    out = {"benchmark": "train_synthetic_obb", "preset": args.preset, "mAP@0.5": res["mAP"], "AP": res["AP"], "num_gt": res["num_gt"],
           "train_images": args.train_images, "test_images": args.test_images, "size": args.size,
           "threads": args.threads, "device": args.device, "epochs_done": torch.load(best, weights_only=True)["epoch"] + 1
           if best else None, "wall_s": {"generate": round(t_gen, 1), "train": round(t_train, 1), "eval": round(t_eval, 1)},
           "best_checkpoint": best, "target": "mAP >= 0.7 within 20 min on 2 CPU cores"}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
