"""CRS-aware outputs: GeoJSON polygons and GeoTIFF masks."""
