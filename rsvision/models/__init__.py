"""Models: backbones (registered with timm), necks, heads and detectors, plus checkpoint loading."""
from rsvision.models import backbones  # noqa: F401  (registers lsknet_*/haksnet_* with timm)
from rsvision.models.checkpoints import LoadReport, load_checkpoint  # noqa: E402
from rsvision.models.factory import build_model, register_builder  # noqa: E402
from rsvision.models.fast import optimize_for_inference, optimize_for_training  # noqa: E402

__all__ = [
    "load_checkpoint",
    "LoadReport",
    "build_model",
    "register_builder",
    "optimize_for_inference",
    "optimize_for_training",
]
