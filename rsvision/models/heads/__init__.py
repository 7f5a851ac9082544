"""Detection heads (oriented RPN, rotated RoI head), anchors, assigners and samplers."""
from rsvision.models.heads.anchors import AnchorGenerator
from rsvision.models.heads.assign import AssignResult, MaxIoUAssigner, RandomSampler, SamplingResult
from rsvision.models.heads.roi_head import (
    DetectionConfig,
    OrientedRoIHead,
    RotatedShared2FCBBoxHead,
    RotatedSingleRoIExtractor,
    rois_from_boxes,
)
from rsvision.models.heads.rpn import OrientedRPNHead, ProposalConfig

__all__ = [
    "AnchorGenerator",
    "AssignResult",
    "MaxIoUAssigner",
    "RandomSampler",
    "SamplingResult",
    "OrientedRPNHead",
    "ProposalConfig",
    "OrientedRoIHead",
    "RotatedShared2FCBBoxHead",
    "RotatedSingleRoIExtractor",
    "DetectionConfig",
    "rois_from_boxes",
]
