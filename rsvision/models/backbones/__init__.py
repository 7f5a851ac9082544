"""rsvision's backbone families (LSKNet, HAKSNet, ...), registered with timm on import.

Every module of this package not starting with ``_`` is a family: importing the package imports
them all, so their ``@register_model`` variants and :func:`register_family` entries exist.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from rsvision.models.backbones._registry import FAMILIES, Family, register_family, variant_names

_ORDER = ("lsknet", "haksnet")  # listing order of the known families; others follow alphabetically
for _name in sorted((m.name for m in _pkgutil.iter_modules(__path__) if not m.name.startswith("_")),
                    key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
    _importlib.import_module(f"{__name__}.{_name}")

from rsvision.models.backbones.haksnet import HAKSNet  # noqa: E402
from rsvision.models.backbones.lsknet import LSKNet  # noqa: E402

#: Registered timm names of rsvision's own families.
BACKBONES = variant_names()

__all__ = ["LSKNet", "HAKSNet", "BACKBONES", "FAMILIES", "Family", "register_family"]
