"""LSKNet and HAKSNet backbones, registered with timm on import."""
from rsvision.models.backbones.haksnet import HAKSNet
from rsvision.models.backbones.lsknet import LSKNet

__all__ = ["LSKNet", "HAKSNet", "BACKBONES"]

# Registered timm names of rsvision's own families.
BACKBONES = ("lsknet_t", "lsknet_s", "haksnet_t", "haksnet_s")
