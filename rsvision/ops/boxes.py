"""Rotated-box conversions with MMRotate 0.x semantics (``le90`` / ``le135`` / ``oc``).

A rotated box is ``(cx, cy, w, h, a)`` in pixels, ``a`` in radians; x points right, y down and a
positive angle turns the box's w-axis from +x towards +y (clockwise on screen). Polygons are
``(x1, y1, ..., x4, y4)``: the centre plus ``R(a)`` applied to ``(-w/2,-h/2), (w/2,-h/2), (w/2,h/2),
(-w/2,h/2)`` (top-left, top-right, bottom-right, bottom-left at ``a = 0``).

Angle conventions (after :func:`norm_angle`):

* ``le90``: ``a`` in ``[-pi/2, pi/2)``, ``w`` the long side (the default everywhere in rsvision);
* ``le135``: ``a`` in ``[-pi/4, 3pi/4)``, ``w`` the long side;
* ``oc``: OpenCV style, ``a`` in ``[0, pi/2)`` from :func:`poly2obb` (``pi/2`` from :func:`hbb2obb`).

The formulas intentionally reproduce the reference *including its quirks* (which edges
``poly2obb`` looks at, floor-mod normalisation, ``oc`` skipping ``abs``); the golden tests in
``tests/ops`` pin them. Degenerate input is not rejected, it is mapped deterministically:

* zero-area boxes (``w == 0`` or ``h == 0``) convert to degenerate polygons (repeated points) and back;
* :func:`poly2obb` trusts its input to be (close to) a rectangle and never fails: ``w``/``h`` come
  from ``|p1p2|`` and ``|p2p3|`` only, so a degenerate polygon gives ``h == 0`` only when one of those
  edges has zero length (all points equal: ``w == h == 0``, angle ``atan2(0, 0) = 0``); a collinear
  zig-zag such as ``(0,0), (4,0), (8,0), (4,0)`` yields a 4 x 4 box. Readers reject such polygons by
  area first (``rsvision.data.dota``);
* NaN propagates into every output field of that row only.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["VERSIONS", "norm_angle", "obb2poly", "poly2obb", "obb2xyxy", "obb2hbb", "hbb2obb"]

VERSIONS = ("le90", "le135", "oc")
_HALF_PI = math.pi / 2


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"unknown angle version {version!r}, expected one of {VERSIONS}")


def norm_angle(angle, version: str = "le90"):
    """Normalise angles into the version's half-open range with *floor*-mod (``+pi/2 -> -pi/2``).

    Works on tensors and Python floats; ``oc`` returns the angle unchanged (as the reference).
    """
    _check_version(version)
    if version == "oc":
        return angle
    k = _HALF_PI if version == "le90" else math.pi / 4
    if isinstance(angle, Tensor):
        return torch.remainder(angle + k, math.pi) - k
    return (angle + k) % math.pi - k


def obb2poly(obb: Tensor, version: str = "le90") -> Tensor:
    """``(N, 5)`` rotated boxes -> ``(N, 8)`` corner polygons (same vertex order for every version)."""
    _check_version(version)
    x, y, w, h, a = obb.unbind(-1)
    cos, sin = torch.cos(a), torch.sin(a)
    wx, wy = w * 0.5 * cos, w * 0.5 * sin
    hx, hy = -h * 0.5 * sin, h * 0.5 * cos
    return torch.stack(
        [
            x - wx - hx, y - wy - hy,
            x + wx - hx, y + wy - hy,
            x + wx + hx, y + wy + hy,
            x - wx + hx, y - wy + hy,
        ],
        dim=-1,
    )


def poly2obb(poly: Tensor, version: str = "le90") -> Tensor:
    """``(N, 8)`` quadrilaterals -> ``(N, 5)`` rotated boxes (MMRotate's torch ``poly2obb_*``, no OpenCV).

    ``le90``/``le135`` look only at edges p1p2 and p2p3: ``w``/``h`` are the longer/shorter of the two,
    the angle is the direction p1->p2 when ``|p1p2| > |p2p3|`` and p1->p4 otherwise (ties too), and the
    centre is the midpoint of the diagonal p1p3. ``oc`` uses the vertex mean as centre and returns
    angles in ``[0, pi/2)``. For an exact rectangle every variant recovers the box; for a general
    quadrilateral this is *not* the minimum-area rectangle (that is what the reference does).
    """
    _check_version(version)
    p = poly.reshape(-1, 4, 2)
    x1, y1 = p[:, 0, 0], p[:, 0, 1]
    x2, y2 = p[:, 1, 0], p[:, 1, 1]
    x3, y3 = p[:, 2, 0], p[:, 2, 1]
    x4, y4 = p[:, 3, 0], p[:, 3, 1]
    edge1 = torch.sqrt((x1 - x2) ** 2 + (y1 - y2) ** 2)
    edge2 = torch.sqrt((x2 - x3) ** 2 + (y2 - y3) ** 2)
    if version == "oc":
        cx = p[:, :, 0].sum(1) / 4.0
        cy = p[:, :, 1].sum(1) / 4.0
        theta = torch.atan2(-(x2 - x1), y2 - y1)
        even = torch.remainder(torch.floor(theta / _HALF_PI), 2) == 0
        w = torch.where(even, edge2, edge1)
        h = torch.where(even, edge1, edge2)
        return torch.stack([cx, cy, w, h, torch.remainder(theta, _HALF_PI)], dim=-1)
    a1 = torch.atan2(y2 - y1, x2 - x1)
    a4 = torch.atan2(y4 - y1, x4 - x1)
    angle = norm_angle(torch.where(edge1 > edge2, a1, a4), version)
    cx = (x1 + x3) / 2.0
    cy = (y1 + y3) / 2.0
    return torch.stack([cx, cy, torch.maximum(edge1, edge2), torch.minimum(edge1, edge2), angle], dim=-1)


def obb2xyxy(obb: Tensor, version: str = "le90") -> Tensor:
    """``(N, 5)`` rotated boxes -> ``(N, 4)`` enclosing axis-aligned ``(x1, y1, x2, y2)``.

    ``oc`` uses ``cos``/``sin`` without ``abs`` (only valid for angles in ``[0, pi/2]``, as in the
    reference); ``le135`` takes the polygon's extent; ``le90`` the abs-projected half sizes.
    """
    _check_version(version)
    x, y, w, h, a = obb.unbind(-1)
    cos, sin = torch.cos(a), torch.sin(a)
    if version == "oc":
        bw = cos * w + sin * h
        bh = sin * w + cos * h
        return torch.stack([x - bw / 2.0, y - bh / 2.0, x + bw / 2.0, y + bh / 2.0], dim=-1)
    if version == "le135":
        poly = obb2poly(obb, version)
        xs, ys = poly[..., 0::2], poly[..., 1::2]
        return torch.stack([xs.amin(-1), ys.amin(-1), xs.amax(-1), ys.amax(-1)], dim=-1)
    bx = torch.abs(w / 2 * cos) + torch.abs(h / 2 * sin)
    by = torch.abs(w / 2 * sin) + torch.abs(h / 2 * cos)
    return torch.stack([x - bx, y - by, x + bx, y + by], dim=-1)


def obb2hbb(obb: Tensor, version: str = "le90") -> Tensor:
    """``(N, 5)`` rotated boxes -> ``(N, 5)`` axis-aligned rotated boxes in the version's form."""
    _check_version(version)
    if version == "oc":
        w, h, a = obb[..., 2], obb[..., 3], obb[..., 4]
        cos, sin = torch.cos(a), torch.sin(a)
        out = obb.detach().clone()
        out[..., 2] = sin * w + cos * h
        out[..., 3] = cos * w + sin * h
        out[..., 4] = _HALF_PI
        return out
    return hbb2obb(obb2xyxy(obb, version), version)


def hbb2obb(xyxy: Tensor, version: str = "le90") -> Tensor:
    """``(N, 4)`` axis-aligned ``(x1, y1, x2, y2)`` -> ``(N, 5)`` rotated boxes.

    ``le90``: ``(w, h, 0)`` when ``w >= h`` else ``(h, w, -pi/2)``; ``le135``: ``(h, w, +pi/2)`` for tall
    boxes; ``oc`` always ``(h, w, pi/2)``.
    """
    _check_version(version)
    x1, y1, x2, y2 = xyxy.unbind(-1)
    x = (x1 + x2) * 0.5
    y = (y1 + y2) * 0.5
    w = x2 - x1
    h = y2 - y1
    zero = torch.zeros_like(x)
    if version == "oc":
        return torch.stack([x, y, h, w, zero + _HALF_PI], dim=-1)
    turned = zero - _HALF_PI if version == "le90" else zero + _HALF_PI
    wide = torch.stack([x, y, w, h, zero], dim=-1)
    tall = torch.stack([x, y, h, w, turned], dim=-1)
    return torch.where((w >= h)[..., None], wide, tall)
