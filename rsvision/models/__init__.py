"""Models: backbones (registered with timm), necks, heads and detectors, plus checkpoint loading."""
from rsvision.models import backbones  # noqa: F401  (registers lsknet_*/haksnet_* with timm)
