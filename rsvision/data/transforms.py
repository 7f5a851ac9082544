"""Scene-classification transforms for overhead imagery, on ``(C, H, W)`` float tensors.

Overhead scenes have no "up": vertical flips and 90-degree rotations are label-preserving (unlike
for ground photos), so they are on by default. Resizing is explicit because it moves remote-sensing
benchmark numbers by 10+ points: :class:`ResizePolicy` says how a whole image becomes the network
input, and the same policy (stored in the checkpoint) is used by ``eval`` and ``predict``.

All randomness comes from torch's global RNG (seeded per epoch / step by
:mod:`rsvision.tasks.common`), so augmentations repeat exactly after ``--resume``.
Any band count and dtype works: images are normalised floats by the time they get here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ResizePolicy", "resize", "center_crop", "random_resized_crop", "SceneTransform"]


@dataclass(frozen=True)
class ResizePolicy:
    """How an image of any size becomes an ``img_size`` x ``img_size`` input.

    * ``resize``: first resize the whole image to ``resize`` x ``resize`` (None: to ``img_size``),
      anti-aliased, ignoring aspect ratio (scene tiles are square). This is done once when the
      dataset is cached, so it is also what makes CPU training affordable.
    * eval: centre crop ``img_size`` from that (no crop when ``resize == img_size``), or, when
      ``eval_size`` is given, the whole image resized to ``eval_size``: train on crops of a larger
      base image, test on the whole scene ("FixRes": a crop makes objects look larger than the
      whole view does, so the best test size is usually above ``img_size``; choose it on val).
    * train: random resized crop with area ``scale`` and aspect ``ratio``, output ``img_size``
      (``scale=None``: random crop of ``img_size`` without rescaling).
    """

    img_size: int = 224
    resize: int | None = None
    scale: tuple[float, float] | None = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    eval_size: int | None = None

    @property
    def base_size(self) -> int:
        return int(self.resize or self.img_size)


def resize(img: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Anti-aliased bilinear resize of ``(C, H, W)`` (or ``(N, C, H, W)``) to ``size``."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(img.shape[-2:]) == hw:
        return img
    x = img[None] if img.ndim == 3 else img
    dtype = x.dtype
    x = F.interpolate(x.float(), size=hw, mode="bilinear", align_corners=False, antialias=True)
    x = x.to(dtype) if dtype.is_floating_point else x
    return x[0] if img.ndim == 3 else x


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``size`` x ``size`` crop of ``(..., H, W)`` (padding with zeros when smaller)."""
    h, w = img.shape[-2:]
    if h < size or w < size:
        ph, pw = max(size - h, 0), max(size - w, 0)
        img = F.pad(img, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return img[..., top:top + size, left:left + size]


def random_resized_crop(img: torch.Tensor, size: int, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random area fraction in ``scale`` with aspect in ``ratio``, resized to ``size``."""
    h, w = img.shape[-2:]
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
        ar = math.exp(float(torch.empty(1).uniform_(*log_r)))
        cw = int(round(math.sqrt(target * ar)))
        ch = int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,)))
            left = int(torch.randint(0, w - cw + 1, (1,)))
            return resize(img[..., top:top + ch, left:left + cw], size)
    return resize(center_crop(img, min(h, w)), size)


class SceneTransform:
    """Train or eval transform of a normalised ``(C, H, W)`` float tensor (see :class:`ResizePolicy`).

    Train: random resized crop, horizontal / vertical flips, 90-degree rotations (each optional),
    and with ``jitter`` > 0 a per-band gain ``1 + U(-j, j)`` and offset ``U(-j, j)`` (in std units of
    the normalised image): illumination, season and sensor gain differ between scenes of one class.
    """

    def __init__(self, policy: ResizePolicy, train: bool, hflip: bool = True, vflip: bool = True,
                 rot90: bool = True, jitter: float = 0.0):
        self.policy, self.train = policy, train
        self.hflip, self.vflip, self.rot90, self.jitter = hflip, vflip, rot90, float(jitter)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        p = self.policy
        img = resize(img, p.base_size)
        if not self.train:
            return resize(img, p.eval_size) if p.eval_size else center_crop(img, p.img_size)
        if p.scale is not None:
            img = random_resized_crop(img, p.img_size, p.scale, p.ratio)
        else:
            h, w = img.shape[-2:]
            if h > p.img_size or w > p.img_size:
                top = int(torch.randint(0, h - p.img_size + 1, (1,)))
                left = int(torch.randint(0, w - p.img_size + 1, (1,)))
                img = img[..., top:top + p.img_size, left:left + p.img_size]
            img = center_crop(img, p.img_size)
        if self.hflip and bool(torch.rand(()) < 0.5):
            img = img.flip(-1)
        if self.vflip and bool(torch.rand(()) < 0.5):
            img = img.flip(-2)
        if self.rot90:
            k = int(torch.randint(0, 4, (1,)))
            if k and img.shape[-1] == img.shape[-2]:
                img = torch.rot90(img, k, (-2, -1))
        if self.jitter > 0:
            gain, offset = (torch.empty(2, img.shape[0], 1, 1).uniform_(-self.jitter, self.jitter)).unbind(0)
            img = img * (1 + gain) + offset
        return img.contiguous()

    def __repr__(self) -> str:
        return f"SceneTransform({self.policy}, train={self.train})"
