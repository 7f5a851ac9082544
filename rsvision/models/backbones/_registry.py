"""Backbone families: what detectors, segmentors and checkpoint readers need to know of one, declared once.

Each family module (``lsknet.py``, ``haksnet.py``, ...) registers its timm variants with
``@register_model`` and itself with :func:`register_family`; ``rsvision.models.backbones`` imports
every module of the package, so a new family is one new file and no list elsewhere changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Family", "FAMILIES", "register_family", "variant_names"]


@dataclass(frozen=True)
class Family:
    """One backbone family.

    ``cls``: the module (its ``__name__`` is the MMRotate config ``type``); ``variants``: timm name ->
    architecture keyword arguments (``embed_dims``, ``depths``, ``mlp_ratios``); ``marker``: a key
    fragment only this family's state dicts contain; ``mlp_key`` / ``mlp_hidden_dim``: the FFN weight
    (under ``block{i}.0.``) and the axis of its hidden width, to read MLP ratios off a state dict.
    """

    cls: type
    variants: dict[str, dict[str, Any]]
    marker: str
    mlp_key: str
    mlp_hidden_dim: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cls.__name__


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def variant_names() -> tuple[str, ...]:
    """Every registered timm name of rsvision's own families, in registration order."""
    return tuple(v for f in FAMILIES.values() for v in f.variants)
