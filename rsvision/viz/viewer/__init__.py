"""``rsvision view``: a local web map of prediction outputs, run directories and eval JSONs.

``layers`` finds what PATH holds, ``tiles`` renders map tiles from the rasters, ``vectors`` serves
detections per viewport, ``reports`` turns runs and eval JSONs into tables, ``app`` is the FastAPI
application (``create_app``); ``static/`` is the page with the vendored Leaflet (works offline).
Importing this package imports nothing heavy; ``app`` needs the ``view`` extra (fastapi, rio-tiler).
"""
