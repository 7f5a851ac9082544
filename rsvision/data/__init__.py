"""Readers, datasets, transforms, synthetic generators and the shared raster tiler."""
