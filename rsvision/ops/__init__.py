"""Pure tensor functions for rotated boxes: conversions, IoU, NMS, RoIAlignRotated, coders."""
