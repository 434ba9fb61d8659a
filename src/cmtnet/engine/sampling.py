"""Sampling that resumes exactly: per-sample seeds and an epoch order that can start mid-way.

A training sample is augmented under its own seed, derived from the run seed, the epoch and the sample's
place in the epoch's global order, so that it is augmented the same way whatever the number of processes
or loader workers, and a run resumed in the middle of an epoch sees exactly the batches the interrupted
run would have seen. Every task's train loader uses `ResumableSampler`; its datasets augment under
`seeded(seed)`.
"""
import random
from contextlib import contextmanager
from typing import Iterator, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler
from timm.data.distributed_sampler import RepeatAugSampler

__all__ = ['ResumableSampler', 'seeded']


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the global RNGs timm's transforms draw from (python, numpy, torch), restoring them after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class ResumableSampler(Sampler):
    """An epoch-seeded (distributed) sampler made resumable, yielding `(index, seed)` pairs.

    `set_epoch(epoch, start)` starts the epoch at this process's `start`-th sample. Both samplers it takes
    (torch's DistributedSampler, timm's RepeatAugSampler) deal the epoch's global order out to processes in
    turn, so a process's p-th sample is the (p * world_size + rank)-th of the epoch: its seed depends on that
    place alone.
    """

    def __init__(self, sampler: Union[DistributedSampler, RepeatAugSampler], rank: int, world_size: int, seed: int):
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for position, index in enumerate(self.sampler):
            if position >= self.start:
                place = position * self.world_size + self.rank
                seed = int(np.random.SeedSequence([self.seed, self.epoch, place]).generate_state(1)[0])
                yield index, seed

    def __len__(self) -> int:
        return len(self.sampler) - self.start
