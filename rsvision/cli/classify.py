"""``rsvision classify train|eval|predict``: scene classification (thin layer over rsvision.tasks.classification)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rsvision.cli._common import (
    ExistOkOpt, FastOpt, check_writable_file,    train_command,
    BatchSizeOpt, CheckpointOpt, DeviceOpt, EvalDataOpt, InputsArg,
    JsonOpt, PredictOutOpt, TopKOpt, PREDICT_OUT, ScoreThrOpt, SplitFileOpt, SplitOpt, TtaOpt,
    console, print_metrics,
)

from rsvision.cli._batch import run_many, wants_batch
from rsvision.cli._common import AssetsOpt, ClusterOpt, CrsOpt

app = typer.Typer(help="Scene classification: train, evaluate, predict.", no_args_is_help=True)

SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images with a warning.")]
ModalitiesOpt = Annotated[Optional[str], typer.Option(
    "--modalities", help="S1 / S2 pair checkpoints: use only these of its modalities, comma-separated (e.g. s2).")]


def _modalities(text: Optional[str]) -> Optional[list[str]]:
    return [m.strip().lower() for m in text.split(",") if m.strip()] if text else None


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="classify")


def _summary(metrics: dict) -> str:
    if metrics.get("multilabel"):
        return f"mAP {metrics['mAP']:.4f}  F1 micro {metrics['f1_micro']:.4f}"
    return (f"OA {metrics['overall_accuracy']:.4f}  AA {metrics['average_accuracy']:.4f}  "
            f"kappa {metrics['kappa']:.4f}")


app.command()(train_command(
    "rsvision.tasks.classification:ClassifyConfig",
    "Train a classifier into a run directory (best/last.ckpt, config.yaml, metrics.csv, plots); scores the test split."))


@app.command("eval")
def eval_(
    checkpoint: CheckpointOpt, data: EvalDataOpt = None, json_out: JsonOpt = None,
    split: SplitOpt = None, split_file: SplitFileOpt = None, batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None, skip_bad: SkipBadOpt = False, fast: FastOpt = True,
    tta: TtaOpt = None,
    eval_size: Annotated[Optional[int], typer.Option(
        "--eval-size", help="Resize each whole image to N px (overrides the checkpoint's eval policy).")] = None,
    cm: Annotated[Optional[Path], typer.Option("--cm", help="Confusion-matrix PNG (default: next to --json, "
                                                           "else next to the checkpoint).")] = None,
    modalities: ModalitiesOpt = None,
) -> None:
    """Evaluate a checkpoint: OA, AA, kappa, per-class accuracy, confusion matrix (PNG, JSON)."""
    from rsvision.errors import ConfigError
    from rsvision.tasks import evaluate, load_task

    if data is None:
        raise ConfigError("eval needs --data DIR (class folders) or --data labels.csv")
    check_writable_file(json_out, "--json")
    check_writable_file(cm, "--cm")
    task = load_task(checkpoint, device or "auto")
    tta = bool(tta)
    metrics = evaluate(task, data, split=split, split_file=split_file, batch_size=batch_size or 32, tta=tta,
                       eval_size=eval_size, skip_bad=skip_bad, progress=True, fast=fast,
                       modalities=_modalities(modalities))
    metrics.update(checkpoint=str(checkpoint), data=str(data), split=split, tta=tta,
                   eval_size=eval_size or task.hparams.get("eval_size"))
    print_metrics(metrics, title=f"{checkpoint.name} on {data}" + (f" [{split}]" if split else ""),
                  json_path=json_out)
    if not task.multilabel:
        from rsvision.viz.plots import plot_confusion_matrix

        if cm is None:
            cm = (json_out.with_name(json_out.stem + "_confusion.png") if json_out is not None
                  else checkpoint.parent / f"confusion_matrix_{split or Path(data).name}.png")
        plot_confusion_matrix(metrics["confusion_matrix"], task.classes, cm,
                              title=f"OA {100 * metrics['overall_accuracy']:.1f}%  kappa {metrics['kappa']:.3f}")
        console.print(f"confusion matrix: [bold]{cm}[/]")
    console.print(_summary(metrics))


@app.command()
def predict(
    checkpoint: CheckpointOpt, inputs: InputsArg, out: PredictOutOpt = PREDICT_OUT, top_k: TopKOpt = 3,
    batch_size: BatchSizeOpt = None, device: DeviceOpt = None, skip_bad: SkipBadOpt = False,
    exist_ok: ExistOkOpt = False, fast: FastOpt = True, tta: TtaOpt = None, score_thr: ScoreThrOpt = None,
    cluster: ClusterOpt = None, assets: AssetsOpt = None, crs: CrsOpt = None, modalities: ModalitiesOpt = None,
) -> None:
    """Top-k classes with probabilities for images (files, folders, globs); predictions.json / .csv in --out.

    ``--score-thr`` picks the labels (multi-label: default 0.5; single-label: default the top class). With
    --cluster (or STAC inputs): one folder per image, resumable, and the merged predictions.json / .csv.
    S1 / S2 pair checkpoints take pair folders (a dataset root, a patch or product folder inside one, or a
    folder of band GeoTIFFs); predictions.csv then has one row per pair: labels and all 19 probabilities."""
    from rsvision.errors import ConfigError
    from rsvision.tasks import load_task, predict as predict_task

    if wants_batch(cluster, inputs, assets):
        from rsvision.models.checkpoints import read_checkpoint

        if modalities or (read_checkpoint(checkpoint).get("hyper_parameters") or {}).get("modalities"):
            raise ConfigError("S1 / S2 pair checkpoints predict in one process: --cluster / --assets / STAC inputs "
                              "are for image scenes")
        return run_many(checkpoint, inputs, out, cluster, assets, crs, device, exist_ok, "classify",
                        batch_size=batch_size or 16, top_k=top_k, skip_bad=skip_bad, fast=fast, tta=tta,
                        score_thr=score_thr)
    task = load_task(checkpoint, device or "auto")
    preds = list(predict_task(task, inputs, out, batch_size=batch_size or 16, top_k=top_k, skip_bad=skip_bad,
                              exist_ok=exist_ok, fast=fast, tta=tta, score_thr=score_thr,
                              modalities=_modalities(modalities)))
    t = Table(title=f"{checkpoint.name}: top-{top_k}" + (" (multi-label)" if task.multilabel else ""))
    t.add_column("image")
    t.add_column("labels")
    for i in range(min(top_k, len(task.classes))):
        t.add_column(f"#{i + 1}")
    for p in preds:
        if "error" in p:
            t.add_row(Path(p["path"]).name, f"[red]{p['error']}[/]")
            continue
        t.add_row(Path(p["path"]).name, ", ".join(p["labels"]) or "-", *[f"{c} {q:.3f}" for c, q in p["top"]])
    console.print(t)
    console.print(f"predictions written to [bold]{out}[/] (predictions.json, predictions.csv)")
