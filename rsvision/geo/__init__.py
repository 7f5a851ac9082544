"""CRS-aware outputs: GeoJSON polygons and GeoTIFF masks."""
from rsvision.geo.writers import MaskWriter, pixel_to_crs, write_geojson, write_mask_geotiff

__all__ = ["MaskWriter", "pixel_to_crs", "write_geojson", "write_mask_geotiff"]
