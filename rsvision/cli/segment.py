"""``rsvision segment train|eval|predict``: semantic segmentation (thin layer over rsvision.tasks.segmentation)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rsvision.cli._common import (
    PREDICT_OUT, CheckpointOpt, DeviceOpt, EvalDataOpt, ExistOkOpt, FastOpt, InputsArg, JsonOpt, PredictOutOpt,
    RgbOpt, SplitFileOpt, SplitOpt, TtaOpt, check_writable_file, console, metrics_table, parse_rgb,
    per_class_table, progress_bar, train_command, write_json,
)

from rsvision.cli._batch import run_many, wants_batch
from rsvision.cli._common import AssetsOpt, ClusterOpt, CrsOpt, load_task_of

app = typer.Typer(help="Semantic segmentation: train, evaluate, predict (sliding windows, GeoTIFF masks).",
                  no_args_is_help=True)

WindowOpt = Annotated[Optional[int], typer.Option("--window", min=1, help="Sliding-window size (default: training crop).")]
OverlapOpt = Annotated[Optional[int], typer.Option("--overlap", min=0, help="Sliding-window overlap in pixels.")]
MaskOpt = Annotated[Optional[str], typer.Option("--mask", help="Mask encoding preset for --data (default: checkpoint's).")]


def print_dense_metrics(m: dict, json_path: Path | None, title: str) -> None:
    console.print(metrics_table({k: v for k, v in m.items() if k != "confusion_matrix"}, title))
    if "IoU" in m and isinstance(m["IoU"], dict):
        console.print(per_class_table({c: {"IoU": m["IoU"][c], "F1": m["F1"][c]} for c in m["classes"]}))
    if json_path is not None:
        console.print(f"metrics written to [bold]{write_json(m, json_path)}[/]")


VectorOpt = Annotated[Optional[str], typer.Option(
    "--vector", help="Also write the mask as polygons with class names: geojson | gpkg (in the raster's CRS).")]


def run_predict(checkpoint: Path, inputs: list[str], out: Path | None, tta: bool | None, window: int | None,
                overlap: int | None, device: str | None, rgb: str | None, task_name: str, exist_ok: bool,
                fast: bool = True, vector: str | None = None, cluster: str | None = None, assets: str | None = None,
                crs: str | None = None) -> None:
    """Shared body of ``segment predict`` / ``change predict``: predict, then a table of outputs
    (``cluster`` / STAC inputs: :func:`rsvision.cli._batch.run_many`, masks mosaicked in ``masks.vrt``)."""
    from rsvision.tasks import predict

    if wants_batch(cluster, inputs, assets):
        return run_many(checkpoint, inputs, out, cluster, assets, crs, device, exist_ok, task_name, tta=tta,
                        window=window, overlap=overlap, rgb=parse_rgb(rgb, 1 << 16), fast=fast, vector=vector)
    task = load_task_of(checkpoint, device, task_name)
    bands = parse_rgb(rgb, task.in_chans)
    t = Table(title="Predictions")
    for col in ("input", "outputs", "class fractions"):
        t.add_column(col)
    with progress_bar() as bar:
        def track(name: str):
            job = bar.add_task(name, total=None)
            return lambda i, n: bar.update(job, completed=i, total=n)

        for r in predict(task, inputs, out, tta=tta, window=window, overlap=overlap, rgb=bands, progress=track,
                         exist_ok=exist_ok, fast=fast, vector=vector):
            frac = ", ".join(f"{c} {v:.1%}" for c, v in r["fraction"].items() if v > 0)
            t.add_row(r["input"], "\n".join(r["files"].values()), frac)
    console.print(t)


def run_eval(checkpoint: Path, data: Path | None, json_path: Path | None, tta: bool | None, device: str | None,
             task_name: str, fast: bool = True, split: str | None = None, split_file: Path | None = None,
             **dataset_options) -> None:
    """Shared body of ``segment eval`` / ``change eval``."""
    from rsvision.errors import ConfigError
    from rsvision.tasks import evaluate

    if data is None:
        raise ConfigError(f"{task_name} eval needs --data DIR")
    check_writable_file(json_path, "--json")
    task = load_task_of(checkpoint, device, task_name)
    ds = task.eval_dataset(data, split=split, split_file=split_file, **dataset_options)
    with progress_bar() as bar:
        job = bar.add_task("evaluating", total=len(ds))
        m = evaluate(task, ds, tta=tta, progress=lambda i, n: bar.update(job, completed=i), fast=fast)
    m.update(checkpoint=str(checkpoint), data=str(data), split=split)
    print_dense_metrics(m, json_path, f"{task_name} eval: {data}" + (f" [{split}]" if split else ""))


app.command()(train_command(
    "rsvision.tasks.segmentation:SegmentConfig",
    "Train a segmentor (UperNet / Semantic FPN over any backbone); --model is the backbone.",
    defaults={"trainer": {"out": "runs/segment"}}))


@app.command("eval")
def eval_(checkpoint: CheckpointOpt, data: EvalDataOpt = None, json: JsonOpt = None, split: SplitOpt = None,
          split_file: SplitFileOpt = None, tta: TtaOpt = None, mask: MaskOpt = None, device: DeviceOpt = None,
          fast: FastOpt = True) -> None:
    """Evaluate on image/mask folders (whole images, sliding windows): IoU, mIoU, F1, mF1, OA."""
    run_eval(checkpoint, data, json, tta, device, "segment", fast, split, split_file, mask=mask)


@app.command()
def predict(checkpoint: CheckpointOpt, inputs: InputsArg, out: PredictOutOpt = PREDICT_OUT, tta: TtaOpt = None,
            window: WindowOpt = None, overlap: OverlapOpt = None, device: DeviceOpt = None, rgb: RgbOpt = None,
            exist_ok: ExistOkOpt = False, fast: FastOpt = True, vector: VectorOpt = None,
            cluster: ClusterOpt = None, assets: AssetsOpt = None, crs: CrsOpt = None) -> None:
    """Segment images / rasters of any size: a GeoTIFF mask (georeferenced input) or palette PNG mask, an
    overlay PNG with a legend, and with --vector the polygons. With --cluster (or STAC inputs): one folder
    per scene, resumable, and masks.vrt mosaicking the masks."""
    run_predict(checkpoint, inputs, out, tta, window, overlap, device, rgb, "segment", exist_ok, fast, vector,
                cluster, assets, crs)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="segment")
