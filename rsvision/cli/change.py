"""``rsvision change train|eval|predict``: bi-temporal change detection (thin layer over rsvision.tasks.change)."""
from __future__ import annotations


import typer

from rsvision.cli._common import (
    PREDICT_OUT, CheckpointOpt, DeviceOpt, EvalDataOpt, ExistOkOpt, FastOpt, InputsArg, JsonOpt, PredictOutOpt,
    RgbOpt, SplitFileOpt, SplitOpt, TtaOpt, train_command,
)
from rsvision.cli._common import AssetsOpt, ClusterOpt, CrsOpt
from rsvision.cli.segment import OverlapOpt, VectorOpt, WindowOpt, run_eval, run_predict

app = typer.Typer(help="Change detection on image pairs: train, evaluate, predict (PNG overlay + GeoTIFF).",
                  no_args_is_help=True)


app.command()(train_command(
    "rsvision.tasks.change:ChangeConfig",
    "Train a Siamese change detector (A/ B/ label/ folders or a sparse-sample scene); --model is the backbone.",
    defaults={"trainer": {"out": "runs/change"}}))


@app.command("eval")
def eval_(checkpoint: CheckpointOpt, data: EvalDataOpt = None, json: JsonOpt = None, split: SplitOpt = None,
          split_file: SplitFileOpt = None, tta: TtaOpt = None, device: DeviceOpt = None, fast: FastOpt = True) -> None:
    """Evaluate on labelled pairs (whole images, sliding windows): precision, recall, F1, IoU, OA, kappa."""
    run_eval(checkpoint, data, json, tta, device, "change", fast, split, split_file)


@app.command()
def predict(checkpoint: CheckpointOpt, inputs: InputsArg, out: PredictOutOpt = PREDICT_OUT, tta: TtaOpt = None,
            window: WindowOpt = None, overlap: OverlapOpt = None, device: DeviceOpt = None, rgb: RgbOpt = None,
            exist_ok: ExistOkOpt = False, fast: FastOpt = True, vector: VectorOpt = None,
            cluster: ClusterOpt = None, assets: AssetsOpt = None, crs: CrsOpt = None) -> None:
    """Change maps of pairs: INPUTS are A B [A B ...] files or folders with A/ and B/ (or a scene folder).

    Writes the change mask, an overlay and an A | B | prediction PNG, and with --vector the changed regions.
    With --cluster: one folder per pair, resumable, and masks.vrt mosaicking the change masks."""
    run_predict(checkpoint, inputs, out, tta, window, overlap, device, rgb, "change", exist_ok, fast, vector,
                cluster, assets, crs)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="change")
