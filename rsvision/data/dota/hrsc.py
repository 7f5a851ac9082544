"""HRSC2016 XML reader (``Annotations/<id>.xml``).

Ships are ``<HRSC_Object>`` elements with the rotated box ``mbox_cx, mbox_cy, mbox_w, mbox_h,
mbox_ang`` (radians), turned into a polygon with :func:`rsvision.ops.obb2poly`'s corner order, as
MMRotate's HRSC reader does; ``<difficult>`` is kept. With ``classwise=False`` (default, the usual
one-class HRSC task) every object is ``ship``; otherwise the ``Class_ID`` string is the class.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rsvision.ops.boxes import obb2poly

from .dior import _parse
from .labels import Annotation, _Reporter, _resolve_on_error

__all__ = ["read_hrsc_xml", "hrsc_box_to_poly"]


def hrsc_box_to_poly(cx: float, cy: float, w: float, h: float, a: float) -> list[float]:
    """Corners of ``(cx, cy, w, h, a)``: centre + R(a) (-w/2,-h/2), (w/2,-h/2), (w/2,h/2), (-w/2,h/2)."""
    return obb2poly(torch.tensor([[cx, cy, w, h, a]], dtype=torch.float64))[0].tolist()


def read_hrsc_xml(
    path: str | Path,
    classes: Sequence[str] | None = None,
    on_error: str = "skip",
    strict: bool | None = None,
    classwise: bool = False,
    min_size: float = 1e-6,
) -> Annotation:
    """Read one HRSC2016 xml file into an :class:`Annotation` (bad objects reported by index)."""
    path = Path(path)
    ann = Annotation(path=path)
    report = _Reporter(path, _resolve_on_error(on_error, strict), ann)
    known = set(classes) if classes is not None else None
    boxes, names, diffs = [], [], []
    for i, obj in enumerate(_parse(path).iter("HRSC_Object"), start=1):
        try:
            vals = [float(obj.findtext(k)) for k in ("mbox_cx", "mbox_cy", "mbox_w", "mbox_h", "mbox_ang")]
            diff = int(float(obj.findtext("difficult") or 0))
        except (TypeError, ValueError):
            report(None, f"object {i}: missing or non-numeric mbox_* / difficult")
            continue
        if not all(math.isfinite(v) for v in vals):
            report(None, f"object {i}: non-finite box")
            continue
        if vals[2] < min_size or vals[3] < min_size:
            report(None, f"object {i}: degenerate box (w or h is 0)")
            continue
        name = (obj.findtext("Class_ID") or "ship").strip() if classwise else "ship"
        if known is not None and name not in known:
            report(None, f"object {i}: unknown class {name!r}")
            continue
        boxes.append(vals)
        names.append(name)
        diffs.append(diff)
    ann.polys = obb2poly(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 5)).numpy()
    ann.classes = names
    ann.difficult = np.array(diffs, dtype=np.int64)
    return ann
