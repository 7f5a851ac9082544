"""rsvision: remote-sensing image understanding on a current PyTorch stack.

Importing the package registers the LSKNet / HAKSNet backbones with timm.
"""
__version__ = "0.1.0"

from rsvision import models  # noqa: F401,E402  (registers timm models)
