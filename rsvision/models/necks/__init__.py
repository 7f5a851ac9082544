"""Necks: multi-scale feature fusion between backbones and heads."""
from rsvision.models.necks.fpn import FPN

__all__ = ["FPN"]
