"""``rsvision models --bench``: forward images/s, plain vs ``optimize_for_inference``."""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from rsvision.models.fast.inference import optimize_for_inference

__all__ = ["benchmark_table"]


def _warm_time(fn) -> float:
    """One untimed call, then one timed: each timed call finds the caches and the allocator as
    its own previous call left them, not as the other model's call did."""
    fn()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _fp32_diff(plain, fast, x) -> float:
    """max |plain - fast| with TF32 off (no-op on the CPU)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return (plain.forward_features(x) - fast.forward_features(x)).abs().max().item()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def benchmark_table(
    names: Sequence[str], size: int = 1024, device: str = "cpu", in_chans: int = 3, repeats: int = 3, batch: int = 1
):
    """rich Table of forward images/s, plain vs ``optimize_for_inference``, eval, random weights.

    Plain and fast runs alternate (median of ``repeats``, each timed call after an untimed one)
    so that a shared machine's load hits both alike; the title names the allocator mode, which
    decides whether the fast path tiles its FFNs. On CUDA the timings use torch's default TF32 setting (cuDNN convolutions in TF32,
    what a user gets), while ``max |diff|`` is measured in true fp32 (TF32 off): TF32 alone moves
    outputs by ~1e-3 and would hide a real difference between the two paths.
    """
    import timm
    from rich.table import Table

    dev = torch.device(device)
    from rsvision.runtime import allocator_mode

    table = Table(title=f"forward images/s at {batch}x{in_chans}x{size}x{size} on {dev} (median of {repeats}, "
                  f"threads {torch.get_num_threads()}, allocator {allocator_mode()})")
    for col in ("model", "plain img/s", "fast img/s", "speed-up", "max |diff|"):
        table.add_column(col, justify="left" if col == "model" else "right")
    x = torch.randn(batch, in_chans, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for name in names:
        plain = timm.create_model(name, num_classes=0, in_chans=in_chans).to(dev).eval()
        fast = optimize_for_inference(plain)
        with torch.inference_mode():
            diff = _fp32_diff(plain, fast, x)
            tp, tf = [], []
            for _ in range(repeats):
                tp.append(_warm_time(lambda: (plain.forward_features(x), sync())))
                tf.append(_warm_time(lambda: (fast.forward_features(x), sync())))
        mp, mf = statistics.median(tp), statistics.median(tf)
        table.add_row(name, f"{batch / mp:.2f}", f"{batch / mf:.2f}", f"{mp / mf:.2f}x", f"{diff:.1e}")
    return table
