"""Rotated-detection augmentations of the published Oriented R-CNN / LSKNet DOTA recipe.

A sample is a dict ``{"image": (C, H, W) float tensor (raw pixel values), "boxes": (N, 5) le90
(cx, cy, w, h, a) px, "labels": (N,) int64, ...}``. The pipeline follows MMRotate's
``RResize -> RRandomFlip(0.25 h / 0.25 v / 0.25 diagonal) -> PolyRandomRotate(p=0.5, +-180 deg,
right angles when a rect class is present) -> Normalize``; padding to 32 happens in the collate
function. Angles are renormalised with ``rsvision.ops.norm_angle`` (no box math is re-derived
here). Random draws use torch's global generator; the training dataset runs the pipeline inside
:func:`rsvision.data.samplers.seeded` ``(seed, epoch, image index)``
(:class:`rsvision.data.detection.DetectionDataset` with the training sampler's keys), so a sample's
flip and rotation depend on that key only and a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def _norm(angle: torch.Tensor) -> torch.Tensor:
    from rsvision.ops import norm_angle

    return norm_angle(angle, "le90")


def hflip(sample: dict) -> dict:
    """Mirror left-right: x -> W - x, a -> -a."""
    img, b = sample["image"], sample["boxes"].clone()
    W = img.shape[-1]
    b[:, 0] = W - b[:, 0]
    b[:, 4] = _norm(-b[:, 4])
    return {**sample, "image": img.flip(-1), "boxes": b}


def vflip(sample: dict) -> dict:
    """Mirror top-bottom: y -> H - y, a -> -a."""
    img, b = sample["image"], sample["boxes"].clone()
    H = img.shape[-2]
    b[:, 1] = H - b[:, 1]
    b[:, 4] = _norm(-b[:, 4])
    return {**sample, "image": img.flip(-2), "boxes": b}


def dflip(sample: dict) -> dict:
    """Diagonal flip (both axes, i.e. a 180 degree turn): angles unchanged."""
    img, b = sample["image"], sample["boxes"].clone()
    H, W = img.shape[-2:]
    b[:, 0] = W - b[:, 0]
    b[:, 1] = H - b[:, 1]
    return {**sample, "image": img.flip(-1).flip(-2), "boxes": b}


def rotate(sample: dict, degrees: float, fill: float | Sequence[float] = 0.0) -> dict:
    """Turn the image content by ``degrees`` clockwise on screen about the image centre.

    Same canvas size (no auto-bound, as published); boxes keep w, h, their centres turn with
    the image, angles add the turn (positive = clockwise, the le90 convention); boxes whose centre
    leaves the image are dropped. Right angles are done by exact pixel transposition.
    """
    img, b, labels = sample["image"], sample["boxes"].clone(), sample["labels"]
    C, H, W = img.shape
    t = math.radians(degrees)
    cx, cy = W / 2.0, H / 2.0
    k = degrees / 90.0
    if abs(k - round(k)) < 1e-9 and H == W:
        img = torch.rot90(img, -int(round(k)) % 4, dims=(-2, -1))  # negative k = clockwise
    else:
        # output pixel p samples input at R(-t)(p - c) + c; grid in normalised [-1, 1] coords
        c, s = math.cos(t), math.sin(t)
        theta = torch.tensor([[c, s * H / W, 0.0], [-s * W / H, c, 0.0]], dtype=img.dtype)
        grid = F.affine_grid(theta[None], [1, C, H, W], align_corners=False)
        fill_t = torch.as_tensor(fill, dtype=img.dtype).reshape(-1, 1, 1).expand(C, 1, 1)
        out = F.grid_sample(torch.cat([img, torch.ones_like(img[:1])])[None], grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)[0]
        img = out[:C] + (1 - out[C:]) * fill_t
    dx, dy = b[:, 0] - cx, b[:, 1] - cy
    c, s = math.cos(t), math.sin(t)
    b[:, 0] = cx + c * dx - s * dy
    b[:, 1] = cy + s * dx + c * dy
    b[:, 4] = _norm(b[:, 4] + t)
    keep = (b[:, 0] >= 0) & (b[:, 0] < W) & (b[:, 1] >= 0) & (b[:, 1] < H)
    out = {**sample, "image": img, "boxes": b[keep], "labels": labels[keep]}
    for key in ("difficult",):
        if key in sample:
            out[key] = sample[key][keep]
    return out


class RandomFlip:
    """One of horizontal / vertical / diagonal flips with probability ``probs`` each (0.25 as published)."""

    def __init__(self, probs: Sequence[float] = (0.25, 0.25, 0.25)):
        self.probs = list(probs)

    def __call__(self, sample: dict) -> dict:
        u = float(torch.rand(()))
        acc = 0.0
        for p, fn in zip(self.probs, (hflip, vflip, dflip)):
            acc += p
            if u < acc:
                return fn(sample)
        return sample


class RandomRotate:
    """Rotate with probability ``p`` by an angle uniform in +-``max_degrees``.

    When the sample holds a label in ``rect_labels`` (classes that must stay axis-aligned, e.g.
    storage tanks) the angle is one of 90/180/-90 instead, like MMRotate's ``rect_classes``.
    """

    def __init__(self, p: float = 0.5, max_degrees: float = 180.0, rect_labels: Sequence[int] = (), fill=0.0):
        self.p, self.max_degrees, self.rect_labels, self.fill = p, max_degrees, set(rect_labels), fill

    def __call__(self, sample: dict) -> dict:
        if float(torch.rand(())) >= self.p:
            return sample
        if self.rect_labels and any(int(lab) in self.rect_labels for lab in sample["labels"]):
            deg = (90.0, 180.0, -90.0)[int(torch.randint(3, ()))]
        else:
            deg = float(torch.empty(()).uniform_(-self.max_degrees, self.max_degrees))
        return rotate(sample, deg, self.fill)


class Resize:
    """Scale so the image fits ``size`` (int or (h, w)) keeping the aspect ratio; boxes scale with it."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, sample: dict) -> dict:
        img = sample["image"]
        H, W = img.shape[-2:]
        s = min(self.size[0] / H, self.size[1] / W)
        if abs(s - 1.0) < 1e-9:
            return sample
        nh, nw = max(1, round(H * s)), max(1, round(W * s))
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1)[0]
        b = sample["boxes"].clone()
        b[:, :4] *= s
        return {**sample, "image": img, "boxes": b, "scale": s}


class Normalize:
    """(x - mean) / std per band, in the units of the raw pixels (0-255 for 8-bit imagery)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)

    def __call__(self, sample: dict) -> dict:
        from rsvision.data.raster import normalize

        return {**sample, "image": normalize(sample["image"], self.mean, self.std, path=sample.get("path"))}


class Compose:
    def __init__(self, transforms: Sequence[Callable[[dict], dict]]):
        self.transforms = list(transforms)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample


IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def train_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD, rect_labels: Sequence[int] = (),
                     img_size: int | None = None, flip: bool = True, rotate_p: float = 0.5) -> Compose:
    """The published training pipeline (resize optional: DOTA patches are already at size)."""
    ts: list = [Resize(img_size)] if img_size else []
    if flip:
        ts.append(RandomFlip())
    if rotate_p > 0:
        ts.append(RandomRotate(rotate_p, 180.0, rect_labels))
    ts.append(Normalize(mean, std))
    return Compose(ts)


def eval_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD, img_size: int | None = None) -> Compose:
    return Compose(([Resize(img_size)] if img_size else []) + [Normalize(mean, std)])
