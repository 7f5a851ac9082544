"""Semantic segmentation (UperNet, Semantic FPN) and Siamese change detection over timm backbones.

Builders are registered with :mod:`rsvision.models.factory` as ``type: Segmentor`` and
``type: SiameseChange``.
"""
from rsvision.models.segmentation.change import SiameseChangeModel, build_change_model
from rsvision.models.segmentation.segmentor import Encoder, Segmentor, build_segmentor
from rsvision.models.segmentation.semantic_fpn import SemanticFPNHead
from rsvision.models.segmentation.upernet import UperHead

try:  # the factory is the lead's module; register when it is there
    from rsvision.models.factory import register_builder

    register_builder("Segmentor")(build_segmentor)
    register_builder("SiameseChange")(build_change_model)
except ImportError:  # pragma: no cover
    pass

__all__ = ["Encoder", "Segmentor", "SiameseChangeModel", "UperHead", "SemanticFPNHead",
           "build_segmentor", "build_change_model"]
