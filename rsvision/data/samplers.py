"""Samplers and seeding for reproducible training: the order and the random streams depend only on seeds.

Why here (``data``) and not in ``tasks``: datamodules build their loaders with these samplers, and
data must not import the task layer above it.
"""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["SeededRandomSampler", "seed_all"]


def seed_all(*key: int) -> None:
    """Seed python, numpy and torch from an integer key tuple (mixed through SeedSequence)."""
    s = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


class SeededRandomSampler(torch.utils.data.Sampler[int]):
    """Shuffling sampler whose order depends only on ``(seed, epoch)``: use it for training loaders.

    When its iteration starts (the first batch of an epoch is fetched) it also re-seeds the global
    RNGs from ``(seed, epoch)``, so the augmentations of the first batch match between an
    uninterrupted run and a resumed one (later batches are covered by :class:`SeedEveryStep`).
    Lightning calls :meth:`set_epoch` before every epoch. Exact resume holds for
    ``num_workers=0``; with workers, resumed runs are statistically but not bitwise equal.
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 7, self.epoch]).generate_state(1)[0]))
        order = torch.randperm(self.num_samples, generator=g).tolist()
        seed_all(self.seed, 8, self.epoch)
        yield from order
