"""Parameter and MAC counts, measured (not tabulated) so the README table cannot drift."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, size: int | tuple[int, int] = 1024, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass on a 1 x in_chans x H x W input.

    Counted by torch's FlopCounterMode on the meta device (no memory, no compute): convolutions
    and matmuls, which is how the papers count GMACs (norms/activations excluded).
    """
    h, w = (size, size) if isinstance(size, int) else size
    was_training = model.training
    model.eval()
    try:
        meta = _to_meta(model)
        x = torch.empty(1, in_chans, h, w, device="meta")
        with FlopCounterMode(display=False) as fc:
            meta(x)
        return fc.get_total_flops() // 2
    finally:
        model.train(was_training)


def _to_meta(model: nn.Module) -> nn.Module:
    import copy

    m = copy.deepcopy(model)
    return m.to_empty(device="meta")
