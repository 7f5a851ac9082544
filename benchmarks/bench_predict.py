"""Whole-scene prediction throughput (megapixels/s) and peak memory on a generated GeoTIFF.

Writes a synthetic ``--size`` x ``--size`` RGB GeoTIFF (UTM, 0.5 m; default 8000 x 8000) once,
then runs :func:`rsvision.tasks.predict_scene.predict_scene` over it with an LSKNet-T Oriented
R-CNN (``--preset``, default the published widths FPN 256 / FC 1024; random weights unless ``--checkpoint``): 1024 px windows,
200 px overlap, batched, per-class rotated NMS merge, Task1 + GeoJSON + PNG written.

Reports wall time, MP/s, peak resident memory (process high-water mark, so it includes the
model and torch itself) and, on CUDA, peak GPU memory. The raster itself is never loaded whole:
compare the peak with the raster's uncompressed size printed beside it.

    python benchmarks/bench_predict.py --threads 2            # CPU
    python benchmarks/bench_predict.py --device cuda          # when a GPU is available
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8000)
    ap.add_argument("--scene", default=None, help="GeoTIFF path (default: data/bench_scene_<size>.tif, generated)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=None, help="windows per forward (default: the library's, 1 on a CPU)")
    ap.add_argument("--preset", default="published", help="detector preset (rsvision.tasks.detection.DETECT_PRESETS)")
    ap.add_argument("--fpn", type=int, default=None, help="FPN width (default: the preset's)")
    ap.add_argument("--fc", type=int, default=None, help="RoI-head FC width (default: the preset's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/bench_predict")
    ap.add_argument("--no-fast", action="store_true", help="plain model (default: optimize_for_inference, as predict)")
    ap.add_argument("--max-windows", type=int, default=None,
                    help="time only the first N windows (throughput extrapolated to the scene)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from rsvision.runtime import windows_per_forward

    args.batch_size = windows_per_forward(args.batch_size, args.device)  # reported as used
    from rsvision.data.synthetic.objects import make_geotiff_scene
    from rsvision.tasks.predict_scene import predict_scene, write_scene_outputs

    scene = Path(args.scene or f"data/bench_scene_{args.size}.tif")
    t0 = time.time()
    if not scene.exists():
        make_geotiff_scene(scene, args.size, args.size, seed=0, label_path=scene.with_suffix(".txt"))
    t_gen = time.time() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hp: dict = {}
    if args.checkpoint:
        from rsvision.tasks import load_task

        task = load_task(args.checkpoint)
        model, hp = task.model, dict(task.hparams)
        mean, std, classes = hp["mean"], hp["std"], hp["class_names"]
    else:
        import rsvision.models.detectors  # noqa: F401
        from rsvision.models import build_model
        from rsvision.tasks.detection import DetectModelConfig

        classes = ["ship", "vehicle", "tank"]
        torch.manual_seed(0)  # the same random weights every run: detection counts comparable between runs
        cfg = DetectModelConfig(name="lsknet_t", preset=args.preset, fpn_channels=args.fpn, fc_channels=args.fc)
        spec = cfg.build_dict()
        args.fpn, args.fc = cfg.fpn_channels, cfg.fc_channels
        model = build_model({**spec, "num_classes": 3, "class_names": classes})
        mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    model = model.to(args.device).eval()
    if not args.no_fast:
        from rsvision.models.fast import optimize_for_inference

        model = optimize_for_inference(model)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t1 = time.time()
    det = predict_scene(model, scene, mean, std, classes, window=args.window, overlap=args.overlap,
                        batch_size=args.batch_size, device=args.device, max_windows=args.max_windows)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_pred = time.time() - t1
    t2 = time.time()
    written = write_scene_outputs(det, args.out, scene.stem, source=scene) if not args.max_windows else {}
    t_write = time.time() - t2
    frac = det.stats["windows"] / det.stats["windows_total"]  # < 1 with --max-windows (extrapolated)
    mp = det.height * det.width / 1e6 * frac
    res = {
        "benchmark": "bench_predict", "scene": str(scene), "scene_px": [det.height, det.width],
        "scene_uncompressed_MB": round(det.height * det.width * 3 / 2**20, 1),
        "device": args.device, "threads": args.threads, "torch": torch.__version__,
        "model": (f"checkpoint {args.checkpoint}: {hp['model'].get('type')} {hp['model'].get('backbone')} fpn "
                  f"{hp['model'].get('fpn_channels')} fc {hp['model'].get('fc_channels')}" if args.checkpoint else
                  f"OrientedRCNN lsknet_t preset {args.preset}: fpn {args.fpn} fc {args.fc} (random weights)"),
        "fast": not args.no_fast, "windows_skipped": det.stats.get("windows_skipped"), "window": args.window, "overlap": args.overlap, "batch_size": args.batch_size, "windows": det.stats["windows"], "windows_total": det.stats["windows_total"],
        "extrapolated_full_scene_s": round(t_pred / frac, 1),
        "detections": len(det.scores), "predict_s": round(t_pred, 2), "write_s": round(t_write, 2),
        "MP_per_s": round(mp / t_pred, 4), "s_per_window": round(t_pred / det.stats["windows"], 3),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_model_MB": round(rss_before, 1), "generate_s": round(t_gen, 1),
        "outputs": {k: str(v) for k, v in written.items()},
    }
    if args.device.startswith("cuda"):
        res["peak_cuda_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["gpu"] = torch.cuda.get_device_name()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
