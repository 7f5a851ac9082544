"""``rsvision detect train|eval|predict``: rotated object detection (Oriented R-CNN).

A thin layer: configuration and printing here, everything else in :mod:`rsvision.tasks.detection`
(training) and :mod:`rsvision.tasks.predict_scene` (whole-scene prediction and evaluation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rsvision.cli._common import (
    PREDICT_OUT, CheckpointOpt, DeviceOpt, EvalDataOpt, ExistOkOpt, FastOpt, InputsArg, JsonOpt, PredictOutOpt,
    RgbOpt, ScoreThrOpt, SplitFileOpt, SplitOpt, TtaOpt, check_writable_file, console, parse_rgb, train_command,
    write_json,
)

from rsvision.cli._batch import run_many, wants_batch
from rsvision.cli._common import AssetsOpt, ClusterOpt, CrsOpt, load_task_of
from rsvision.cli._common import (  # object predict options, shared by detect and instance
    ClassesOpt, LabelsOpt, MaxDetOpt, NmsOpt, OverlapOpt, PredBatchOpt, WindowOpt,
)

app = typer.Typer(help="Rotated object detection (Oriented R-CNN on LSKNet / HAKSNet / timm backbones).",
                  no_args_is_help=True)

ScalesOpt = Annotated[Optional[list[float]], typer.Option("--scale", help="Test rate; repeat for multi-scale (0.5 1.0 1.5).")]
MultiScaleOpt = Annotated[bool, typer.Option("--multi-scale", help="Published multi-scale test: rates 0.5, 1.0, 1.5.")]


def _scales(scale: list[float] | None, multi: bool, tta: bool | None = None) -> list[float] | None:
    """``--tta`` / ``--multi-scale`` is the published multi-scale test (rates 0.5, 1.0, 1.5)."""
    return [0.5, 1.0, 1.5] if (multi or tta) else scale


def _classes(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def _load(checkpoint: Path, device: str | None):
    return load_task_of(checkpoint, device, "detect")


app.command()(train_command(
    "rsvision.tasks.detection:DetectConfig",
    "Train a rotated detector (resumable with --resume); writes best.ckpt / last.ckpt / metrics to --out.",
    presets=("tiny", "small", "published")))


def print_detect_metrics(res: dict, title: str = "DOTA evaluation") -> None:
    """Per-class AP table and mAP (fractions, as in the JSON)."""
    from rich.table import Table

    t = Table(title=f"{title} ({res.get('metric')}, IoU > {res.get('iou_thr')})")
    t.add_column("class")
    t.add_column("AP", justify="right")
    t.add_column("GT", justify="right")
    for c, ap in res["AP"].items():
        t.add_row(c, "-" if ap is None else f"{ap:.4f}", str(res.get("num_gt", {}).get(c, "")))
    m = res.get("mAP")
    t.add_row("[bold]mAP[/]", "-" if m is None else f"[bold]{m:.4f}[/]", "")
    console.print(t)
    if m is None:
        console.print("no class has ground truth in the evaluated images: mAP is null")


@app.command("eval")
def eval_(
    checkpoint: CheckpointOpt,
    data: EvalDataOpt = None,
    json_out: JsonOpt = None,
    split: SplitOpt = None, split_file: SplitFileOpt = None, tta: TtaOpt = None,
    img_dir: Annotated[Optional[Path], typer.Option("--img-dir", help="Full-size images (instead of --data).")] = None,
    ann_dir: Annotated[Optional[Path], typer.Option("--ann-dir", help="DOTA labelTxt folder (default: beside the images).")] = None,
    dets: Annotated[Optional[Path], typer.Option("--dets", help="Keep the merged Task1 files here.")] = None,
    window: WindowOpt = None, overlap: OverlapOpt = None, scale: ScalesOpt = None,
    multi_scale: MultiScaleOpt = False, nms_iou: NmsOpt = None,
    iou_thr: Annotated[Optional[float], typer.Option("--iou-thr", help="Default: the checkpoint's eval.iou_thr (0.5).")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="voc07 | voc12 (default: the checkpoint's).")] = None,
    batch_size: PredBatchOpt = None, device: DeviceOpt = None, exist_ok: ExistOkOpt = False, fast: FastOpt = True,
) -> None:
    """Score merged full-image detections with the DOTA evaluator (like the DOTA server)."""
    from rsvision.errors import ConfigError
    from rsvision.tasks import evaluate

    if data is None and img_dir is None:
        raise ConfigError("detect eval needs --data DIR (images/ + labelTxt/), or --img-dir and --ann-dir")
    check_writable_file(json_out, "--json")
    task = _load(checkpoint, device)
    res = evaluate(task, img_dir or data, ann_dir=ann_dir, dets=dets, window=window, overlap=overlap,
                   scales=_scales(scale, multi_scale, tta), nms_iou=nms_iou, iou_thr=iou_thr, metric=metric,
                   batch_size=batch_size, progress=True, exist_ok=exist_ok, fast=fast, split=split,
                   split_file=split_file)
    res.update(checkpoint=str(checkpoint), data=str(img_dir or data), split=split)
    print_detect_metrics(res, f"detect eval: {img_dir or data}" + (f" [{split}]" if split else ""))
    if json_out is not None:
        write_json(res, json_out)
        console.print(f"metrics written to [bold]{json_out}[/]")


@app.command()
def predict(
    checkpoint: CheckpointOpt, inputs: InputsArg, out: PredictOutOpt = PREDICT_OUT,
    score_thr: ScoreThrOpt = 0.3, classes: ClassesOpt = None, max_det: MaxDetOpt = None, tta: TtaOpt = None,
    rgb: RgbOpt = None, labels: LabelsOpt = True,
    window: WindowOpt = None, overlap: OverlapOpt = None, scale: ScalesOpt = None,
    multi_scale: MultiScaleOpt = False, nms_iou: NmsOpt = None,
    batch_size: PredBatchOpt = None, device: DeviceOpt = None,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Draw the results (boxes / masks) on the image.")] = True,
    geojson: Annotated[bool, typer.Option("--geojson/--no-geojson", help="GeoJSON for georeferenced rasters.")] = True,
    exist_ok: ExistOkOpt = False, fast: FastOpt = True,
    cluster: ClusterOpt = None, assets: AssetsOpt = None, crs: CrsOpt = None,
) -> None:
    """Detect on images or rasters of any size; writes Task1 files, PNGs and GeoJSON to --out.

    --score-thr, --classes and --max-det apply to every output (Task1, GeoJSON, PNG) alike. With --cluster
    (or STAC inputs): one folder per scene, resumable, plus detections.parquet of all scenes."""
    from rich.table import Table

    from rsvision.tasks import predict as predict_task

    if wants_batch(cluster, inputs, assets):
        return run_many(checkpoint, inputs, out, cluster, assets, crs, device, exist_ok, "detect", window=window,
                        overlap=overlap, scales=_scales(scale, multi_scale, tta), nms_iou=nms_iou,
                        score_thr=score_thr or 0.0, batch_size=batch_size, png=png, geojson=geojson, fast=fast,
                        classes=_classes(classes), max_det=max_det, labels=labels, rgb=parse_rgb(rgb, 1 << 16))
    task = _load(checkpoint, device)
    bands = parse_rgb(rgb, len(task.hparams.mean))
    t = Table(title=f"detections (score >= {score_thr})")
    t.add_column("image")
    t.add_column("size", justify="right")
    t.add_column("objects", justify="right")
    t.add_column("per class")
    total = 0
    for r in predict_task(task, inputs, out, window=window, overlap=overlap, scales=_scales(scale, multi_scale, tta),
                          nms_iou=nms_iou, score_thr=score_thr or 0.0, batch_size=batch_size, png=png,
                          geojson=geojson, progress=True, exist_ok=exist_ok, fast=fast, classes=_classes(classes),
                          max_det=max_det, labels=labels, rgb=bands):
        det = r["detections"]
        total += len(det.scores)
        t.add_row(Path(r["input"]).name, f"{det.width}x{det.height}", str(len(det.scores)),
                  ", ".join(f"{c} {n}" for c, n in r["counts"].items() if n))
        for kind, p in r["files"].items():
            if kind != "task1":
                console.print(f"  {kind}: {p}")
    console.print(t)
    if total:
        console.print(f"{total} detections written to [bold]{out}[/] (Task1_<class>.txt, one file per class)")
    else:
        console.print(f"no detection scored >= {score_thr}: the Task1 files in [bold]{out}[/] are empty")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="detect")
