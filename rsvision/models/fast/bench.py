"""``rsvision models --bench``: forward images/s, plain vs ``optimize_for_inference``."""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from rsvision.models.fast.inference import optimize_for_inference

__all__ = ["benchmark_table"]


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def benchmark_table(
    names: Sequence[str], size: int = 1024, device: str = "cpu", in_chans: int = 3, repeats: int = 3, batch: int = 1
):
    """rich Table of forward images/s, plain vs ``optimize_for_inference``, eval, random weights.

    Plain and fast runs alternate (median of ``repeats``) so that a shared machine's load hits
    both alike.
    """
    import timm
    from rich.table import Table

    dev = torch.device(device)
    table = Table(title=f"forward images/s at {batch}x{in_chans}x{size}x{size} on {dev} (median of {repeats})")
    for col in ("model", "plain img/s", "fast img/s", "speed-up", "max |diff|"):
        table.add_column(col, justify="left" if col == "model" else "right")
    x = torch.randn(batch, in_chans, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for name in names:
        plain = timm.create_model(name, num_classes=0, in_chans=in_chans).to(dev).eval()
        fast = optimize_for_inference(plain)
        with torch.inference_mode():
            yp, yf = plain.forward_features(x), fast.forward_features(x)  # warm-up + check
            diff = (yp - yf).abs().max().item()
            tp, tf = [], []
            for _ in range(repeats):
                tp += _time(lambda: (plain.forward_features(x), sync()), 1)
                tf += _time(lambda: (fast.forward_features(x), sync()), 1)
        mp, mf = statistics.median(tp), statistics.median(tf)
        table.add_row(name, f"{batch / mp:.2f}", f"{batch / mf:.2f}", f"{mp / mf:.2f}x", f"{diff:.1e}")
    return table
