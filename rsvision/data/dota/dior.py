"""DIOR-R oriented-box XML reader (``Annotations/Oriented Bounding Boxes/<id>.xml``).

Each ``<object>`` holds ``<name>``, ``<difficult>`` and a ``<robndbox>`` with the four corners
``x_left_top y_left_top x_right_top ... y_left_bottom``; names are lower-cased (as MMRotate does:
``Expressway-Service-area`` -> ``expressway-service-area``).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from .labels import Annotation, _Reporter, _resolve_on_error, polygon_area
from rsvision.errors import DataError

__all__ = ["read_dior_xml"]

_CORNERS = ("x_left_top", "y_left_top", "x_right_top", "y_right_top",
            "x_right_bottom", "y_right_bottom", "x_left_bottom", "y_left_bottom")


def _parse(path: Path) -> ET.Element:
    if not path.is_file():
        raise DataError("no such annotation file", path=path)
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"invalid XML ({exc})", path=path, line=exc.position[0]) from exc


def read_dior_xml(
    path: str | Path,
    classes: Sequence[str] | None = None,
    on_error: str = "skip",
    strict: bool | None = None,
    min_area: float = 1e-6,
) -> Annotation:
    """Read one DIOR-R xml file into an :class:`Annotation` (bad objects reported by index)."""
    path = Path(path)
    ann = Annotation(path=path)
    report = _Reporter(path, _resolve_on_error(on_error, strict), ann)
    known = set(classes) if classes is not None else None
    polys, names, diffs = [], [], []
    for i, obj in enumerate(_parse(path).iter("object"), start=1):
        name = (obj.findtext("name") or "").strip().lower()
        box = obj.find("robndbox")
        if not name or box is None:
            report(None, f"object {i}: missing <name> or <robndbox>")
            continue
        try:
            coords = [float(box.findtext(k)) for k in _CORNERS]
            diff = int(float(obj.findtext("difficult") or 0))
        except (TypeError, ValueError):
            report(None, f"object {i}: missing or non-numeric corner / difficult")
            continue
        if not all(math.isfinite(v) for v in coords):
            report(None, f"object {i}: non-finite corner")
            continue
        if known is not None and name not in known:
            report(None, f"object {i}: unknown class {name!r}")
            continue
        if polygon_area(np.array(coords))[0] < min_area:
            report(None, f"object {i}: degenerate polygon (zero area)")
            continue
        polys.append(coords)
        names.append(name)
        diffs.append(diff)
    ann.polys = np.array(polys, dtype=np.float64).reshape(-1, 8)
    ann.classes = names
    ann.difficult = np.array(diffs, dtype=np.int64)
    return ann
