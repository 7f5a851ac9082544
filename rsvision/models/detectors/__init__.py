"""Detectors: backbone + neck + heads wired together (no file I/O here)."""
from rsvision.models.detectors.builder import DEFAULT_CONFIG, build_oriented_rcnn, config_from_state_dict, oriented_rcnn
# (the module name stays importable: its factory function `mask_rcnn` is not re-exported over it)
from rsvision.models.detectors.mask_rcnn import MaskRCNN, MaskRCNNDecoder, build_mask_rcnn
from rsvision.models.detectors.oriented_rcnn import OrientedRCNN

__all__ = ["OrientedRCNN", "oriented_rcnn", "build_oriented_rcnn", "config_from_state_dict", "DEFAULT_CONFIG",
           "MaskRCNN", "MaskRCNNDecoder", "build_mask_rcnn"]
