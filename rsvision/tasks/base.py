"""The task contract: one LightningModule base, a registry by task name, one loader, one verb each.

Every task family (``classify``, ``detect``, ``segment``, ``change``, ...) is one module in
``rsvision/tasks/`` holding a :class:`BaseTask` subclass decorated with :func:`register_task`.
Its constructor takes the same sections for every task::

    Task(model={...}, data={...}, optim={...}, **sections)   # e.g. sliding={...} for dense tasks

``model`` says how to build the network, ``data`` what it reads (classes, bands, per-band mean /
std, image size, ...: everything ``predict`` needs), ``optim`` the shared
:class:`rsvision.config.OptimConfig` (or the task's subclass of it). ``hyper_parameters`` are saved
once, flat: ``{"task", "format_version", "model", "optim", <sections>, **data}`` (data keys at the
top level, as checkpoints of the first release had them), so :func:`load_task` rebuilds any rsvision
checkpoint from the file alone, the first release's three layouts included (``upgrade_hparams``).

The verbs, the same for every task (the CLI calls only these; each runs with freed memory kept for
reuse, :func:`rsvision.runtime.kept_memory`, as the ``rsvision`` command does)::

    result = train(config)                       # -> RunResult(run_dir, best, last, metrics)
    task = load_task("run/best.ckpt")            # any rsvision checkpoint
    metrics = evaluate(task, "data/val")         # the CONVENTIONS metric dict
    for r in predict(task, ["a.tif"], "out/"):   # per-input results; outputs written to out/
        ...

A subclass provides the hooks: ``configure_model`` (build ``self.model``), ``training_step`` /
``validation_step`` (losses and metrics), and the class-level recipe (``config_class``,
``build_datamodule``, ``from_config``) plus ``evaluate`` / ``predict`` methods.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import lightning as L
import torch

from rsvision.config import OptimConfig, lr_factor
from rsvision.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "BaseTask", "RunResult", "TASKS", "register_task", "task_class", "load_task", "train", "evaluate", "predict",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 2
# config.data field -> the hparams key a task stores it under, where the two names differ
CONFIG_ALIASES = {"classes": "class_names"}
TASKS: dict[str, type["BaseTask"]] = {}


def register_task(cls: type["BaseTask"]) -> type["BaseTask"]:
    """Class decorator: make a task findable by its ``name`` (checkpoint tag, CLI group)."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    TASKS[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every module of ``rsvision.tasks`` once, so their ``@register_task`` classes exist."""
    import rsvision.tasks as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"rsvision.tasks.{info.name}")


def task_class(name: str) -> type["BaseTask"]:
    """The registered task class called ``name`` (``classify``, ``detect``, ``segment``, ``change``)."""
    if name not in TASKS:
        _discover()
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


@dataclass
class RunResult:
    """What :func:`train` returns: the run directory, its checkpoints and the final metrics."""

    run_dir: Path
    best: Path | None
    last: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)  # last validation values ("val/...")
    test: dict[str, Any] | None = None  # held-out split metrics, when the task scores one
    seconds: float = 0.0
    monitor: str | None = None  # the metric that chose ``best`` ...
    best_score: float | None = None  # ... and its value there

    def __getitem__(self, key: str) -> Any:
        """Dict-style access as the first release's ``train`` returned (``result["best"]``, ``["test"]``)."""
        if key in ("run_dir", "best", "last"):
            v = getattr(self, key)
            return None if v is None else str(v)
        if key == "test" and self.test is not None:
            return self.test
        if key == "seconds":
            return self.seconds
        if key in self.metrics:
            return self.metrics[key]
        raise KeyError(key)

    def __contains__(self, key: str) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint to use: best when one was selected, else last."""
        return self.best if self.best is not None and self.best.exists() else self.last


class BaseTask(L.LightningModule):
    """Base of every rsvision task (the role of TorchGeo's ``trainers/base.py``).

    Class attributes: ``name`` (registry key and checkpoint tag), ``config_class`` (the dataclass of
    a whole ``train`` config), ``optim_class`` (the ``optim:`` section), ``sections`` (names of the
    extra constructor sections), ``monitor`` / ``mode`` (what selects ``best.ckpt``).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None
    optim_class: ClassVar[type] = OptimConfig
    sections: ClassVar[tuple[str, ...]] = ()
    monitor: ClassVar[str] = "val/loss"
    mode: ClassVar[str] = "min"

    def __init__(self, model: Mapping[str, Any], data: Mapping[str, Any], optim: Mapping[str, Any] | None = None,
                 **sections: Any):
        super().__init__()
        unknown = sorted(set(sections) - set(self.sections))
        if unknown:
            raise ConfigError(f"{type(self).__name__} got unknown section(s) {unknown}; valid: {list(self.sections)}")
        clash = sorted(set(data) & {"task", "format_version", "model", "optim", *self.sections})
        if clash:
            raise ConfigError(f"data keys {clash} are reserved for the task's sections")
        self.optim_cfg = self.optim_class(**dict(optim or {}))
        from rsvision.tasks.common import to_plain

        hp = {"task": self.name, "format_version": FORMAT_VERSION, "model": dict(model), **dict(data),
              "optim": to_plain(self.optim_cfg), **{k: sections.get(k) for k in self.sections}}
        self.save_hyperparameters(to_plain(hp))
        self.model = self.configure_model()

    # --- hooks ---------------------------------------------------------------------------------
    def configure_model(self) -> torch.nn.Module:
        """Build and return the network from ``self.hparams`` (``model`` and data keys)."""
        raise NotImplementedError

    def net(self) -> torch.nn.Module:
        """The network used for evaluation and prediction (e.g. the EMA of the weights)."""
        return self.model

    def inference_model(self, fast: bool = True) -> torch.nn.Module:
        """The network for evaluation / prediction: with ``fast``, :func:`optimize_for_inference`'s copy
        of :meth:`net` (LSKNet / HAKSNet backbones: same outputs to ~1e-5, faster on CPUs), made once per
        weights and device; the plain network when ``fast`` is off or the model has no fast path."""
        net = self.net()
        if not fast:
            return net.eval()
        key = (id(net), self.global_step, str(self.device), getattr(self, "_weights_version", 0))
        cached = getattr(self, "_fast_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        from rsvision.models.fast import optimize_for_inference

        try:
            fast_net = optimize_for_inference(net)
        except TypeError:  # no backbone with a fast path (any timm model): the plain network
            fast_net = net.eval()
        object.__setattr__(self, "_fast_cache", (key, fast_net))  # not a submodule: not in state_dict
        return fast_net

    def load_state_dict(self, *args: Any, **kwargs: Any):
        self._weights_version = getattr(self, "_weights_version", 0) + 1  # a fast copy is stale now
        return super().load_state_dict(*args, **kwargs)

    def batch_size(self) -> int:
        """Per-device training batch size (for ``optim.base_batch`` lr scaling)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        cfg = getattr(dm, "cfg", None)
        return int(getattr(cfg, "batch_size", None) or self.hparams.get("batch_size") or 1)

    def max_epochs(self) -> int:
        """The run's epoch count (the trainer's; 12, the detection papers' schedule, without one)."""
        tr = self._trainer
        return int(tr.max_epochs) if tr is not None and tr.max_epochs and tr.max_epochs > 0 else 12

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups: norm / bias exclusion (``no_decay_norm_bias``), per-layer
        ``lr_scale`` (``layer_decay``); see ``rsvision.models.optim.param_groups``."""
        from rsvision.models.optim import param_groups

        o = self.optim_cfg
        return param_groups(self.model, o.weight_decay, o.no_decay_norm_bias, getattr(o, "layer_decay", None))

    def configure_optimizers(self):
        o = self.optim_cfg
        tr = self._trainer
        lr = float(o.lr)
        if o.base_batch:
            world = tr.world_size if tr is not None else 1
            accum = tr.accumulate_grad_batches if tr is not None else 1
            lr = lr * self.batch_size() * world * accum / o.base_batch
        groups = self.param_groups()
        for g in groups:  # layer decay: each group's base lr, which the schedule's factor then scales
            g["lr"] = lr * g.pop("lr_scale", 1.0)
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=o.weight_decay)
        total = max(int(tr.estimated_stepping_batches), 1) if tr is not None else 1
        max_epochs = self.max_epochs()

        def factor(step: int) -> float:
            from rsvision.tasks.common import budget_progress

            budget = budget_progress(self._trainer)  # None without max_time
            epoch = self._trainer.current_epoch if self._trainer is not None else 0
            return lr_factor(o, step, total, epoch, max_epochs, budget)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- checkpoints -------------------------------------------------------------------------------
    @classmethod
    def upgrade_hparams(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """Turn an older checkpoint's ``hyper_parameters`` into this release's layout (default: as is)."""
        return hp

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "BaseTask":
        """Rebuild the task from saved ``hyper_parameters`` (upgraded from older layouts first)."""
        hp = cls.upgrade_hparams(dict(hp))
        sections = {k: hp.pop(k) for k in cls.sections if k in hp}
        model, optim = hp.pop("model"), hp.pop("optim", None)
        hp.pop("task", None)
        hp.pop("format_version", None)
        return cls(model=model, data=hp, optim=optim, **sections)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], path: str | Path | None = None) -> None:
        """Load a Lightning ``state_dict`` strictly; a mismatch names the first missing / unexpected keys."""
        try:
            self.load_state_dict(self.upgrade_state_dict(dict(state_dict)))
        except (RuntimeError, KeyError) as exc:
            own, theirs = set(self.state_dict()), set(state_dict)
            missing, unexpected = sorted(own - theirs), sorted(theirs - own)
            raise CheckpointError(f"weights do not fit the model its hyper_parameters describe (made by another "
                                  f"rsvision version?): missing {missing[:3]}, unexpected {unexpected[:3]}, "
                                  f"{len(missing)}/{len(unexpected)} in all", path=path) from exc

    def upgrade_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename an older checkpoint's weight keys (default: as is)."""
        return sd

    # --- training recipe (class level) -------------------------------------------------------------
    @classmethod
    def build_datamodule(cls, cfg: Any) -> L.LightningDataModule:
        """The datamodule of a train config, set up far enough to know classes / bands / statistics."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: Any, dm: L.LightningDataModule) -> "BaseTask":
        """A fresh task for a train config; ``cfg`` is completed with what ``dm`` resolved."""
        raise NotImplementedError

    def resolve_config(self, config: Any) -> None:
        """Fill the ``data`` fields a config left None (auto-detected classes, band statistics, ...)
        with what the task resolved, so the run's ``config.yaml`` alone describes and repeats the run."""
        import dataclasses

        from rsvision.tasks.common import to_plain

        d = getattr(config, "data", None)
        if d is None or not dataclasses.is_dataclass(d):
            return
        for f in dataclasses.fields(d):
            key = next((k for k in (f.name, CONFIG_ALIASES.get(f.name)) if k and self.hparams.get(k) is not None), None)
            if getattr(d, f.name) is None and key is not None:
                setattr(d, f.name, to_plain(self.hparams[key]))

    def trainer_defaults(self) -> dict[str, Any]:
        """``lightning.Trainer`` arguments this task needs for this run (callers' overrides win)."""
        return {}

    def after_fit(self, cfg: Any, dm: L.LightningDataModule, result: RunResult) -> None:
        """Work after training on rank 0 (e.g. scoring the test split into ``result.test``)."""

    # --- verbs -------------------------------------------------------------------------------------
    def evaluate(self, data: Any, **options: Any) -> dict[str, Any]:
        """The CONVENTIONS metric dict of this task over ``data``."""
        raise NotImplementedError

    def predict(self, inputs: Sequence[Any], out: str | Path | None = None, **options: Any) -> Iterator[dict]:
        """Yield one result dict per input (``{"input", "files", ...}``), writing outputs into ``out``."""
        raise NotImplementedError


# --- the verbs ---------------------------------------------------------------------------------------
def _task_of_hparams(hp: Mapping[str, Any]) -> str | None:
    name = hp.get("task")
    if name is None and "class_names" in hp and "model" in hp:  # first-release detection checkpoints
        return "detect"
    return name


def load_task(path: str | Path, device: str | torch.device = "cpu") -> BaseTask:
    """Any rsvision checkpoint -> its task, weights loaded, in eval mode on ``device``.

    Reads with ``torch.load(weights_only=True)``; raises :class:`CheckpointError` naming the file for
    a missing, unreadable, foreign or mismatched checkpoint.
    """
    from rsvision.models.checkpoints import read_checkpoint
    from rsvision.runtime import resolve_device

    ckpt = read_checkpoint(path)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "model" not in hp or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError("not an rsvision task checkpoint (no hyper_parameters / state_dict)", path=path)
    name = _task_of_hparams(hp)
    try:
        cls = task_class(str(name))
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint is for task {name!r}, which this rsvision does not know", path=path) from exc
    try:
        task = cls.from_hparams(hp)
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"hyper_parameters do not describe a {name} task: {exc}", path=path) from exc
    task.load_weights(ckpt["state_dict"], path)
    task.checkpoint_path = Path(path)
    return task.eval().to(resolve_device(device))


def train(config: Any, **trainer_overrides: Any) -> RunResult:
    """Train the task a config dataclass belongs to into ``config.trainer.out`` (resumable).

    ``trainer_overrides`` go to ``lightning.Trainer`` (tests pass ``limit_train_batches``, callbacks).
    """
    import time

    from rsvision.tasks.common import LAST, WriteConfigAtStart, build_trainer, claim_run_dir, fit, set_threads

    cls = next((c for c in _all_tasks() if c.config_class is type(config)), None)
    if cls is None:
        raise ConfigError(f"no task trains a {type(config).__name__}")
    from rsvision.runtime import check_device, kept_memory

    t = config.trainer
    t.validate()
    check_device(t.device)
    set_threads(t.threads)
    with kept_memory(), claim_run_dir(t):
        L.seed_everything(t.seed, workers=True, verbose=False)  # data splits and model init are part of the run
        dm = cls.build_datamodule(config)
        _write_splits(dm, Path(t.out))
        task = cls.from_config(config, dm)
        task.resolve_config(config)
        if t.strategy == "ddp" and any(getattr(m, "conditional_compute", False) for m in task.modules()):
            # parameters some steps leave without a gradient: MoE experts no token chose, MTP heads of a
            # dataset without that task's labels
            t.strategy = "ddp_find_unused_parameters_true"
        t.monitor, t.mode = t.monitor or task.monitor, t.mode or task.mode
        overrides = {**task.trainer_defaults(), **trainer_overrides}
        overrides["callbacks"] = [WriteConfigAtStart(t.out, config), *(overrides.get("callbacks") or [])]
        trainer = build_trainer(t, **overrides)
        t0 = time.time()
        best = fit(trainer, task, dm, t)
        out = Path(t.out)
        result = RunResult(run_dir=out, best=Path(best) if best else None,
                           last=out / LAST if (out / LAST).exists() else None, seconds=time.time() - t0)
        result.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        score = getattr(trainer.checkpoint_callback, "best_model_score", None)
        result.monitor, result.best_score = t.monitor, None if score is None else float(score)
        if trainer.is_global_zero and result.checkpoint is not None:
            task.after_fit(config, dm, result)
    return result


def _write_splits(dm: Any, out: Path) -> None:
    """``splits.json`` of a datamodule that records its split (rank 0; ``eval --split`` reads it)."""
    from lightning.pytorch.utilities import rank_zero_only

    record = getattr(dm, "split_record", None)
    if callable(record) and rank_zero_only.rank == 0:
        from rsvision.data.splits import SPLITS_FILE, write_splits

        write_splits(record(), out / SPLITS_FILE)


def _all_tasks() -> list[type[BaseTask]]:
    _discover()
    return list(TASKS.values())


def evaluate(task: BaseTask, data: Any, **options: Any) -> dict[str, Any]:
    """The CONVENTIONS metric dict of ``task`` over ``data`` (a dataset folder, CSV, dataset ...)."""
    from rsvision.runtime import kept_memory

    with kept_memory():
        return task.evaluate(data, **options)


def predict(task: BaseTask, inputs: Sequence[Any], out: str | Path | None = None, **options: Any) -> Iterator[dict]:
    """Yield per-input results of ``task`` over ``inputs`` (files, folders, globs), writing into ``out``."""
    from rsvision.runtime import kept_memory

    with kept_memory():
        yield from task.predict(inputs, out, **options)
