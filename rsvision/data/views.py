"""Multi-crop views for self-supervised pretraining, with the geometry that relates each view to its scene.

A view is: a box of the scene, resized to ``size`` x ``size``, then an optional horizontal flip, vertical
flip and ``k`` 90-degree rotations (``torch.rot90(v, k, (-2, -1))``). Its geometry is one float row
``(top, left, height, width, hflip, vflip, k)``, the box as fractions of the scene's height / width (so
scenes of different pixel sizes share one batch), flips as 0 / 1. Points are ``(y, x)`` pairs in [0, 1]:
*scene* coordinates over the whole sample, *view* coordinates over the final view (after flips and
rotation); pixel / cell centres sit at ``(i + 0.5) / n``. The maps below are exact for the continuous
image; resizing adds only interpolation error, which ``tests/tasks/test_ssl.py`` checks on a coordinate
image sent through :meth:`MultiCropViews.view`. They let the SSL losses compare dense features of two
views at the same scene location (pixel level) and carry regions from one view into another (object level).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rsvision.errors import ConfigError

__all__ = ["MultiCropViews", "GEOM_KEYS", "view_to_scene", "scene_to_view", "cell_centres", "sample_at_view",
           "sample_at_scene", "box_intersection", "points_in_boxes"]

GEOM_KEYS = ("top", "left", "height", "width", "hflip", "vflip", "rot")


def _rot_back(y: torch.Tensor, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo ``k`` (per row) rot90 steps: ``out(y, x) = in(x, 1 - y)`` per step, so ``in = (x, 1 - y)``.
    (Not ``_rot_fwd`` with ``4 - k``: that computes ``1 - (1 - x)``, which is not ``x`` in floating point.)"""
    k = k.long() % 4
    for _ in range(3):
        m = k > 0
        y, x = torch.where(m, x, y), torch.where(m, 1 - y, x)
        k = k - m.long()
    return y, x


def _rot_fwd(y: torch.Tensor, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``k`` (per row) rot90 steps to points: a point ``(y, x)`` of the input lands at ``(1 - x, y)``."""
    k = k.long() % 4
    for _ in range(3):
        m = k > 0
        y, x = torch.where(m, 1 - x, y), torch.where(m, y, x)
        k = k - m.long()
    return y, x


def view_to_scene(points: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
    """View coordinates (B, N, 2) of views with geometry (B, 7) -> scene coordinates (B, N, 2), ``(y, x)``."""
    g = geom[:, None, :].to(points.dtype)
    y, x = _rot_back(points[..., 0], points[..., 1], g[..., 6].expand_as(points[..., 0]))
    y = torch.where(g[..., 5] > 0.5, 1 - y, y)
    x = torch.where(g[..., 4] > 0.5, 1 - x, x)
    return torch.stack([g[..., 0] + y * g[..., 2], g[..., 1] + x * g[..., 3]], -1)


def scene_to_view(points: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
    """Scene coordinates (B, N, 2) -> view coordinates (B, N, 2) (outside [0, 1]: not in the view)."""
    g = geom[:, None, :].to(points.dtype)
    y = (points[..., 0] - g[..., 0]) / g[..., 2]
    x = (points[..., 1] - g[..., 1]) / g[..., 3]
    x = torch.where(g[..., 4] > 0.5, 1 - x, x)
    y = torch.where(g[..., 5] > 0.5, 1 - y, y)
    return torch.stack(_rot_fwd(y, x, g[..., 6].expand_as(y)), -1)


def cell_centres(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h * w, 2) view coordinates of the cell centres of an h x w map, row-major (``flatten(2)`` order)."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


def sample_at_view(fmap: torch.Tensor, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, h, w) map sampled at view coordinates (B, N, 2) -> (B, N, C) (``grid_sample``, border padding)."""
    grid = (points.flip(-1) * 2 - 1).to(fmap.dtype)[:, :, None, :]  # grid_sample wants (x, y) in [-1, 1]
    out = F.grid_sample(fmap, grid, mode=mode, padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2)


def sample_at_scene(fmap: torch.Tensor, geom: torch.Tensor, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """A view's (B, C, h, w) map sampled at scene coordinates (B, N, 2) -> (B, N, C)."""
    return sample_at_view(fmap, scene_to_view(points, geom), mode)


def box_intersection(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene boxes of two views' geometries (B, >=4) -> intersection ``(y0, x0, y1, x1)`` (B, 4) and
    ``valid`` (B,): whether the boxes overlap with positive area."""
    lo = torch.maximum(a[:, :2], b[:, :2])
    hi = torch.minimum(a[:, :2] + a[:, 2:4], b[:, :2] + b[:, 2:4])
    return torch.cat([lo, hi], 1), (hi > lo).all(1)


def points_in_boxes(boxes: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Uniform draws ``u`` (B, N, 2) in [0, 1) mapped into boxes (B, 4) ``(y0, x0, y1, x1)`` -> (B, N, 2)."""
    lo, hi = boxes[:, None, :2], boxes[:, None, 2:]
    return lo + u.to(boxes.dtype) * (hi - lo)


class MultiCropViews:
    """Global and local views of one sample (all its modalities cropped alike), drawn from a numpy generator.

    Each view: a random box of ``scale`` (area fraction) and aspect in [3/4, 4/3], resized (bilinear,
    anti-aliased) to the view size, then a random horizontal / vertical flip and 90-degree rotation.
    Global views cover much of the scene (default 40-100 %), local views small parts of it (5-40 %).
    """

    def __init__(self, global_size: int = 96, local_size: int = 48, n_global: int = 2, n_local: int = 2,
                 global_scale: Sequence[float] = (0.4, 1.0), local_scale: Sequence[float] = (0.05, 0.4)):
        if n_global < 2:
            raise ConfigError(f"data.n_global must be >= 2 (views contrast each other), got {n_global}")
        self.global_size, self.local_size, self.n_global, self.n_local = global_size, local_size, n_global, n_local
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)

    @staticmethod
    def view(x: torch.Tensor, size: int, scale: Sequence[float], rng: np.random.Generator,
             return_geom: bool = False):
        """One view of ``x`` (C, H, W); with ``return_geom`` also its geometry (7,) (see the module docstring)."""
        from rsvision.data.transforms import resize

        h, w = x.shape[-2:]
        area = h * w * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        ch = int(min(h, max(1, round(np.sqrt(area / aspect)))))
        cw = int(min(w, max(1, round(np.sqrt(area * aspect)))))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        v = resize(x[:, top:top + ch, left:left + cw], size)
        hflip = rng.random() < 0.5
        if hflip:
            v = v.flip(-1)
        vflip = rng.random() < 0.5
        if vflip:
            v = v.flip(-2)
        k = int(rng.integers(0, 4))
        v = torch.rot90(v, k, (-2, -1))
        if not return_geom:
            return v
        return v, torch.tensor([top / h, left / w, ch / h, cw / w, float(hflip), float(vflip), float(k)])

    def draw(self, x: torch.Tensor, rng: np.random.Generator) -> dict[str, list[torch.Tensor]]:
        """``{"global", "local"}`` views and ``{"global_geom", "local_geom"}`` (7,) geometries of one sample."""
        out: dict[str, list[torch.Tensor]] = {"global": [], "local": [], "global_geom": [], "local_geom": []}
        for kind, n, size, scale in (("global", self.n_global, self.global_size, self.global_scale),
                                     ("local", self.n_local, self.local_size, self.local_scale)):
            for _ in range(n):
                v, g = self.view(x, size, scale, rng, return_geom=True)
                out[kind].append(v)
                out[f"{kind}_geom"].append(g)
        return out
