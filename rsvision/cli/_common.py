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

import dataclasses
import glob
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping, Optional, Sequence

import typer
import yaml
from rich.console import Console
from rich.table import Table

from rsvision.errors import ConfigError, DataError
from rsvision.tasks.common import write_json  # noqa: F401  (re-exported for CLI modules)

__all__ = [
    "console", "ConfigOpt", "DataOpt", "ModelOpt", "ImgSizeOpt", "EpochsOpt", "BatchSizeOpt", "OutOpt",
    "ResumeOpt", "PretrainedOpt", "DeviceOpt", "PrecisionOpt", "SeedOpt", "MaxTimeOpt", "SetOpt", "CheckpointOpt",
    "EvalDataOpt", "JsonOpt", "InputsArg", "PredictOutOpt", "TopKOpt", "COMMON_OVERRIDES",
    "train_overrides", "parse_set", "load_yaml", "deep_merge", "set_dotted", "from_dict", "load_config",
    "expand_inputs", "write_json", "metrics_table", "print_metrics", "per_class_table",
]

console = Console()

# --- options (Annotated aliases: use as `name: Alias = default`) ----------------------------------
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config; other options override it.")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Dataset root directory.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Model name (rsvision or timm).")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", help="Training image size in pixels.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Maximum number of epochs.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Batch size per device.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run directory (checkpoints, config, metrics, plots).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/last.ckpt.")]
PretrainedOpt = Annotated[Optional[Path], typer.Option(
    "--pretrained", help="Backbone or full checkpoint (official, MMRotate, timm or rsvision format).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:<i>.")]
PrecisionOpt = Annotated[Optional[str], typer.Option("--precision", help="32 | 16-mixed | bf16-mixed.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
MaxTimeOpt = Annotated[Optional[str], typer.Option(
    "--max-time", help="Hard training budget: minutes or DD:HH:MM:SS (kept across --resume).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any config field: --set optim.lr=0.001 (repeatable; value parsed as YAML).")]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="rsvision checkpoint (.ckpt).")]
EvalDataOpt = Annotated[Optional[Path], typer.Option("--data", help="Dataset to evaluate on.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write the metrics as JSON to this file.")]
InputsArg = Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")]
PredictOutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output directory.")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="How many classes to show per image.")]

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


def parse_set(items: Iterable[str] | None) -> dict[str, Any]:
    """``["optim.lr=0.001", "data.bands=[0,1,2]"]`` -> ``{"optim.lr": 0.001, ...}`` (values as YAML)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = _yaml_value(value)
    return out


def _yaml_value(text: str) -> Any:
    """YAML scalar with the YAML-1.1 gap fixed: ``1e-3`` is a float, not a string."""
    if not text.strip():
        return None
    v = yaml.safe_load(text)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path=path)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ConfigError(f"invalid YAML: {exc}", path=path, line=None if line is None else line + 1) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("a config file must be a YAML mapping", path=path)
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins; neither input is modified."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "trainer.max_epochs", 3)`` creating intermediate dicts."""
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _shallow_fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def from_dict(cls: type, data: Mapping[str, Any], where: str = "", path: str | Path | None = None) -> Any:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys raise ConfigError naming them.

    Nested dataclass fields are built recursively; other values are taken as they are (YAML
    already typed them), with ints accepted where floats are declared.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"section {where or cls.__name__!r} must be a mapping, got {type(data).__name__}", path=path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"valid: {', '.join(sorted(fields))}", path=path)
    kwargs = {}
    for name, value in data.items():
        tp = _strip_optional(hints.get(name, Any))
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            f = fields[name]
            if f.default_factory is not dataclasses.MISSING:  # keep the section's own defaults
                value = deep_merge(_shallow_fields(f.default_factory()), value)
            value = from_dict(tp, value, f"{where}.{name}" if where else name, path)
        elif isinstance(value, str) and tp in (float, int):  # `lr: 1e-3` is a str in YAML 1.1
            try:
                value = tp(float(value)) if tp is int else float(value)
            except ValueError as exc:
                key = f"{where}.{name}" if where else name
                raise ConfigError(f"{key} must be a number, got {value!r}", path=path) from exc
        kwargs[name] = value
    return cls(**kwargs)


def load_config(path: str | Path | None, cls: type | None = None, overrides: Mapping[str, Any] | None = None,
                defaults: Mapping[str, Any] | None = None) -> Any:
    """``defaults`` <- YAML file <- dotted ``overrides`` -> dataclass ``cls`` (or a dict when None)."""
    data: dict[str, Any] = dict(defaults or {})
    if path is not None:
        data = deep_merge(data, load_yaml(path))
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    if cls is None:
        return data
    return from_dict(cls, data, path=path)


def expand_inputs(inputs: Sequence[str | Path], extensions: Sequence[str] | None = None,
                  recursive: bool = False) -> list[Path]:
    """Files, folders (their image files, sorted) and glob patterns -> de-duplicated file list.

    Raises DataError naming the first input that matches nothing.
    """
    if extensions is None:
        from rsvision.data.raster import IMAGE_EXTENSIONS as extensions  # noqa: N811
    exts = {e.lower() for e in extensions}
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        rp = p.resolve()
        if rp not in seen:
            seen.add(rp)
            out.append(p)

    for item in inputs:
        p = Path(item)
        found: list[Path] = []
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(q for q in it if q.is_file() and q.suffix.lower() in exts)
        elif p.is_file():
            found = [p]
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(str(item), recursive=True)
                           if Path(q).is_file() and Path(q).suffix.lower() in exts)
        if not found:
            raise DataError("no input images found", path=item)
        for q in found:
            add(q)
    return out


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
