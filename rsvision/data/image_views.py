"""Scene images (class folders, labels unused) as one backbone modality, for self-supervised pretraining.

``rsvision pretrain ssl`` with ``data.format: images`` reads ``root/<class>/<image>`` (RSSCN7, UC Merced, ...)
through :class:`rsvision.data.classification.SceneDataset` (band check, pixel preparation, resize), caches
each image resized to ``size`` px and serves it as ``{modality: (C, size, size)}`` in pixel units, the
interface :class:`rsvision.data.multimodal.MultiCropDataset` crops views from. ``data.modalities`` names
that one modality and its bands (``{hr: [R, G, B]}``: SkySense V2's high-resolution optical input).
``split_file`` (a classification split file, as ``classify train`` writes) picks the images of each split,
so pretraining sees only the images its fine-tuning trains on; without one every image is ``train``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from rsvision.data.multimodal import PairSample, SSLDataModule
from rsvision.data.raster import compute_band_stats
from rsvision.errors import ConfigError, DataError

__all__ = ["ImageModalityDataset", "ImageSSLDataModule", "image_datasets"]


class ImageModalityDataset:
    """Cached scene images as ``read(i) -> {modality: (C, size, size)}``; ``samples``: one per image."""

    def __init__(self, paths: Sequence[str], modality: str, bands: Sequence[str], size: int):
        from rsvision.data.classification import Sample, SceneDataset
        from rsvision.data.transforms import ResizePolicy, SceneTransform

        self.modalities = {modality: tuple(bands)}
        self.stats: Optional[dict[str, tuple[list[float], list[float]]]] = None
        tf = SceneTransform(ResizePolicy(size, None, None), train=False)
        scenes = SceneDataset([Sample(str(p), 0) for p in paths], 1, tf, in_chans=len(bands)).cache()
        self._images = [scenes.read(i) for i in range(len(scenes))]
        self.samples = [PairSample(s.path, "train", {modality: s.path}) for s in scenes.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> dict[str, torch.Tensor]:
        (m,) = self.modalities
        return {m: self._images[i]}

    def band_stats(self) -> dict[str, tuple[list[float], list[float]]]:
        (m,) = self.modalities
        st = compute_band_stats((t.numpy() for t in self._images), max_pixels_per_image=None)
        return {m: (list(st.mean), list(st.std))}


def image_datasets(root: str | Path, modalities: Mapping[str, Sequence[str]], size: int,
                   split_file: str | Path | None = None) -> dict[str, ImageModalityDataset]:
    """``{split: dataset}`` of the class folders under ``root`` (``split_file``: which image is in which split)."""
    from rsvision.data.classification import _rel, read_split_file, scan_class_folders

    if len(modalities) != 1:
        raise ConfigError(f"data.format images: data.modalities names one modality (e.g. {{hr: [R, G, B]}}), "
                          f"got {list(modalities)}")
    (m, bands), = modalities.items()
    samples, _ = scan_class_folders(root)
    table = read_split_file(split_file) if split_file else {}
    by_split: dict[str, list[str]] = {}
    for s in samples:
        sp = table.get(_rel(s.path, Path(root))) if split_file else "train"
        if sp is not None:
            by_split.setdefault(sp, []).append(s.path)
    if not by_split.get("train"):
        raise DataError("no training images (check data.split_file)", path=split_file or root)
    return {sp: ImageModalityDataset(paths, m, bands, size) for sp, paths in by_split.items()}


class ImageSSLDataModule(SSLDataModule):
    """``format: images``: scene class folders as one modality (e.g. RSSCN7 as ``hr``) for ``pretrain ssl``."""

    def setup(self, stage: Optional[str] = None) -> None:
        c = self.cfg
        if self.datasets:
            return
        self.datasets = image_datasets(c.root, c.modalities, self.source_size or 2 * c.img_size, c.split_file)
        self.stats = ({m: (list(c.mean[m]), list(c.std[m])) for m in c.modalities} if c.mean and c.std
                      else self.datasets["train"].band_stats())
        for ds in self.datasets.values():
            ds.stats = self.stats
