"""Samplers and seeding for reproducible training: the order and the random streams depend only on seeds.

Two ways a training sample's random draws (crop position, flips, rotations, ...) are made
repeatable, so that a killed and ``--resume``d run draws what the uninterrupted one drew:

* per sample (preferred, used by the per-pixel and detection datasets): the training sampler
  yields :class:`SampleKey` ``(index, epoch)`` instead of bare indices, and the dataset draws from
  :func:`sample_rng` / inside :func:`seeded` keyed by ``(seed, epoch, index)``. The draws then
  depend on nothing else: not on the batch order, prefetching, the number of workers or which
  worker loads the sample.
* from the global streams (classification's transforms): :class:`SeededRandomSampler` re-seeds them
  when an epoch's iteration starts and ``rsvision.tasks.common.SeedEveryStep`` at every batch;
  exact for ``num_workers=0``.

Why here (``data``) and not in ``tasks``: datamodules build their loaders with these samplers, and
data must not import the task layer above it.
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator, NamedTuple

import numpy as np
import torch

__all__ = ["SeededRandomSampler", "SampleKey", "split_key", "mix_seed", "seed_all", "sample_rng", "seeded"]


def mix_seed(*key: int) -> int:
    """A 32-bit seed from an integer key tuple (mixed through numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) % 2**64 for k in key]).generate_state(1)[0])


def seed_all(*key: int) -> None:
    """Seed python, numpy and torch from an integer key tuple (mixed through SeedSequence)."""
    s = mix_seed(*key)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


class SampleKey(NamedTuple):
    """What a keyed :class:`SeededRandomSampler` yields: the dataset index and the epoch it is drawn in."""

    index: int
    epoch: int


def split_key(key) -> tuple[int, int | None]:
    """``(index, epoch)`` of a :class:`SampleKey`; ``(index, None)`` of a plain integer index."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The numpy generator of one training sample's augmentations: a function of its key only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**64, 9, int(stream), int(epoch), int(index)]))


@contextlib.contextmanager
def seeded(*key: int) -> Iterator[None]:
    """Run a block with python / numpy / torch (CPU) seeded from ``key``; their states are restored after.

    For transforms that draw from the global streams (e.g. :mod:`rsvision.data.det_transforms`):
    inside the block their draws depend only on ``key``, and the caller's streams are untouched.
    Only torch's CPU generator is seeded (CUDA generators are neither seeded nor restored).
    """
    s = mix_seed(*key)
    py, npy, tch = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(s)
    np.random.seed(s)
    torch.random.default_generator.manual_seed(s)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(tch)


class SeededRandomSampler(torch.utils.data.Sampler[int]):
    """Shuffling sampler whose order depends only on ``(seed, epoch)``: use it for training loaders.

    When its iteration starts (the first batch of an epoch is fetched) it also re-seeds the global
    RNGs from ``(seed, epoch)``, so the augmentations of the first batch match between an
    uninterrupted run and a resumed one (later batches are covered by :class:`SeedEveryStep`).
    Lightning calls :meth:`set_epoch` before every epoch (also through its DDP sampler wrapper).

    With ``keys=True`` it yields :class:`SampleKey` ``(index, epoch)`` for datasets that key their
    augmentations per sample (see the module docstring): their data are then exact with any number
    of workers. Exact resume of everything drawn from the global streams holds for ``num_workers=0``.
    """

    def __init__(self, num_samples: int, seed: int = 0, keys: bool = False):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.keys = bool(keys)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(mix_seed(self.seed, 7, self.epoch))
        order = torch.randperm(self.num_samples, generator=g).tolist()
        seed_all(self.seed, 8, self.epoch)
        if self.keys:
            epoch = self.epoch
            yield from (SampleKey(i, epoch) for i in order)
        else:
            yield from order
