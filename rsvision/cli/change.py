"""``rsvision change train|eval|predict``: bi-temporal change detection (thin layer over rsvision.tasks.change)."""
from __future__ import annotations

from pathlib import Path

import typer

from rsvision.cli._common import (
    BatchSizeOpt, CheckpointOpt, ConfigOpt, DataOpt, DeviceOpt, EpochsOpt, EvalDataOpt, ImgSizeOpt, InputsArg,
    JsonOpt, ModelOpt, OutOpt, PrecisionOpt, PredictOutOpt, PretrainedOpt, ResumeOpt, SeedOpt, SetOpt,
)
from rsvision.cli.segment import (
    OverlapOpt, RgbOpt, TtaOpt, WindowOpt, device_of, do_train, parse_rgb, print_dense_metrics, print_outputs,
    progress_bar,
)

app = typer.Typer(help="Change detection on image pairs: train, evaluate, predict (PNG overlay + GeoTIFF).",
                  no_args_is_help=True)


@app.command()
def train(config: ConfigOpt = None, data: DataOpt = None, model: ModelOpt = None, img_size: ImgSizeOpt = None,
          epochs: EpochsOpt = None, batch_size: BatchSizeOpt = None, out: OutOpt = None, resume: ResumeOpt = False,
          pretrained: PretrainedOpt = None, device: DeviceOpt = None, precision: PrecisionOpt = None,
          seed: SeedOpt = None, set_: SetOpt = None) -> None:
    """Train a Siamese change detector (A/ B/ label/ folders or a sparse-sample scene); --model is the backbone."""
    opts = dict(locals())
    from rsvision.tasks.change import ChangeConfig, train as train_fn

    defaults = {"trainer": {"out": "runs/change", "monitor": "val/F1", "mode": "max"}}
    do_train(ChangeConfig, train_fn, defaults, opts)


@app.command("eval")
def eval_(checkpoint: CheckpointOpt, data: EvalDataOpt = None, json: JsonOpt = None, tta: TtaOpt = None,
          device: DeviceOpt = None) -> None:
    """Evaluate on labelled pairs (whole images, sliding windows): precision, recall, F1, IoU, OA, kappa."""
    from rsvision.errors import ConfigError
    from rsvision.tasks.change import eval_dataset
    from rsvision.tasks.segmentation import evaluate, load_task

    if data is None:
        raise ConfigError("change eval needs --data DIR (A/ B/ label/, or a change.bmp / unchanged.bmp scene)")
    task = load_task(checkpoint, device_of(device))
    if task.task_name != "change":
        raise ConfigError(f"{checkpoint} is a {task.task_name} checkpoint, not change detection")
    ds = eval_dataset(data, task)
    with progress_bar() as bar:
        job = bar.add_task("evaluating", total=len(ds))
        m = evaluate(task, ds, tta, progress=lambda i, n: bar.update(job, completed=i))
    print_dense_metrics(m, json, f"change eval: {data}")


@app.command()
def predict(checkpoint: CheckpointOpt, inputs: InputsArg, out: PredictOutOpt = None, tta: TtaOpt = None,
            window: WindowOpt = None, overlap: OverlapOpt = None, device: DeviceOpt = None, rgb: RgbOpt = None) -> None:
    """Change maps of pairs: INPUTS are A B [A B ...] files or folders with A/ and B/ (or a scene folder)."""
    from rsvision.tasks.change import pairs_from_inputs, predict_pair
    from rsvision.tasks.segmentation import load_task

    task = load_task(checkpoint, device_of(device))
    bands = parse_rgb(rgb, task.in_chans)
    out = out or Path("predictions")
    rows = []
    with progress_bar() as bar:
        for a, b, name in pairs_from_inputs(inputs):
            job = bar.add_task(name, total=None)
            res = predict_pair(task, a, b, out, name, tta, window, overlap,
                               progress=lambda i, n, job=job: bar.update(job, completed=i, total=n), rgb=bands)
            rows.append((f"{a} | {b}", res))
    print_outputs(rows)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="change")
