"""The resumable sampler behind every task's exact resume: positions, per-sample seeds, shards."""
import pytest
from torch.utils.data import DistributedSampler
from timm.data.distributed_sampler import RepeatAugSampler

from cmtnet.engine.sampling import ResumableSampler


@pytest.mark.parametrize('repeats', [0, 3])
def test_resumable_sampler_positions_and_seeds(repeats):
    dataset = list(range(12))  # a sampler needs only the dataset's length

    def sampler(rank, world):
        inner = RepeatAugSampler(dataset, world, rank, num_repeats=repeats) if repeats else \
            DistributedSampler(dataset, world, rank, shuffle=True, seed=7)
        return ResumableSampler(inner, rank, world, seed=7)

    one = sampler(0, 1)
    one.set_epoch(2)
    stream = list(one)
    assert len(set(seed for _, seed in stream)) == len(stream)  # repeated images get their own augmentation
    # resuming at position 5 yields the rest of the same stream
    one.set_epoch(2, start=5)
    assert list(one) == stream[5:] and len(one) == len(stream) - 5
    # two processes deal out the same global order: process r takes places r, r + 2, ...
    ranks = [sampler(r, 2) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    shards = [list(s) for s in ranks]
    interleaved = [pair for pairs in zip(*shards) for pair in pairs]
    assert interleaved == stream[:len(interleaved)]
    # another epoch, another order
    one.set_epoch(3)
    assert list(one) != stream
