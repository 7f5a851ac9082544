"""Synthetic oriented objects on aerial-like backgrounds, written in DOTA format.

Why: detection tests, the demo and the synthetic benchmark need labelled rotated boxes that a
small detector can learn in minutes on a CPU, of any size, reproducible from a seed, without
shipping data. Three classes with distinct shape *and* texture cues:

- ``ship``: long, pointed bow, light hull with a darker deck stripe (any angle);
- ``vehicle``: small rectangle with a dark windscreen band (any angle);
- ``tank``: round storage tank with a ring and shadow, labelled by its axis-aligned square
  (a "rect class": like DOTA's storage-tank it must stay axis-aligned, so rotation augmentation
  only turns it by right angles).

Boxes are le90 ``(cx, cy, w, h, a)`` with ``w >= h``; label polygons come from
``rsvision.ops.obb2poly``. Rendering works on any pixel region of a global scene, so an 8000 x
8000 GeoTIFF is written strip by strip without holding the image in memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

CLASSES: tuple[str, ...] = ("ship", "vehicle", "tank")
RECT_CLASSES: tuple[str, ...] = ("tank",)  # must stay axis-aligned (right-angle rotations only)

# (long side range px, aspect h/w range)
_SIZES = {"ship": ((44.0, 96.0), (0.18, 0.3)), "vehicle": ((20.0, 30.0), (0.42, 0.55)),
          "tank": ((22.0, 46.0), (1.0, 1.0))}
_BG_PALETTE = np.array(
    [[92, 104, 78], [118, 112, 92], [70, 88, 70], [135, 128, 110], [60, 78, 96], [105, 98, 88]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SynthObject:
    """One object: class name and le90 box in pixels of the whole scene."""

    name: str
    cx: float
    cy: float
    w: float
    h: float
    angle: float
    tone: float = 0.0  # per-object colour jitter in [-1, 1]

    @property
    def radius(self) -> float:
        return 0.5 * math.hypot(self.w, self.h)

    def obb(self) -> list[float]:
        return [self.cx, self.cy, self.w, self.h, self.angle]


def sample_objects(
    rng: np.random.Generator,
    width: int,
    height: int,
    num: int,
    classes: Sequence[str] = CLASSES,
    margin: float = 4.0,
    max_tries: int = 60,
) -> list[SynthObject]:
    """Place up to ``num`` non-overlapping objects fully inside a ``width`` x ``height`` scene.

    Objects of a class cluster loosely (ships in rows, vehicles in lots) by drawing some
    centres near an earlier object of the same class, which makes scenes look less uniform.
    """
    objs: list[SynthObject] = []
    for _ in range(num):
        name = classes[int(rng.integers(len(classes)))]
        (lo, hi), (alo, ahi) = _SIZES[name]
        for _try in range(max_tries):
            w = float(rng.uniform(lo, hi))
            h = w * float(rng.uniform(alo, ahi))
            if name in RECT_CLASSES:
                angle = 0.0
            else:
                angle = float(rng.uniform(-math.pi / 2, math.pi / 2))
            r = 0.5 * math.hypot(w, h)
            if 2 * (r + margin) >= min(width, height):  # too big for this image: draw again
                continue
            same = [o for o in objs if o.name == name]
            if same and rng.random() < 0.5:
                ref = same[int(rng.integers(len(same)))]
                d = float(rng.uniform(2.2, 3.5)) * r
                t = float(rng.uniform(0, 2 * math.pi))
                cx, cy = ref.cx + d * math.cos(t), ref.cy + d * math.sin(t)
                if name not in RECT_CLASSES and rng.random() < 0.7:
                    angle = ref.angle
            else:
                cx = float(rng.uniform(r + margin, width - r - margin))
                cy = float(rng.uniform(r + margin, height - r - margin))
            if not (r + margin <= cx <= width - r - margin and r + margin <= cy <= height - r - margin):
                continue
            if all(math.hypot(cx - o.cx, cy - o.cy) > r + o.radius + margin for o in objs):
                objs.append(SynthObject(name, cx, cy, w, h, angle, float(rng.uniform(-1, 1))))
                break
    return objs


class _Background:
    """Deterministic aerial-like background of a whole scene, renderable by region.

    Smooth multi-octave value noise (bilinear upsampling of coarse random grids) picks land-cover
    colours; a few straight roads cross the scene. Everything derives from ``seed`` and global
    pixel coordinates, so adjacent regions join seamlessly.
    """

    def __init__(self, width: int, height: int, seed: int):
        rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        self.grids = []
        for cell, amp in ((384, 1.0), (96, 0.5), (24, 0.25)):
            gh, gw = height // cell + 2, width // cell + 2
            self.grids.append((cell, amp, rng.random((gh, gw), dtype=np.float32)))
        self.cover_cell = 192
        self.cover = rng.integers(0, len(_BG_PALETTE), (height // 192 + 2, width // 192 + 2))
        n_roads = max(1, int(round(math.sqrt(width * height) / 700)))
        self.roads = [
            (float(rng.uniform(0, width)), float(rng.uniform(0, height)),
             float(rng.uniform(0, math.pi)), float(rng.uniform(5, 11)))
            for _ in range(n_roads)
        ]
        self.seed = seed

    @staticmethod
    def _upsample(grid: np.ndarray, cell: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        ys = (np.arange(y0, y0 + h, dtype=np.float32) + 0.5) / cell
        xs = (np.arange(x0, x0 + w, dtype=np.float32) + 0.5) / cell
        iy, ix = np.floor(ys).astype(int), np.floor(xs).astype(int)
        fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]
        fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep
        g00, g01 = grid[iy][:, ix], grid[iy][:, ix + 1]
        g10, g11 = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
        return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        noise = sum(amp * self._upsample(g, cell, x0, y0, w, h) for cell, amp, g in self.grids)
        noise = noise / 1.75 - 0.5  # about [-0.5, 0.5]
        # land cover: nearest coarse cell, with a noisy boundary
        warp = 160.0 * noise
        ys = ((np.arange(y0, y0 + h)[:, None] + warp) // self.cover_cell).astype(int)
        xs = ((np.arange(x0, x0 + w)[None, :] - warp) // self.cover_cell).astype(int)
        cls = self.cover[np.clip(ys, 0, self.cover.shape[0] - 1), np.clip(xs, 0, self.cover.shape[1] - 1)]
        img = _BG_PALETTE[cls] * (1.0 + 0.45 * noise[..., None])
        yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        for rx, ry, ra, rw in self.roads:
            d = np.abs((xx - rx) * math.sin(ra) - (yy - ry) * math.cos(ra))
            img = np.where((d < rw)[..., None], np.float32(150) + 20 * noise[..., None], img)
        fine = np.random.default_rng([self.seed, x0, y0]).normal(0, 5, (h, w, 1)).astype(np.float32)
        return img + fine


def _local_coords(o: SynthObject, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in the object's frame (u along w, v along h); le90 angle turns +x towards +y."""
    dx, dy = xx + 0.5 - o.cx, yy + 0.5 - o.cy
    c, s = math.cos(o.angle), math.sin(o.angle)
    return dx * c + dy * s, -dx * s + dy * c


def _paint(img: np.ndarray, x0: int, y0: int, o: SynthObject) -> None:
    """Draw one object (and its shadow) into ``img``, whose pixel (0, 0) is scene pixel (x0, y0)."""
    H, W = img.shape[:2]
    r = o.radius + 6
    ax0, ax1 = max(int(o.cx - r) - x0, 0), min(int(o.cx + r) + 2 - x0, W)
    ay0, ay1 = max(int(o.cy - r) - y0, 0), min(int(o.cy + r) + 2 - y0, H)
    if ax0 >= ax1 or ay0 >= ay1:
        return
    yy, xx = np.mgrid[ay0 + y0 : ay1 + y0, ax0 + x0 : ax1 + x0].astype(np.float32)
    patch = img[ay0:ay1, ax0:ax1]
    u, v = _local_coords(o, xx, yy)
    hw, hh = o.w / 2, o.h / 2
    t = o.tone
    if o.name == "tank":
        rad = np.hypot(xx + 0.5 - o.cx, yy + 0.5 - o.cy)
        shadow = np.hypot(xx + 0.5 - o.cx - 0.12 * o.w, yy + 0.5 - o.cy - 0.12 * o.w) <= hw
        patch[shadow & (rad > hw)] *= 0.45
        body = rad <= hw
        shade = 205 + 25 * t - 40 * (rad / hw) ** 2
        patch[body] = np.stack([shade, shade, shade * 0.96], -1)[body]
        ring = body & (np.abs(rad - 0.62 * hw) < max(1.0, 0.07 * hw))
        patch[ring] = (120 + 20 * t, 120 + 20 * t, 118)
        return
    if o.name == "ship":
        # pointed bow at +u: half-width narrows linearly over the last 1.2 h of the hull
        taper = np.clip((hw - u) / (1.2 * o.h), 0, 1)
        body = (np.abs(u) <= hw) & (np.abs(v) <= hh * np.sqrt(taper))
        su, sv = _local_coords(o, xx - 3, yy - 3)
        shadow = (np.abs(su) <= hw) & (np.abs(sv) <= hh)
        patch[shadow & ~body] *= 0.5
        hull = np.array([215, 215, 220], np.float32) + 25 * t
        deck = np.array([95, 85, 80], np.float32) + 20 * t
        col = np.where((np.abs(v) < 0.35 * hh)[..., None] & (np.abs(u) < 0.6 * hw)[..., None], deck, hull)
        col = col - 30 * ((np.floor((u + hw) / max(o.w / 7, 2)) % 2) == 0)[..., None] * (np.abs(v) < 0.35 * hh)[..., None]
        patch[body] = col[body]
        return
    # vehicle: coloured body, dark windscreen band near the front
    body = (np.abs(u) <= hw) & (np.abs(v) <= hh)
    su, sv = _local_coords(o, xx - 2, yy - 2)
    patch[((np.abs(su) <= hw) & (np.abs(sv) <= hh)) & ~body] *= 0.5
    palette = np.array([[200, 40, 35], [230, 230, 225], [40, 60, 160], [30, 30, 35], [220, 190, 40]], np.float32)
    base = palette[int((t + 1) * 2.499)]
    col = np.broadcast_to(base, patch.shape).copy()
    wind = (u > 0.15 * hw) & (u < 0.45 * hw)
    col[wind] = (25, 30, 40)
    col[(u < -0.6 * hw)] *= 0.8
    patch[body] = col[body]


def render_region(bg: _Background, objects: Sequence[SynthObject], x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Scene pixels [y0, y0+h) x [x0, x0+w) as (h, w, 3) uint8."""
    img = bg.render(x0, y0, w, h)
    for o in objects:
        if o.cx + o.radius + 8 >= x0 and o.cx - o.radius - 8 < x0 + w and o.cy + o.radius + 8 >= y0 and o.cy - o.radius - 8 < y0 + h:
            _paint(img, x0, y0, o)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image(width: int, height: int, seed: int, num_objects: int | tuple[int, int] = (6, 16),
               classes: Sequence[str] = CLASSES) -> tuple[np.ndarray, list[SynthObject]]:
    """One synthetic image (H, W, 3) uint8 and its objects."""
    rng = np.random.default_rng(seed)
    n = num_objects if isinstance(num_objects, int) else int(rng.integers(num_objects[0], num_objects[1] + 1))
    objs = sample_objects(rng, width, height, n, classes)
    return render_region(_Background(width, height, seed), objs, 0, 0, width, height), objs


def objects_to_polys(objects: Sequence[SynthObject]) -> np.ndarray:
    """(N, 8) float64 label polygons of the objects' le90 boxes (via ``rsvision.ops.obb2poly``)."""
    import torch

    from rsvision.ops import obb2poly

    if not objects:
        return np.zeros((0, 8))
    boxes = torch.tensor([o.obb() for o in objects], dtype=torch.float64)
    return obb2poly(boxes, "le90").numpy()


def write_label_txt(path: str | Path, objects: Sequence[SynthObject], gsd: float | None = None) -> None:
    """Write a DOTA labelTxt file for ``objects`` (difficulty 0) through the DOTA writer."""
    from rsvision.data.dota.labels import write_label_txt as _write

    polys = objects_to_polys(objects)
    _write(path, polys, [o.name for o in objects], difficult=[0] * len(objects), gsd=gsd)


def make_dota_dataset(
    out: str | Path,
    num_images: int,
    size: int | tuple[int, int] = 512,
    seed: int = 0,
    num_objects: int | tuple[int, int] = (6, 16),
    classes: Sequence[str] = CLASSES,
) -> Path:
    """Write ``num_images`` images to ``out/images/*.png`` and labels to ``out/labelTxt/*.txt``.

    ``size`` is an int (square) or (width, height). Image ``i`` uses seed ``(seed, i)`` so a
    dataset is reproducible and any two seeds give disjoint data (train / test splits).
    """
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labelTxt").mkdir(parents=True, exist_ok=True)
    width, height = (size, size) if isinstance(size, int) else size
    for i in range(num_images):
        img_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        img, objs = make_image(width, height, img_seed, num_objects, classes)
        name = f"syn{seed:03d}_{i:05d}"
        Image.fromarray(img).save(out / "images" / f"{name}.png")
        write_label_txt(out / "labelTxt" / f"{name}.txt", objs)
    return out


def make_geotiff_scene(
    path: str | Path,
    width: int,
    height: int,
    seed: int = 0,
    density: float = 60.0,
    classes: Sequence[str] = CLASSES,
    crs: str = "EPSG:32633",
    gsd: float = 0.5,
    origin: tuple[float, float] = (500000.0, 4500000.0),
    block: int = 512,
    label_path: str | Path | None = None,
) -> tuple[Path, list[SynthObject]]:
    """Write a large georeferenced RGB GeoTIFF (tiled, deflate), strip by strip.

    ``density`` is objects per megapixel. Memory stays at one strip of ``block`` rows whatever
    the scene size. Returns the path and the objects; ``label_path`` also writes their labelTxt.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    objs = sample_objects(rng, width, height, int(round(density * width * height / 1e6)), classes)
    bg = _Background(width, height, seed)
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs=crs,
                   transform=from_origin(origin[0], origin[1], gsd, gsd), tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", photometric="RGB")
    # bucket objects by strip so each strip only looks at its neighbours
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, height, block):
            h = min(block, height - y0)
            near = [o for o in objs if o.cy + o.radius + 8 >= y0 and o.cy - o.radius - 8 < y0 + h]
            strip = render_region(bg, near, 0, y0, width, h)
            dst.write(strip.transpose(2, 0, 1), window=Window(0, y0, width, h))
    if label_path is not None:
        write_label_txt(label_path, objs, gsd=gsd)
    return path, objs
