"""Sampling that resumes exactly: per-sample seeds and an epoch order that can start mid-way.

A training sample is augmented under its own seed, derived from the run seed, the epoch and the sample's
place in the epoch's global order, so that it is augmented the same way whatever the number of processes
or loader workers, and a run resumed in the middle of an epoch sees exactly the batches the interrupted
run would have seen. Every task's train loader uses `ResumableSampler`; its datasets augment under
`seeded(seed)`. The epoch's order itself follows the run seed too, with or without repeated augmentation
(`RepeatedAugmentationSampler`).
"""
import math
import random
from contextlib import contextmanager
from typing import Iterator, Sized, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

__all__ = ['RepeatedAugmentationSampler', 'ResumableSampler', 'seeded']


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


class RepeatedAugmentationSampler(Sampler):
    """Repeated augmentation (Hoffer et al., 2020, as DeiT and timm's `RepeatAugSampler` sample it), in the
    order of the run seed.

    Each epoch shuffles the images under `seed + epoch`, as torch's DistributedSampler does, repeats each
    one `repeats` times in a row and deals the result out to the processes in turn, so that the copies of an
    image go to different processes. Each process takes its share of the images (not of the copies): an epoch
    sees about as many samples as there are images, over all processes a multiple of 256 for 256 images or
    more. This is timm's sampling, except that timm orders by the epoch alone (the run seed changed nothing);
    under seed 0 the two orders are the same.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, repeats: int = 3, seed: int = 0):
        self.size = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank
        self.repeats = repeats
        self.seed = seed
        self.epoch = 0
        self.total_size = math.ceil(self.size * repeats / num_replicas) * num_replicas
        selected = self.size // 256 * 256 // num_replicas if self.size >= 256 else math.ceil(self.size / num_replicas)
        self.num_selected = min(selected, self.total_size // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).repeat_interleave(self.repeats).tolist()
        places = range(self.rank, self.total_size, self.num_replicas)[:self.num_selected]
        return iter([order[place % len(order)] for place in places])

    def __len__(self) -> int:
        return self.num_selected


class ResumableSampler(Sampler):
    """An epoch-seeded (distributed) sampler made resumable, yielding `(index, seed)` pairs.

    `set_epoch(epoch, start)` starts the epoch at this process's `start`-th sample. Both samplers it takes
    (torch's DistributedSampler, `RepeatedAugmentationSampler`) deal the epoch's global order out to processes
    in turn, so a process's p-th sample is the (p * world_size + rank)-th of the epoch: its seed depends on that
    place alone.
    """

    def __init__(self, sampler: Union[DistributedSampler, RepeatedAugmentationSampler], rank: int, world_size: int,
                 seed: int):
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
