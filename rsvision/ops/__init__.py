"""Pure tensor functions for rotated boxes: conversions, IoU, NMS, RoIAlignRotated, coders.

Boxes are ``(cx, cy, w, h, angle)`` in pixels, angle in radians (``le90`` by default); polygons
``(N, 8)``. Everything is batched, device-agnostic and reference-exact against MMRotate 0.3.4 /
mmcv 1.7.2 (see ``tests/ops`` and ``../shared/golden/rotated_ops_golden.pt``).
"""
from .boxes import VERSIONS, hbb2obb, norm_angle, obb2hbb, obb2poly, obb2xyxy, poly2obb
from .coders import DeltaXYWHAOBBoxCoder, MidpointOffsetCoder
from .iou import box_iou_rotated, rbbox_overlaps, rotated_intersection_area
from .nms import batched_nms_rotated, multiclass_nms_rotated, nms_rotated
from .roi_align_rotated import RoIAlignRotated, roi_align_rotated

__all__ = [
    "VERSIONS",
    "norm_angle",
    "obb2poly",
    "poly2obb",
    "obb2xyxy",
    "obb2hbb",
    "hbb2obb",
    "box_iou_rotated",
    "rbbox_overlaps",
    "rotated_intersection_area",
    "nms_rotated",
    "batched_nms_rotated",
    "multiclass_nms_rotated",
    "roi_align_rotated",
    "RoIAlignRotated",
    "DeltaXYWHAOBBoxCoder",
    "MidpointOffsetCoder",
]
