"""Exact resume through rsvision's Trainer (``build_trainer`` + ``fit``) whatever ends training and
whenever ``last.ckpt`` was written: by epochs or by ``max_steps``, with or without validation, after
an exception or a real ``kill -9``.

Found on ``rsvision pretrain ssl`` (``max_steps``, ``limit_val_batches: 0``): Lightning 2.6 resumed a
checkpoint written at a train epoch's end into an epoch that ended after one batch, so the resumed run
trained on other batches. A toy model keeps these tests fast; each records the sample indices of every
step, so a mismatch names the step where the resumed run went elsewhere.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from rsvision.data.samplers import SeededRandomSampler
from rsvision.tasks.common import TrainerOptions, build_trainer, close_saved_epoch, fit

N, BATCH = 10, 2  # 5 steps per epoch
ROOT = Path(__file__).resolve().parents[2]


class _Items(Dataset):
    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return {"index": i, "x": torch.randn(4, generator=g), "y": torch.randn(1, generator=g)}


class _Toy(L.LightningModule):
    """A linear regression whose steps write ``(global step, sample indices)`` to ``steps.jsonl``."""

    def __init__(self, log: str):
        super().__init__()
        self.net, self.log_path = torch.nn.Linear(4, 1), log

    def training_step(self, batch, batch_idx):
        with open(self.log_path, "a") as f:
            f.write(json.dumps([int(self.global_step), batch["index"].tolist()]) + "\n")
        loss = torch.nn.functional.mse_loss(self.net(batch["x"] + 0.1 * torch.randn_like(batch["x"])), batch["y"])
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"]))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.05)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 3, 0.5),
                                                   "interval": "step"}}

    def train_dataloader(self):
        return DataLoader(_Items(), batch_size=BATCH, sampler=SeededRandomSampler(N, seed=3))

    def val_dataloader(self):
        return DataLoader(_Items(), batch_size=BATCH)


class _Stop(L.Callback):
    """End the run at the start of ``step``: an exception, or (``kill``) SIGKILL of this very process."""

    def __init__(self, step: int, kill: bool = False):
        self.step, self.kill = step, kill

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("simulated kill")


def run(out: str, by: str, val: bool, resume: bool = False, stop: int | None = None, kill: bool = False) -> None:
    """One toy training run in ``out`` (also the entry point of the subprocess in the kill test)."""
    extra = {"limit_val_batches": 1.0 if val else 0}
    opts = TrainerOptions(out=out, max_epochs=4 if by == "epochs" else 1000, device="cpu", seed=3, resume=resume,
                          progress="none", log_every_n_steps=1, threads=1, monitor="train/loss",
                          extra=extra if by == "epochs" else {**extra, "max_steps": 17})
    Path(out).mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(opts, callbacks=[_Stop(stop, kill)] if stop is not None else [])
    fit(trainer, _Toy(str(Path(out) / "steps.jsonl")), opts=opts)


def _steps(out: Path) -> list:
    return [json.loads(s) for s in (out / "steps.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict:
    return torch.load(out / "last.ckpt", weights_only=True)["state_dict"]


def _assert_resumed_equals(full: Path, part: Path) -> None:
    steps_full, steps_part = _steps(full), _steps(part)
    start = torch.load(part / "last.ckpt.before", weights_only=True)["global_step"]
    resumed = [s for s in steps_part if s[0] >= start][-(len(steps_full) - start):]
    assert resumed == steps_full[start:], "the resumed run trained on other batches"
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (torch.load(p / "last.ckpt", weights_only=True) for p in (full, part))
    assert (ca["epoch"], ca["global_step"]) == (cb["epoch"], cb["global_step"])


@pytest.mark.parametrize("by", ["steps", "epochs"])
@pytest.mark.parametrize("val", [False, True], ids=["no-val", "val"])
def test_resume_after_an_epoch_end_checkpoint_equals_the_uninterrupted_run(by, val, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run(str(full), by, val)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(str(part), by, val, stop=11)  # last.ckpt is epoch 1's end (step 10)
    (part / "last.ckpt.before").write_bytes((part / "last.ckpt").read_bytes())
    assert torch.load(part / "last.ckpt", weights_only=True)["global_step"] == 10
    run(str(part), by, val, resume=True)
    _assert_resumed_equals(full, part)


def test_kill_9_under_max_steps_without_validation_resumes_exactly(tmp_path):
    """The path that failed: a real SIGKILL of a max_steps run whose last.ckpt came from on_train_epoch_end."""
    full, part = tmp_path / "full", tmp_path / "part"
    run(str(full), "steps", False)
    code = f"from tests.tasks.test_resume_loop import run; run({str(part)!r}, 'steps', False, stop=12, kill=True)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (part / "last.ckpt.before").write_bytes((part / "last.ckpt").read_bytes())
    assert torch.load(part / "last.ckpt", weights_only=True)["global_step"] == 10
    run(str(part), "steps", False, resume=True)
    _assert_resumed_equals(full, part)


def test_close_saved_epoch_only_touches_an_epoch_end_checkpoint(tmp_path):
    with pytest.raises(RuntimeError):
        run(str(tmp_path / "a"), "steps", False, stop=11)
    ckpt = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    fit_loop = ckpt["loops"]["fit_loop"]
    assert fit_loop["epoch_progress"]["total"]["completed"] == fit_loop["epoch_progress"]["total"]["processed"] - 1
    assert close_saved_epoch(ckpt)
    assert fit_loop["epoch_progress"]["total"]["completed"] == fit_loop["epoch_progress"]["total"]["processed"] == 2
    assert fit_loop["epoch_loop.batch_progress"]["current"] == {"ready": 0, "completed": 0, "started": 0, "processed": 0}
    assert fit_loop["epoch_loop.batch_progress"]["total"]["completed"] == 10  # totals kept
    assert not close_saved_epoch(ckpt)  # already closed: unchanged
    assert not close_saved_epoch({"state_dict": {}}) and not close_saved_epoch({"loops": {"fit_loop": {}}})


def test_without_validation_a_val_monitor_writes_no_best_checkpoint_and_no_warning(tmp_path, recwarn):
    """A ``val/`` monitor with ``limit_val_batches: 0`` (SSL / MTP configs): nothing to select, no warning."""
    opts = TrainerOptions(out=str(tmp_path), max_epochs=2, device="cpu", seed=3, progress="none", threads=1,
                          monitor="val/loss", extra={"limit_val_batches": 0})
    trainer = build_trainer(opts)
    assert fit(trainer, _Toy(str(tmp_path / "steps.jsonl")), opts=opts) is None
    assert (tmp_path / "last.ckpt").exists() and not (tmp_path / "best.ckpt").exists()
    assert not [w for w in recwarn if "val/loss" in str(w.message)]
    opts = TrainerOptions(out=str(tmp_path / "v"), max_epochs=1, device="cpu", seed=3, progress="none", threads=1,
                          monitor="val/loss")
    assert fit(build_trainer(opts), _Toy(str(tmp_path / "steps.jsonl")), opts=opts) == str(tmp_path / "v" / "best.ckpt")
