"""rsvision: remote-sensing image understanding on a current PyTorch stack.

Importing the package registers the rsvision backbones (``lsknet_*``, ``haksnet_*``, ...) with timm,
but without importing torch or timm itself: when timm is already imported the models register now,
otherwise they register the moment timm's import finishes. ``import rsvision`` therefore costs
milliseconds, which keeps ``rsvision --help`` under a second, and ``import rsvision; import timm;
timm.create_model("lsknet_t")`` works in either import order.
"""
from __future__ import annotations

import importlib.abc
import sys

__version__ = "0.1.0"


def _register_models() -> None:
    import rsvision.models  # noqa: F401  (the @register_model calls)


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps timm's loader so rsvision's models register once timm exists."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D401
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; let the normal finders locate timm
        from importlib.util import find_spec

        spec = find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_models()

        spec.loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTimmImport())
