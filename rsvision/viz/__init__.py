"""Drawing: rotated boxes, masks, confusion matrices, training curves."""
