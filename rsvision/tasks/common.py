"""Pieces every task's training shares: the Trainer, the run directory and reproducible resume.

A *run directory* (CONVENTIONS) holds ``best.ckpt``, ``last.ckpt``, the fully resolved
``config.yaml``, ``metrics.csv`` (Lightning's CSVLogger) and PNG curves plotted at the end.
Every task builds its Trainer with :func:`build_trainer` from a :class:`TrainerOptions` (the
``trainer:`` section of a task config) and trains with :func:`fit`, so runs look the same for
classification, detection, segmentation and change detection::

    opts = TrainerOptions(out="runs/x", max_epochs=20, max_time=25, monitor="val/acc", mode="max")
    write_config(opts.out, full_config_dict)
    trainer = build_trainer(opts)
    fit(trainer, module, datamodule, opts)          # resumes from last.ckpt when opts.resume

Why the seeding callback: Lightning restores weights, optimizer, scheduler, loop counters and
callback state from ``last.ckpt`` but not the random streams. :class:`SeedEveryStep` re-seeds
torch / numpy / random from ``(seed, epoch)`` at each epoch start and ``(seed, step)`` at each
batch, so the sampler order, augmentations, mixup and dropout after ``--resume`` are those the
uninterrupted run would have drawn: a killed run continues to the same result.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from rsvision.data.samplers import seed_all
from rsvision.errors import ConfigError
from rsvision.outputs import atomic_write
from rsvision.runtime import parse_device

log = logging.getLogger(__name__)

BEST = "best.ckpt"
LAST = "last.ckpt"
CONFIG = "config.yaml"
METRICS = "metrics.csv"

__all__ = [
    "TrainerOptions", "parse_max_time", "build_trainer", "fit", "resume_path",
    "write_config", "write_json", "to_plain", "claim_run_dir", "WriteConfigAtStart", "SeedEveryStep", "CloseEpochOnResume", "close_saved_epoch", "EpochTimeBudget", "budget_progress", "PlotCurvesAtEnd", "set_threads",
    "BEST", "LAST", "CONFIG", "METRICS",
]


@dataclass
class TrainerOptions:
    """The ``trainer:`` section shared by every task config (CLI overrides map onto it).

    ``max_time`` is a hard wall-clock budget: minutes as a number, or ``"DD:HH:MM:SS"``; the
    elapsed time is stored in ``last.ckpt`` so a resumed run keeps counting from there.
    ``monitor``/``mode`` choose ``best.ckpt``. ``devices`` is the number of processes (or ``"auto"``)
    and ``strategy`` any Lightning strategy (``"ddp"``, ``"ddp_spawn"``, ...); multi-node runs
    add ``num_nodes`` through ``extra`` (a documented Lightning setting, untested here).
    """

    out: str = "runs/run"
    max_epochs: int = 10
    max_time: float | str | None = None
    device: str = "auto"
    devices: int | str | None = None
    strategy: str = "auto"
    precision: str = "32"
    seed: int = 0
    resume: bool = False
    monitor: str | None = None  # None: the task's own (BaseTask.monitor / mode)
    mode: str | None = None
    progress: str = "rich"  # rich | tqdm | none
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    threads: int | None = None  # torch intra-op threads (None: leave torch's default)
    extra: dict[str, Any] = field(default_factory=dict)  # any other Trainer(**kwargs)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field where the user set it (also called by ``train`` after attribute edits)."""
        def bad(key: str, want: str, got: Any) -> ConfigError:
            return ConfigError(f"trainer.{key} must be {want}, got {got!r}")

        for key, low in (("max_epochs", 1), ("log_every_n_steps", 1), ("accumulate_grad_batches", 1), ("seed", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise bad(key, f"a whole number >= {low}", v)
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise bad("threads", "a whole number >= 1", self.threads)
        self.precision = str(self.precision)
        if self.precision not in PRECISIONS:
            raise bad("precision", " | ".join(PRECISIONS), self.precision)
        if str(self.progress).lower() not in ("rich", "tqdm", "none"):
            raise bad("progress", "rich | tqdm | none", self.progress)
        if self.mode not in (None, "min", "max"):
            raise bad("mode", "min | max", self.mode)
        if self.gradient_clip_val is not None and not float(self.gradient_clip_val) > 0:
            raise bad("gradient_clip_val", "> 0", self.gradient_clip_val)
        parse_max_time(self.max_time)
        parse_device(self.device)  # the syntax; whether it exists is checked when training starts


PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "64-true")


def set_threads(n: int | None) -> None:
    """Limit torch's CPU threads (shared machines, several concurrent runs)."""
    if n:
        torch.set_num_threads(int(n))
        os.environ.setdefault("OMP_NUM_THREADS", str(int(n)))


def parse_max_time(value: float | str | None) -> _dt.timedelta | None:
    """Minutes (number or numeric string) or ``[[DD:]HH:]MM:SS`` -> timedelta (None: no limit)."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, (int, float)):
        return _dt.timedelta(minutes=float(value))
    s = str(value).strip()
    try:
        return _dt.timedelta(minutes=float(s))
    except ValueError:
        pass
    parts = s.split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError as exc:
        raise ConfigError(f"bad max_time {value!r}: minutes or DD:HH:MM:SS") from exc
    nums = [0.0] * (4 - len(nums)) + nums
    if len(nums) != 4:
        raise ConfigError(f"bad max_time {value!r}: minutes or DD:HH:MM:SS")
    d, h, m, sec = nums
    return _dt.timedelta(days=d, hours=h, minutes=m, seconds=sec)


def to_plain(obj: Any) -> Any:
    """Dataclasses / Paths / tuples / numpy scalars -> plain YAML- and ``weights_only``-safe types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def write_config(out: str | Path, config: Any, name: str = CONFIG) -> Path:
    """Write the fully resolved config (dataclass or dict) as YAML into the run directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    if rank_zero_only.rank == 0:
        with atomic_write(path) as f:
            yaml.safe_dump(to_plain(config), f, sort_keys=False)
    return path


def _jsonable(obj: Any) -> Any:
    obj = to_plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write metrics (dataclass / numpy / torch values converted, NaN -> null) as indented JSON; a long
    ``per_image`` list goes to a JSON-lines file beside it (:func:`rsvision.outputs.spill_per_image`)."""
    from rsvision.outputs import spill_per_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = spill_per_image(_jsonable(obj), path)
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    return path


class SeedEveryStep(Callback):
    """Re-seed python / numpy / torch at every epoch start and train batch (see module docstring)."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def _seed(self, trainer: L.Trainer, *key: int) -> None:
        seed_all(self.seed, trainer.global_rank, *key)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._seed(trainer, 0, trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._seed(trainer, 1, trainer.global_step)


class CloseEpochOnResume(Callback):
    """Resume a ``last.ckpt`` written at a train epoch's end (no validation) as a finished epoch.

    Why: with ``limit_val_batches: 0`` the checkpoint is written in ``on_train_epoch_end``, before
    Lightning (2.6) marks the epoch completed. Resumed by epochs, Lightning closes it itself; resumed
    under ``max_steps`` (iteration-based training) it restores the old epoch's batch counters and ends
    the next epoch after one batch, so the run goes on with other data and other weights than the
    uninterrupted one. Rewriting the loop state on load (before the loops restore it) makes both
    cases resume at the next epoch's first batch with fresh per-epoch counters.
    """

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        close_saved_epoch(checkpoint)


def close_saved_epoch(checkpoint: dict[str, Any]) -> bool:
    """Mark the epoch of a checkpoint saved at a train epoch's end completed (in place); True if it was one."""
    fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    ep, bp = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
    if not ep or not bp:
        return False
    e, b = ep["total"], bp["total"]
    at_epoch_end = (e["ready"] == e["started"] == e["processed"] == e["completed"] + 1 and bp.get("is_last_batch")
                    and b["ready"] == b["started"] == b["processed"] == b["completed"])
    if not at_epoch_end:
        return False
    for part in (ep["total"], ep["current"]):
        part["completed"] = part["processed"]

    def zero(progress: dict) -> None:
        for k in progress["current"]:
            progress["current"][k] = 0

    zero(bp)
    bp["is_last_batch"] = False
    if "epoch_loop.scheduler_progress" in fit:
        zero(fit["epoch_loop.scheduler_progress"])
    optim = fit.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
    for part in optim.values():
        zero(part)
    return True


def _timer(trainer: L.Trainer):
    from lightning.pytorch.callbacks import Timer

    return next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)


def budget_progress(trainer: L.Trainer | None) -> float | None:
    """Fraction of the ``max_time`` budget used so far (kept across ``--resume``); None without one."""
    timer = _timer(trainer) if trainer is not None else None
    if timer is None or timer._duration is None:
        return None
    return min(timer.time_elapsed("train") / max(timer._duration, 1e-9), 1.0)


class EpochTimeBudget(Callback):
    """With ``max_time``: stop at an epoch end when the next epoch would not fit in the budget.

    Lightning's own Timer stops mid-epoch, losing the partial epoch (it is never validated); this
    stops one epoch earlier instead, so every trained step is validated and can become best.ckpt.
    The Timer stays as the hard limit.
    """

    def __init__(self, margin: float = 1.1):
        self.margin = margin
        self.durations: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import time

        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import time

        self.durations.append(time.monotonic() - self._t0)
        timer = _timer(trainer)
        if timer is None or timer._duration is None:
            return
        left = timer.time_remaining("train")
        need = self.margin * max(self.durations[-3:])
        if left is not None and left < need and trainer.current_epoch + 1 < (trainer.max_epochs or 0):
            log.warning("time budget: %.0f s left < %.0f s per epoch; stopping after epoch %d",
                        left, need, trainer.current_epoch)
            trainer.should_stop = True


class PlotCurvesAtEnd(Callback):
    """At the end of ``fit`` (also after a time-budget stop) plot ``metrics.csv`` to PNG in the run dir."""

    def __init__(self, out: str | Path):
        self.out = Path(out)

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        for lg in trainer.loggers:
            lg.save()
        csv_path = self.out / METRICS
        if not csv_path.exists():
            return
        try:
            from rsvision.viz.plots import plot_training_curves

            plot_training_curves(csv_path, self.out)
        except Exception as exc:  # a plot must never fail a finished training run
            log.warning("could not plot %s: %s", csv_path, exc)


class _AppendingCSVLogger(CSVLogger):
    """CSVLogger writing straight into the run dir and *appending* to an existing metrics.csv.

    Lightning's writer deletes a non-empty log dir's metrics.csv; on resume we keep the rows of
    the epochs that ``last.ckpt`` contains (later rows, from the killed partial epoch, are dropped
    by :func:`fit` before training restarts).
    """

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        from lightning.pytorch.loggers.csv_logs import ExperimentWriter

        class _Writer(ExperimentWriter):
            def _check_log_dir_exists(self) -> None:
                if os.path.isfile(self.metrics_file_path):
                    with open(self.metrics_file_path, newline="") as f:
                        header = next(csv.reader(f), [])
                    self.metrics_keys = sorted(header)

        os.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _Writer(log_dir=self.log_dir)
        return self._experiment


def resume_path(opts: TrainerOptions) -> str | None:
    """``out/last.ckpt`` when resuming and it exists (an empty or new run directory starts afresh)."""
    p = Path(opts.out) / LAST
    return str(p) if opts.resume and p.exists() else None


def claim_run_dir(opts: TrainerOptions):
    """The run directory for this run (:func:`rsvision.outputs.claim_dir`): new or empty, or, with
    ``--resume``, one holding ``last.ckpt``; locked while training. DDP workers (rank > 0) only join."""
    import contextlib

    from rsvision.outputs import claim_dir

    out = Path(opts.out)
    if rank_zero_only.rank != 0:
        return contextlib.nullcontext(out)
    if opts.resume and out.is_dir() and any(out.iterdir()) and not (out / LAST).exists():
        raise ConfigError(f"--resume: {out} holds no {LAST} to resume from; choose a new --out", path=out)
    return claim_dir(out, exist_ok=opts.resume, what="--out", opt_in="--resume")


class WriteConfigAtStart(Callback):
    """Write the resolved ``config.yaml`` once training starts (after a resumed checkpoint has loaded),
    so a failed ``--resume`` leaves the run directory's config describing its checkpoints."""

    def __init__(self, out: str | Path, config: Any):
        self.out, self.config = Path(out), config

    def on_train_start(self, trainer, pl_module) -> None:
        write_config(self.out, self.config)


def _trim_metrics(out: Path, state: dict) -> None:
    """Drop metrics.csv rows logged after the checkpoint (the partial epoch of a killed run)."""
    csv_path = out / METRICS
    if not csv_path.exists():
        return
    step = int(state.get("global_step", 0))
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r.get("step", "") == "" or int(float(r["step"])) < step]
    with atomic_write(csv_path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _quiet_lightning() -> None:
    """Silence Lightning notices that are expected in a run directory (it holds config / splits)."""
    import warnings

    for msg in (r".*exists and is not empty.*", r".*LeafSpec.*", r".*is smaller than the logging interval.*",
                r".*does not have many workers.*"):
        warnings.filterwarnings("ignore", message=msg)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda r: "litlogger" not in r.getMessage() and "available:" not in r.getMessage())


def build_trainer(opts: TrainerOptions, callbacks: Iterable[Callback] = (), **overrides: Any) -> L.Trainer:
    """A Lightning Trainer writing the standard run directory of ``opts.out``.

    Adds: ModelCheckpoint (``best.ckpt`` on ``opts.monitor``, ``last.ckpt`` every epoch),
    CSVLogger -> ``metrics.csv``, a rich (or tqdm / no) progress bar, the ``max_time`` budget,
    :class:`SeedEveryStep` and :class:`PlotCurvesAtEnd`. ``overrides`` win over everything
    (tests pass ``limit_train_batches`` etc.).
    """
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    set_threads(opts.threads)
    _quiet_lightning()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(opts.seed, workers=True, verbose=False)
    accelerator, devices = parse_device(opts.device)
    if opts.devices not in (None, "", "auto"):
        devices = opts.devices
    # Two callbacks: Lightning 2.6 writes `save_last` only when a top-k checkpoint was written in the
    # same step, but resume needs last.ckpt after every epoch (and after a max_time stop).
    best = ModelCheckpoint(
        dirpath=str(out), filename=Path(BEST).stem, monitor=opts.monitor or "val/loss", mode=opts.mode or "min", save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    last = ModelCheckpoint(
        dirpath=str(out), filename=Path(LAST).stem, monitor=None, save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    # Without validation a `val/` metric never exists: no best.ckpt (Lightning would warn every epoch);
    # RunResult.checkpoint is then last.ckpt.
    no_val = {**(opts.extra or {}), **overrides}.get("limit_val_batches") == 0
    selects = [] if no_val and (opts.monitor or "val/loss").startswith("val/") else [best]
    cbs: list[Callback] = [*selects, last, SeedEveryStep(opts.seed), CloseEpochOnResume(), PlotCurvesAtEnd(out),
                           *callbacks]
    if opts.max_time:
        cbs.append(EpochTimeBudget())
    progress = str(opts.progress).lower()
    if progress == "rich":
        cbs.append(RichProgressBar(leave=True))
    elif progress == "tqdm":
        cbs.append(TQDMProgressBar())
    kwargs: dict[str, Any] = dict(
        accelerator=accelerator, devices=devices, strategy=opts.strategy, precision=opts.precision,
        max_epochs=opts.max_epochs, max_time=parse_max_time(opts.max_time),
        logger=_AppendingCSVLogger(save_dir=str(out), name="", version=""),
        callbacks=cbs, default_root_dir=str(out), log_every_n_steps=opts.log_every_n_steps,
        gradient_clip_val=opts.gradient_clip_val, accumulate_grad_batches=opts.accumulate_grad_batches,
        enable_progress_bar=progress != "none", enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    kwargs.update(opts.extra or {})
    extra_cbs = list(overrides.pop("callbacks", None) or [])  # added to rsvision's, never replacing them
    kwargs.update(overrides)
    kwargs["callbacks"] = [*kwargs["callbacks"], *extra_cbs]
    return L.Trainer(**kwargs)


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule | None = None,
        opts: TrainerOptions | None = None, **fit_kwargs: Any) -> str | None:
    """``trainer.fit`` resuming from ``last.ckpt`` when ``opts.resume``; returns the best checkpoint path."""
    from rsvision.errors import CheckpointError
    from rsvision.models.checkpoints import read_checkpoint

    ckpt = resume_path(opts) if opts is not None else None
    if ckpt is not None:
        state = read_checkpoint(ckpt)  # weights_only; a bad or malicious file: a clear error naming it
        if not isinstance(state, dict) or "state_dict" not in state or "global_step" not in state:
            raise CheckpointError("not a Lightning training checkpoint: cannot resume from it", path=ckpt)
        if rank_zero_only.rank == 0:
            _trim_metrics(Path(opts.out), state)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, **fit_kwargs)
    cb = trainer.checkpoint_callback
    if getattr(cb, "monitor", None) is None:  # nothing selected a best checkpoint (no validation)
        return None
    return getattr(cb, "best_model_path", None) or None
