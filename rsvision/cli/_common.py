"""Shared pieces of the ``rsvision <task> train|eval|predict`` commands (CONVENTIONS "CLI").

Typer options are ``Annotated`` aliases so every task spells them identically::

    @app.command()
    def train(config: ConfigOpt = None, data: DataOpt = None, model: ModelOpt = None,
              img_size: ImgSizeOpt = None, epochs: EpochsOpt = None, batch_size: BatchSizeOpt = None,
              out: OutOpt = None, resume: ResumeOpt = False, pretrained: PretrainedOpt = None,
              device: DeviceOpt = None, precision: PrecisionOpt = None, seed: SeedOpt = None,
              max_time: MaxTimeOpt = None, set_: SetOpt = None):
        cfg = load_config(config, MyTaskConfig, train_overrides(**locals()))

Config layout shared by every task (YAML sections map onto dataclasses)::

    data:    {root, img_size, batch_size, ...}    # --data, --img-size, --batch-size
    model:   {name, pretrained, ...}              # --model, --pretrained
    trainer: rsvision.tasks.common.TrainerOptions # --epochs, --out, --resume, --device, --precision, --seed,
                                                  # --max-time
    <task-specific sections>

``--set a.b=value`` (repeatable) overrides any other field; values are parsed as YAML.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping, Optional, Sequence

import typer
from rich.console import Console
from rich.table import Table

from rsvision.config import deep_merge, from_dict, load_config, load_yaml, parse_set, set_dotted  # noqa: F401
from rsvision.outputs import check_writable_file  # noqa: F401  (re-exported for CLI modules)

__all__ = [
    "console", "ConfigOpt", "DataOpt", "ModelOpt", "ImgSizeOpt", "EpochsOpt", "BatchSizeOpt", "OutOpt",
    "ResumeOpt", "PretrainedOpt", "DeviceOpt", "PrecisionOpt", "SeedOpt", "MaxTimeOpt", "SetOpt", "CheckpointOpt",
    "EvalDataOpt", "JsonOpt", "InputsArg", "PredictOutOpt", "PREDICT_OUT", "TtaOpt", "SplitOpt", "SplitFileOpt",
    "RgbOpt", "ScoreThrOpt", "parse_rgb", "progress_bar", "TopKOpt", "ExistOkOpt", "FastOpt", "COMMON_OVERRIDES",
    "ClusterOpt", "AssetsOpt", "CrsOpt", "train_overrides", "parse_set", "load_yaml", "deep_merge", "set_dotted",
    "from_dict", "load_config",
    "expand_inputs", "write_json", "metrics_table", "print_metrics", "per_class_table", "train_command", "report_run",
]

console = Console()


# The CLI modules import nothing heavy at module level (torch, timm, lightning, rasterio), so that
# ``rsvision --help`` stays under a second; these two are re-exported lazily for that reason.
# --- options of object predictions (detect, instance): windows over a scene, merge, selection ----------
ClassesOpt = Annotated[Optional[str], typer.Option(
    "--classes", help="Only these classes, comma-separated (e.g. ship,harbor); applies to every output.")]
LabelsOpt = Annotated[bool, typer.Option("--labels/--no-labels", help="Class name and score on each drawn box.")]
MaxDetOpt = Annotated[Optional[int], typer.Option("--max-det", min=1, help="At most this many detections per scene, best first.")]
NmsOpt = Annotated[Optional[float], typer.Option(
    "--nms-iou", help="Per-class NMS IoU merging overlapping windows (default: the checkpoint's eval.nms_iou: 0.1 "
    "for rotated boxes, 0.5 for instance boxes).")]
OverlapOpt = Annotated[Optional[int], typer.Option(
    "--overlap", min=0, help="Window overlap in pixels (default: 200, at most a quarter of the window).")]
PredBatchOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", min=1, help="Windows per forward pass (default: 1 on a CPU, where batching saves no time "
    "but holds every window's activations; 2 on a GPU).")]
WindowOpt = Annotated[Optional[int], typer.Option("--window", min=32, help="Window size in pixels (default: checkpoint img size).")]


def expand_inputs(*args: Any, **kwargs: Any):
    from rsvision.data.raster import expand_inputs as impl

    return impl(*args, **kwargs)


def load_task_of(checkpoint: str | Path, device: str | None, task_name: str):
    """The checkpoint's task, refused (naming both) when it belongs to another task than ``task_name``."""
    from rsvision.errors import ConfigError
    from rsvision.tasks import load_task

    task = load_task(checkpoint, device or "auto")
    if task.name != task_name:
        raise ConfigError(f"{checkpoint} is a {task.name} checkpoint, not {task_name}")
    return task


def write_json(obj: Any, path: str | Path) -> Path:
    from rsvision.tasks.common import write_json as impl

    return impl(obj, path)

# --- options (Annotated aliases: use as `name: Alias = default`) ----------------------------------
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config; other options override it.")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Dataset root directory.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Model name (rsvision or timm).")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", min=1, help="Training image size in pixels.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", min=1, help="Maximum number of epochs.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Batch size per device.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run directory (checkpoints, config, metrics, plots).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/last.ckpt.")]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", help="Backbone or full checkpoint (official, MMRotate, timm or rsvision format): a file, or a "
    "published name from `rsvision weights list` (fetched into the cache).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:<i>.")]
PrecisionOpt = Annotated[Optional[str], typer.Option("--precision", help="32 | 16-mixed | bf16-mixed.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, help="Random seed.")]
MaxTimeOpt = Annotated[Optional[str], typer.Option(
    "--max-time", help="Hard training budget: minutes or DD:HH:MM:SS (kept across --resume).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any config field: --set optim.lr=0.001 (repeatable; value parsed as YAML).")]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="rsvision checkpoint (.ckpt).")]
EvalDataOpt = Annotated[Optional[Path], typer.Option("--data", help="Dataset to evaluate on.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write the metrics as JSON to this file.")]
InputsArg = Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")]
PredictOutOpt = Annotated[Path, typer.Option("--out", help="Output directory (refused when it holds results, "
                                                           "unless --exist-ok).")]
#: The one default output folder of every ``predict``.
PREDICT_OUT = Path("predictions")
TopKOpt = Annotated[int, typer.Option("--top-k", min=1, help="How many classes to show per image.")]
FastOpt = Annotated[bool, typer.Option(
    "--fast/--no-fast", help="Optimised inference copy of LSKNet / HAKSNet models (same outputs to ~1e-5).")]
TtaOpt = Annotated[Optional[bool], typer.Option(
    "--tta/--no-tta", help="Test-time augmentation (flips; multi-scale for detect); default: the checkpoint's.")]
SplitOpt = Annotated[Optional[str], typer.Option(
    "--split", help="Score only this split (train | val | test) of the split file the training run wrote.")]
SplitFileOpt = Annotated[Optional[Path], typer.Option(
    "--split-file", help="Split file (default: the one beside the checkpoint: splits.csv / splits.json).")]
RgbOpt = Annotated[Optional[str], typer.Option(
    "--rgb", help="Input bands drawn as red,green,blue in pictures, 1-based (e.g. 4,3,2); default 1,2,3.")]
ScoreThrOpt = Annotated[Optional[float], typer.Option(
    "--score-thr", min=0.0, max=1.0, help="Keep (and draw) only results scoring at least this.")]
ExistOkOpt = Annotated[bool, typer.Option(
    "--exist-ok", help="Write into an --out that already holds results (same names replaced, nothing else touched).")]
ClusterOpt = Annotated[Optional[str], typer.Option(
    "--cluster", help="Spread scenes over Dask: local[:N] worker processes or a scheduler tcp://HOST:PORT; resumes "
    "from the per-scene manifests in --out (see README \"Many scenes\").")]
AssetsOpt = Annotated[Optional[str], typer.Option(
    "--assets", help="STAC inputs: asset keys or band names, comma-separated (e.g. red,green,blue,nir).")]
CrsOpt = Annotated[Optional[str], typer.Option(
    "--crs", help="With --cluster / STAC: CRS of the merged detections.parquet (default: the scenes' shared CRS, "
    "else EPSG:4326).")]

#: CLI option name -> dotted config key (identical for every task).
COMMON_OVERRIDES: dict[str, str] = {
    "data": "data.root",
    "img_size": "data.img_size",
    "batch_size": "data.batch_size",
    "model": "model.name",
    "pretrained": "model.pretrained",
    "epochs": "trainer.max_epochs",
    "out": "trainer.out",
    "resume": "trainer.resume",
    "device": "trainer.device",
    "precision": "trainer.precision",
    "seed": "trainer.seed",
    "max_time": "trainer.max_time",
}


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


def progress_bar():
    """The one progress display of long loops (rich; plain periodic lines when not on a terminal)."""
    from rsvision.progress import progress

    return progress(console)


def train_overrides(set_: Iterable[str] | None = None, **cli: Any) -> dict[str, Any]:
    """Dotted overrides from the common train options (None / False values mean "not given").

    Accepts the keyword names of :data:`COMMON_OVERRIDES` (extra keys are ignored, so
    ``train_overrides(**locals())`` works) plus ``set_`` for ``--set`` items.
    """
    out: dict[str, Any] = {}
    for name, key in COMMON_OVERRIDES.items():
        v = cli.get(name)
        if v is None or (name == "resume" and not v):
            continue
        out[key] = str(v) if isinstance(v, Path) else v
    out.update(parse_set(set_))
    return out


def train_command(config_class: str, help: str, defaults: Mapping[str, Any] | None = None,
                  presets: Sequence[str] = ()):
    """The ``<task> train`` command, the same options for every task (CONVENTIONS "CLI").

    ``config_class`` is ``"module:Class"`` of the task's config dataclass, imported only when the
    command runs (``rsvision --help`` stays light). ``defaults`` sit under the YAML file. ``presets``:
    the task's ``model.preset`` names, offered as ``--preset`` (only tasks that have them show it).
    """

    def train(
        config: ConfigOpt = None, data: DataOpt = None, model: ModelOpt = None, img_size: ImgSizeOpt = None,
        epochs: EpochsOpt = None, batch_size: BatchSizeOpt = None, out: OutOpt = None, resume: ResumeOpt = False,
        pretrained: PretrainedOpt = None, device: DeviceOpt = None, precision: PrecisionOpt = None,
        seed: SeedOpt = None, max_time: MaxTimeOpt = None, set_: SetOpt = None, preset: str | None = None,
    ) -> None:
        import importlib

        from lightning.pytorch.utilities import rank_zero_only

        from rsvision.tasks import train as run

        module, _, name = config_class.partition(":")
        cls = getattr(importlib.import_module(module), name)
        overrides = train_overrides(set_=set_, data=data, model=model, img_size=img_size, epochs=epochs,
                                    batch_size=batch_size, out=out, resume=resume, pretrained=pretrained,
                                    device=device, precision=precision, seed=seed, max_time=max_time)
        if preset is not None:
            overrides["model.preset"] = preset
        cfg = load_config(config, cls, overrides, defaults=defaults)
        where = getattr(cfg.data, "root", None) or getattr(cfg.data, "csv", None) or getattr(cfg.data, "train_dir", None)
        console.print(f"[bold]training[/] {cfg.model.name} on {where} -> {cfg.trainer.out}")
        result = run(cfg)
        if rank_zero_only.rank == 0:  # DDP workers: the launching process reports
            report_run(result)

    train.__doc__ = help
    import inspect

    sig = inspect.signature(train, eval_str=True)
    params = [p for p in sig.parameters.values() if p.name != "preset"]
    del train.__annotations__["preset"]
    if presets:
        opt = typer.Option("--preset", help=f"Model size preset: {' | '.join(presets)} (explicit widths win).")
        train.__annotations__["preset"] = Annotated[Optional[str], opt]
        params.append(inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=train.__annotations__["preset"]))
    train.__signature__ = sig.replace(parameters=params)  # what Typer reads: --preset only where it means something
    return train


def report_run(result: Any) -> None:
    """End-of-training summary, the same for every task: held-out metrics (or the last validation), paths."""
    if result.test is not None:
        m = result.test
        print_metrics(m, title=f"{m.get('split', 'test')} split ({Path(str(m.get('checkpoint', ''))).name})")
    elif result.metrics:
        console.print(metrics_table(result.metrics, "Validation (last epoch)"))
    score = getattr(result, "best_score", None)
    chosen = f" ({result.monitor} = {_fmt(score, False)})" if score is not None else ""
    console.print(f"best: [bold]{result.best}[/]{chosen}  last: {result.last}  wall time: {result.seconds:.1f} s",
                  soft_wrap=True)  # paths on one line: a log can be grepped
    console.print(f"run directory: [bold]{result.run_dir}[/]", soft_wrap=True)


def _fmt(v: Any, percent: bool) -> str:
    if isinstance(v, float):
        return f"{100 * v:.2f}" if percent else f"{v:.4f}"
    return "-" if v is None else str(v)


def metrics_table(metrics: Mapping[str, Any], title: str = "Metrics", percent: bool = False) -> Table:
    """Two-column rich table of the scalar entries of ``metrics`` (dicts / lists are skipped)."""
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value" + (" (%)" if percent else ""), justify="right")
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            t.add_row(k, _fmt(v, percent))
    return t


def per_class_table(per_class: Mapping[str, Mapping[str, Any]], title: str = "Per class",
                    percent: bool = False) -> Table:
    """Rich table with one row per class and one column per metric key (``{"cls": {"accuracy": ..}}``)."""
    cols: list[str] = []
    for row in per_class.values():
        for k in row:
            if k not in cols:
                cols.append(k)
    t = Table(title=title)
    t.add_column("class")
    for c in cols:
        t.add_column(c, justify="right")
    for name, row in per_class.items():
        t.add_row(str(name), *[_fmt(row.get(c), percent and c != "support") for c in cols])
    return t


def print_metrics(metrics: Mapping[str, Any], title: str = "Metrics", json_path: str | Path | None = None,
                  per_class_key: str = "per_class") -> None:
    """Print the scalar metrics (and the per-class table when present); write JSON when asked."""
    console.print(metrics_table(metrics, title))
    pc = metrics.get(per_class_key)
    if isinstance(pc, Mapping) and pc:
        console.print(per_class_table(pc))
    if json_path is not None:
        p = write_json(dict(metrics), json_path)
        console.print(f"metrics written to [bold]{p}[/]")
