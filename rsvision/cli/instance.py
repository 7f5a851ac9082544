"""``rsvision instance train|eval|predict``: instance segmentation (Mask R-CNN; thin layer over
:mod:`rsvision.tasks.instance` and :mod:`rsvision.tasks.instance_scene`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rsvision.cli._common import (
    PREDICT_OUT, CheckpointOpt, DeviceOpt, EvalDataOpt, ExistOkOpt, FastOpt, InputsArg, JsonOpt, PredictOutOpt,
    RgbOpt, ScoreThrOpt, SplitFileOpt, SplitOpt, TtaOpt, check_writable_file, console, parse_rgb, progress_bar,
    train_command, write_json,
)
from rsvision.cli._batch import run_many, wants_batch
from rsvision.cli._common import AssetsOpt, ClusterOpt, CrsOpt, load_task_of
from rsvision.cli._common import (  # object predict options, shared by detect and instance
    ClassesOpt, LabelsOpt, MaxDetOpt, NmsOpt, OverlapOpt, PredBatchOpt, WindowOpt,
)

app = typer.Typer(help="Instance segmentation (Mask R-CNN over any backbone): train, evaluate (mask AP), predict.",
                  no_args_is_help=True)

FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", help="Dataset layout: dota | dior | samrs | isaid (default: the training data's).")]


def _classes(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def _tta(tta: bool | None) -> None:
    if tta:
        from rsvision.errors import ConfigError

        raise ConfigError("instance segmentation has no test-time augmentation yet: drop --tta")


def _load(checkpoint: Path, device: str | None):
    return load_task_of(checkpoint, device, "instance")


app.command()(train_command(
    "rsvision.tasks.instance:InstanceConfig",
    "Train Mask R-CNN on a DOTA / DIOR-R / SAMRS / iSAID folder (--data); --model is the backbone.",
    defaults={"trainer": {"out": "runs/instance"}}, presets=("tiny", "small", "published")))


def print_instance_metrics(res: dict, title: str) -> None:
    """Per-class mask AP and mAP / mAP50 (fractions, as in the JSON)."""
    from rich.table import Table

    t = Table(title=f"{title} (mask AP, IoU 0.50:0.95)")
    t.add_column("class")
    t.add_column("AP", justify="right")
    t.add_column("GT", justify="right")
    for c, ap in res["AP"].items():
        t.add_row(c, "-" if ap is None else f"{ap:.4f}", str(res.get("num_gt", {}).get(c, "")))
    for key in ("mAP", "mAP50", "mAP75"):
        v = res.get(key)
        t.add_row(f"[bold]{key}[/]", "-" if v is None else f"[bold]{v:.4f}[/]", "")
    console.print(t)
    if res.get("mAP") is None:
        console.print("no class has ground truth in the evaluated images: mAP is null")


@app.command("eval")
def eval_(
    checkpoint: CheckpointOpt, data: EvalDataOpt = None, json_out: JsonOpt = None, split: SplitOpt = None,
    split_file: SplitFileOpt = None, tta: TtaOpt = None, format: FormatOpt = None, window: WindowOpt = None,
    overlap: OverlapOpt = None, nms_iou: NmsOpt = None, max_det: MaxDetOpt = None, batch_size: PredBatchOpt = None,
    device: DeviceOpt = None, fast: FastOpt = True,
) -> None:
    """COCO mask AP (torchmetrics / pycocotools) over whole images, predicted window by window."""
    from rsvision.errors import ConfigError
    from rsvision.tasks import evaluate

    if data is None:
        raise ConfigError("instance eval needs --data DIR (a folder in the training data's layout)")
    _tta(tta)
    check_writable_file(json_out, "--json")
    task = _load(checkpoint, device)
    with progress_bar() as bar:
        job = bar.add_task("evaluating", total=None)
        res = evaluate(task, data, split=split, split_file=split_file, format=format, window=window, overlap=overlap,
                       nms_iou=nms_iou, max_det=max_det, batch_size=batch_size, fast=fast,
                       progress=lambda i, n: bar.update(job, completed=i, total=n))
    res.update(checkpoint=str(checkpoint), data=str(data), split=split)
    print_instance_metrics(res, f"instance eval: {data}" + (f" [{split}]" if split else ""))
    if json_out is not None:
        console.print(f"metrics written to [bold]{write_json(res, json_out)}[/]")


@app.command()
def predict(
    checkpoint: CheckpointOpt, inputs: InputsArg, out: PredictOutOpt = PREDICT_OUT, score_thr: ScoreThrOpt = 0.3,
    classes: ClassesOpt = None, max_det: MaxDetOpt = None, tta: TtaOpt = None, rgb: RgbOpt = None,
    labels: LabelsOpt = True, window: WindowOpt = None, overlap: OverlapOpt = None, nms_iou: NmsOpt = None,
    batch_size: PredBatchOpt = None, device: DeviceOpt = None,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Draw the results (boxes / masks) on the image.")] = True,
    geojson: Annotated[bool, typer.Option("--geojson/--no-geojson", help="GeoJSON for georeferenced rasters.")] = True,
    exist_ok: ExistOkOpt = False, fast: FastOpt = True,
    cluster: ClusterOpt = None, assets: AssetsOpt = None, crs: CrsOpt = None,
) -> None:
    """Segment object instances in images or rasters of any size: per image a PNG with the masks, a JSON of
    the instances (class, score, box, outline in pixels) and, for georeferenced rasters, GeoJSON polygons in
    the raster's CRS. --score-thr, --classes and --max-det apply to every output. With --cluster (or STAC
    inputs): one folder per scene, resumable (README "Many scenes")."""
    from rich.table import Table

    from rsvision.tasks import predict as predict_task

    _tta(tta)
    if wants_batch(cluster, inputs, assets):
        return run_many(checkpoint, inputs, out, cluster, assets, crs, device, exist_ok, "instance", window=window,
                        overlap=overlap, nms_iou=nms_iou, score_thr=score_thr or 0.0, classes=_classes(classes),
                        max_det=max_det, batch_size=batch_size, png=png, geojson=geojson, labels=labels,
                        rgb=parse_rgb(rgb, 1 << 16), fast=fast)
    task = _load(checkpoint, device)
    bands = parse_rgb(rgb, len(task.hparams.mean))
    t = Table(title=f"instances (score >= {score_thr})")
    for col, just in (("image", "left"), ("size", "right"), ("instances", "right"), ("per class", "left")):
        t.add_column(col, justify=just)
    for r in predict_task(task, inputs, out, window=window, overlap=overlap, nms_iou=nms_iou,
                          score_thr=score_thr or 0.0, classes=_classes(classes), max_det=max_det,
                          batch_size=batch_size, png=png, geojson=geojson, labels=labels, rgb=bands, progress=True,
                          exist_ok=exist_ok, fast=fast):
        det = r["instances"]
        t.add_row(Path(r["input"]).name, f"{det.width}x{det.height}", str(len(det)),
                  ", ".join(f"{c} {n}" for c, n in r["counts"].items() if n))
        for kind, p in r["files"].items():
            console.print(f"  {kind}: {p}")
    console.print(t)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="instance")
