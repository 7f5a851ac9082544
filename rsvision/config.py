"""Configuration: YAML files mapped strictly onto dataclasses, and the optimiser section every task shares.

Every task's config is a dataclass of sections (``data``, ``model``, ``optim``, ``trainer`` and the
task's own); :func:`load_config` reads ``defaults <- YAML <- --set overrides`` into it and rejects
unknown keys with the file and the valid names, so a typo never trains silently with a default.

:class:`OptimConfig` is the one optimiser / schedule section: AdamW, a linear warmup counted in
optimizer steps (with a ``max_time`` budget also ended by its share of the clock), then ``cosine``
(per step over the run; with a budget, like ``time``), ``time`` (cosine that also follows the
``max_time`` budget, so a time-limited run ends annealed whatever the machine speed), ``step``
(x ``gamma`` at epoch ``milestones``) or ``constant``. :func:`lr_factor` is that schedule as one
pure function, used by every task through :class:`rsvision.tasks.base.BaseTask`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from rsvision.errors import ConfigError

__all__ = [
    "parse_set", "load_yaml", "deep_merge", "set_dotted", "from_dict", "load_config",
    "OptimConfig", "SCHEDULES", "lr_factor", "warmup_factor", "check_range",
]

SCHEDULES = ("cosine", "time", "step", "constant")
#: keys of the first release's configs -> their name now (named in the error for an old config)
RENAMED = {"warmup_iters": "warmup_steps", "warmup_epochs": "warmup_steps (optimizer steps: epochs x steps per epoch)"}


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
        renamed = "".join(f"; {prefix}{k} is now {prefix}{RENAMED[k]}" for k in unknown if k in RENAMED)
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}{renamed}; "
                          f"valid: {', '.join(sorted(fields))}", path=path)
    kwargs = {}
    for name, value in data.items():
        tp = _strip_optional(hints.get(name, Any))
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            f = fields[name]
            if f.default_factory is not dataclasses.MISSING:  # keep the section's own defaults
                value = deep_merge(_shallow_fields(f.default_factory()), value)
            value = from_dict(tp, value, f"{where}.{name}" if where else name, path)
        elif value is not None:
            value = _scalar(f"{where}.{name}" if where else name, tp, value, path)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a section's own checks (__post_init__): name the file too
        if exc.path is None and path is not None:
            raise ConfigError(str(exc), path=path) from exc
        raise


def _scalar(key: str, tp: Any, value: Any, path: str | Path | None) -> Any:
    """A YAML / --set value checked against the field's declared type (ints, floats, bools, strings)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}", path=path)
        return value
    if tp in (int, float):
        if isinstance(value, str):  # `lr: 1e-3` is a str in YAML 1.1
            try:
                value = float(value)
            except ValueError as exc:
                raise ConfigError(f"{key} must be a number, got {value!r}", path=path) from exc
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}", path=path)
        if tp is int:
            if not float(value).is_integer():
                raise ConfigError(f"{key} must be a whole number, got {value!r}", path=path)
            return int(value)
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `precision: 32`
    return value


def load_config(path: str | Path | None, cls: type | None = None, overrides: Mapping[str, Any] | None = None,
                defaults: Mapping[str, Any] | None = None) -> Any:
    """``defaults`` <- YAML file <- dotted ``overrides`` -> dataclass ``cls`` (or a dict when None)."""
    data: dict[str, Any] = copy.deepcopy(dict(defaults or {}))  # overrides must not leak into the caller's dict
    if path is not None:
        data = deep_merge(data, load_yaml(path))
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    if cls is None:
        return data
    return from_dict(cls, data, path=path)


def check_range(key: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """A ``ConfigError`` naming ``key`` unless ``low <= value <= high`` (``low < value`` with ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = ([f"{'>' if low_open else '>='} {low}"] if low is not None else []) + (
            [f"<= {high}"] if high is not None else [])
        raise ConfigError(f"{key} must be a number {' and '.join(bounds) or 'finite'}, got {value!r}")


@dataclass
class OptimConfig:
    """The ``optim:`` section shared by every task (tasks add their own fields by subclassing).

    ``lr`` is the base learning rate; with ``base_batch`` set it is the rate for that total batch and
    is scaled linearly to the real one (devices x batch x accumulation), as the detection papers do.
    ``warmup_steps`` optimizer steps ramp the factor linearly from ``warmup_ratio`` to 1 (None: one
    step's worth, ``1 / (warmup_steps + 1)``, so the first step already learns). ``milestones`` are
    epochs for ``schedule: step`` (None: 8/12 and 11/12 of the run, the 12-epoch detection schedule).
    ``no_decay_norm_bias`` excludes norms and biases from weight decay (timm's parameter groups).
    ``layer_decay`` (e.g. 0.9, BEiT / MTP) scales encoder layer ``i`` of ``L``'s lr by
    ``layer_decay ** (L - i)`` (decoders and heads keep the full lr; ``rsvision.models.optim``).
    """

    lr: float = 1e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float | None = None
    min_lr_ratio: float = 0.01
    milestones: list[int] | None = None
    gamma: float = 0.1
    base_batch: int | None = None
    no_decay_norm_bias: bool = False
    layer_decay: float | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")
        if int(self.warmup_steps) < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not float(self.lr) > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")

    def milestones_for(self, max_epochs: int) -> list[int]:
        if self.milestones is not None:
            return [int(m) for m in self.milestones]
        e = max(int(max_epochs or 1), 1)
        return [max(1, round(e * 8 / 12)), max(1, round(e * 11 / 12))]


def warmup_factor(step: int, warmup_steps: int, warmup_ratio: float | None = None) -> float:
    """Linear warmup multiplier: ``ratio + (1 - ratio) * step / warmup_steps`` below ``warmup_steps``, else 1.

    ``ratio=None`` is ``1 / (warmup_steps + 1)``, i.e. ``(step + 1) / (warmup_steps + 1)``.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    r = 1.0 / (warmup_steps + 1) if warmup_ratio is None else float(warmup_ratio)
    return r + (1.0 - r) * step / warmup_steps


def lr_factor(cfg: OptimConfig, step: int, total_steps: int, epoch: int = 0, max_epochs: int = 1,
              budget: float | None = None) -> float:
    """Multiplier of the base lr at optimizer ``step`` (of ``total_steps``) in ``epoch``.

    ``budget``: fraction of the ``max_time`` budget used, None without one. With a budget the warmup
    ends after ``warmup_steps`` steps or the same share of the budget (``warmup_steps / total_steps``),
    whichever comes first, so a 4-minute run of a 100-epoch config does not spend itself warming up;
    ``cosine`` and ``time`` then anneal by whichever of steps and time is further along, so a
    time-limited run ends annealed. Warmup multiplies the main schedule, which for ``cosine`` /
    ``time`` starts after the warmup.
    """
    warm = min(int(cfg.warmup_steps), max(int(total_steps) - 1, 0))
    progress = step / warm if warm else 1.0  # of the warmup, by steps or by the clock
    if budget is not None and warm:
        progress = max(progress, budget * max(int(total_steps), 1) / warm)
    r = 1.0 / (warm + 1) if cfg.warmup_ratio is None else float(cfg.warmup_ratio)
    f = 1.0 if progress >= 1 else r + (1.0 - r) * progress  # warmup_factor, on the fractional progress
    if cfg.schedule == "step":
        return f * cfg.gamma ** sum(epoch >= m for m in cfg.milestones_for(max_epochs))
    if cfg.schedule == "constant" or progress < 1:
        return f
    t = min(max(step - warm, 0) / max(total_steps - warm, 1), 1.0)
    if budget is not None:
        t = max(t, budget)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
