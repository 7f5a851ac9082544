"""``rsvision segment train|eval|predict``: semantic segmentation (thin layer over rsvision.tasks.segmentation)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rsvision.cli._common import (
    BatchSizeOpt, CheckpointOpt, ConfigOpt, DataOpt, DeviceOpt, EpochsOpt, EvalDataOpt, ImgSizeOpt, InputsArg,
    JsonOpt, ModelOpt, OutOpt, PrecisionOpt, PredictOutOpt, PretrainedOpt, ResumeOpt, SeedOpt, SetOpt, console,
    expand_inputs, load_config, metrics_table, per_class_table, train_overrides, write_json,
)

app = typer.Typer(help="Semantic segmentation: train, evaluate, predict (sliding windows, GeoTIFF masks).",
                  no_args_is_help=True)

TtaOpt = Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Flip test-time augmentation (default: checkpoint's).")]
WindowOpt = Annotated[Optional[int], typer.Option("--window", help="Sliding-window size (default: training crop).")]
OverlapOpt = Annotated[Optional[int], typer.Option("--overlap", help="Sliding-window overlap in pixels.")]
RgbOpt = Annotated[Optional[str], typer.Option(
    "--rgb", help="Input bands shown as red,green,blue in the overlay PNG, 1-based (e.g. 4,3,2); default 1,2,3.")]


def parse_rgb(text: str | None, in_chans: int) -> list[int] | None:
    """``"4,3,2"`` -> ``[3, 2, 1]`` (0-based), checked against the model's band count; a clear error otherwise."""
    if text is None:
        return None
    try:
        bands = [int(t) for t in text.replace(" ", "").split(",")]
    except ValueError:
        bands = []
    if len(bands) != 3 or min(bands) < 1:
        raise typer.BadParameter(f"expected three 1-based band numbers like 4,3,2, got {text!r}", param_hint="--rgb")
    if max(bands) > in_chans:
        raise typer.BadParameter(f"the model reads {in_chans} bands, got {text!r}", param_hint="--rgb")
    return [b - 1 for b in bands]
MaskOpt = Annotated[Optional[str], typer.Option("--mask", help="Mask encoding preset for --data (default: checkpoint's).")]


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def device_of(device: str | None) -> str:
    """``auto`` -> cuda when available, else cpu (inference runs outside Lightning)."""
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return d


def do_train(cfg_cls: type, train_fn: Callable, defaults: dict, opts: dict) -> None:
    """Shared body of ``segment train`` / ``change train``."""
    cfg = load_config(opts.pop("config"), cfg_cls, train_overrides(**opts), defaults=defaults)
    console.print(f"[bold]training[/] {cfg.model.name} + {cfg.model.decoder} -> {cfg.trainer.out}")
    result = train_fn(cfg)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # DDP workers: the launching process reports
        return
    t = metrics_table({k: v for k, v in result.items() if k.startswith("val/")}, "Validation (last epoch)")
    console.print(t)
    console.print(f"best: [bold]{result['best']}[/]  wall time: {result['seconds']:.1f} s")


def print_dense_metrics(m: dict, json_path: Path | None, title: str) -> None:
    console.print(metrics_table({k: v for k, v in m.items() if k != "confusion_matrix"}, title))
    if "IoU" in m and isinstance(m["IoU"], dict):
        console.print(per_class_table({c: {"IoU": m["IoU"][c], "F1": m["F1"][c]} for c in m["classes"]}))
    if json_path is not None:
        console.print(f"metrics written to [bold]{write_json(m, json_path)}[/]")


def print_outputs(rows: list[tuple[str, dict]]) -> None:
    t = Table(title="Predictions")
    for col in ("input", "outputs", "class fractions"):
        t.add_column(col)
    for name, files in rows:
        frac = ", ".join(f"{c} {v:.1%}" for c, v in files.get("fraction", {}).items() if v > 0)
        t.add_row(name, "\n".join(v for k, v in files.items() if k != "fraction"), frac)
    console.print(t)


@app.command()
def train(config: ConfigOpt = None, data: DataOpt = None, model: ModelOpt = None, img_size: ImgSizeOpt = None,
          epochs: EpochsOpt = None, batch_size: BatchSizeOpt = None, out: OutOpt = None, resume: ResumeOpt = False,
          pretrained: PretrainedOpt = None, device: DeviceOpt = None, precision: PrecisionOpt = None,
          seed: SeedOpt = None, set_: SetOpt = None) -> None:
    """Train a segmentor (UperNet / Semantic FPN over any backbone); --model is the backbone."""
    opts = dict(locals())
    from rsvision.tasks.segmentation import SegmentConfig, train as train_fn

    defaults = {"trainer": {"out": "runs/segment", "monitor": "val/mIoU", "mode": "max"}}
    do_train(SegmentConfig, train_fn, defaults, opts)


@app.command("eval")
def eval_(checkpoint: CheckpointOpt, data: EvalDataOpt = None, json: JsonOpt = None, tta: TtaOpt = None,
          mask: MaskOpt = None, device: DeviceOpt = None) -> None:
    """Evaluate on image/mask folders (whole images, sliding windows): IoU, mIoU, F1, mF1, OA."""
    from rsvision.errors import ConfigError
    from rsvision.tasks.segmentation import eval_dataset, evaluate, load_task

    if data is None:
        raise ConfigError("segment eval needs --data DIR (with images/ and masks/)")
    task = load_task(checkpoint, device_of(device))
    ds = eval_dataset(data, task, mask)
    with progress_bar() as bar:
        job = bar.add_task("evaluating", total=len(ds))
        m = evaluate(task, ds, tta, progress=lambda i, n: bar.update(job, completed=i))
    print_dense_metrics(m, json, f"segment eval: {data}")


@app.command()
def predict(checkpoint: CheckpointOpt, inputs: InputsArg, out: PredictOutOpt = None, tta: TtaOpt = None,
            window: WindowOpt = None, overlap: OverlapOpt = None, device: DeviceOpt = None, rgb: RgbOpt = None) -> None:
    """Segment images / rasters of any size: colour overlay PNG, and a GeoTIFF mask for georeferenced input."""
    from rsvision.tasks.segmentation import load_task, predict_file

    task = load_task(checkpoint, device_of(device))
    bands = parse_rgb(rgb, task.in_chans)
    files = expand_inputs(inputs)
    out = out or Path("predictions")
    rows: list[tuple[str, Any]] = []
    with progress_bar() as bar:
        for f in files:
            job = bar.add_task(f.name, total=None)
            res = predict_file(task, f, out, tta, window, overlap,
                               progress=lambda i, n, job=job: bar.update(job, completed=i, total=n), rgb=bands)
            rows.append((str(f), res))
    print_outputs(rows)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="segment")
