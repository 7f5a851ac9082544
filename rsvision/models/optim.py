"""Optimiser parameter groups: weight-decay exclusion and layer-wise learning-rate decay.

Layer decay (BEiT, arXiv 2106.08254; MTP finetunes and pretrains its ViTs with 0.9) scales the lr
of encoder layer ``i`` of ``L`` by ``decay ** (L - i)``: the stem (``i = 0``) changes least, the last
block most, and everything outside the encoder (necks, decoders, heads) takes the full lr. The
encoder is found inside any task model as the largest submodule with timm's ``group_matcher``
(ViT-RVSA, LSKNet / HAKSNet, timm classifiers and ``features_only`` getters), so one config key
works for every task.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from rsvision.errors import ConfigError

__all__ = ["find_encoder", "layer_ids", "param_groups"]


def find_encoder(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(prefix, module)`` of the submodule with a ``group_matcher`` holding the most parameters."""
    best = None
    for name, mod in model.named_modules():
        if callable(getattr(mod, "group_matcher", None)):
            n = sum(p.numel() for p in mod.parameters())
            if best is None or n > best[2]:
                best = (name + "." if name else "", mod, n)
    return None if best is None else best[:2]


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Every parameter name of ``model`` -> its layer id, and the number of layers ``L + 1``.

    Encoder parameters take timm's fine-grained groups (``group_matcher(coarse=False)``: stem 0,
    block ``i`` -> ``i + 1``); unmatched encoder parameters and all others take the last id ``L``.
    """
    import re

    from timm.models import group_parameters

    found = find_encoder(model)
    if found is None:
        raise ConfigError(f"optim.layer_decay needs an encoder with layer groups (timm's group_matcher); "
                          f"{type(model).__name__} has none")
    prefix, enc = found
    spec = enc.group_matcher(coarse=False)
    pats = [re.compile(p) for v in spec.values() for p in ([v] if isinstance(v, str) else [q for q, _ in v])]
    inner = group_parameters(enc, spec, reverse=True)
    ids = {prefix + n: i for n, i in inner.items() if any(p.match(n) for p in pats)}
    last = max(ids.values(), default=-1) + 1
    return {n: ids.get(n, last) for n, _ in model.named_parameters()}, last + 1


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = False,
                 layer_decay: float | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups; with ``layer_decay``, each group carries its ``lr_scale``.

    ``no_decay_norm_bias`` exempts 1-D tensors (norms, biases) and the encoder's ``no_weight_decay()``
    names (position embeddings) from weight decay, as timm / BEiT / MTP do.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layer_decay is None and not no_decay_norm_bias:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    skip: set[str] = set()
    if no_decay_norm_bias:
        found = find_encoder(model)
        if found is not None and callable(getattr(found[1], "no_weight_decay", None)):
            skip = {found[0] + n for n in found[1].no_weight_decay()}
    if layer_decay is None:  # timm's two groups, in timm's order (resumed optimiser states rely on it)
        from timm.optim import param_groups_weight_decay

        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    if not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"optim.layer_decay must be in (0, 1], got {layer_decay}")
    ids, num = layer_ids(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for n, p in params:
        decay = not (no_decay_norm_bias and (p.ndim <= 1 or n.endswith(".bias") or n in skip))
        lid = ids[n]
        g = groups.setdefault((lid, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                             "lr_scale": float(layer_decay) ** (num - 1 - lid)})
        g["params"].append(p)
    return list(groups.values())
