"""``build_model(config_dict)``: any rsvision model from a plain dict (the form golden files store).

Model families register a builder under a ``type`` name (``@register_builder("OrientedRCNN")``);
a dict without a registered ``type`` but with a ``name``/``model`` key is treated as a timm model.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch.nn as nn

from rsvision.errors import ConfigError

_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {}


def register_builder(type_name: str) -> Callable:
    """Decorator registering ``fn(cfg: dict) -> nn.Module`` for ``cfg["type"] == type_name``."""

    def deco(fn: Callable[[dict], nn.Module]) -> Callable[[dict], nn.Module]:
        _BUILDERS[type_name] = fn
        return fn

    return deco


# Families that register builders; imported on first use so ``import rsvision`` stays light.
_FAMILIES = ("rsvision.models.backbones", "rsvision.models.detectors", "rsvision.models.segmentation")


def _import_families() -> None:
    import importlib

    for mod in _FAMILIES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a family not present in this build
            if exc.name != mod:
                raise


def registered_types() -> list[str]:
    _import_families()
    return sorted(_BUILDERS)


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build a model from a plain config dict.

    ``{"type": "OrientedRCNN", ...}`` or ``{"model": {"type": "OrientedRCNN", ...}, ...}`` goes to the registered builder; ``{"name": "lsknet_t", **kwargs}``
    (or ``"model"``) goes to ``timm.create_model`` with the remaining keys as keyword arguments.
    """
    import timm

    _import_families()

    if not isinstance(config, dict):
        raise ConfigError(f"model config must be a dict, got {type(config).__name__}")
    cfg = copy.deepcopy(config)
    type_name = cfg.get("type")
    if type_name is None and isinstance(cfg.get("model"), dict):
        # A full config as golden files store it: {"model": {"type": ...}, "class_names": ..., ...};
        # the builder receives the whole dict.
        type_name = cfg["model"].get("type")
    if type_name is not None:
        if type_name not in _BUILDERS:
            raise ConfigError(f"unknown model type {type_name!r}; known: {registered_types()}")
        return _BUILDERS[type_name](cfg)
    name = cfg.pop("name", None) or cfg.pop("model", None)
    if name is None:
        raise ConfigError("model config needs a 'type' (rsvision family) or a 'name' (timm model)")
    cfg.setdefault("pretrained", False)
    return timm.create_model(name, **cfg)
