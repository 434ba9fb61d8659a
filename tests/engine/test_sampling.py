"""The resumable sampler behind every task's exact resume: positions, per-sample seeds, shards."""
import pytest
from torch.utils.data import DistributedSampler
from timm.data.distributed_sampler import RepeatAugSampler

from cmtnet.engine.sampling import RepeatedAugmentationSampler, ResumableSampler


@pytest.mark.parametrize('repeats', [0, 3])
def test_resumable_sampler_positions_and_seeds(repeats):
    dataset = list(range(12))  # a sampler needs only the dataset's length

    def sampler(rank, world):
        inner = RepeatedAugmentationSampler(dataset, world, rank, repeats, seed=7) if repeats else \
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


@pytest.mark.parametrize('size, world', [(12, 1), (12, 2), (300, 1), (300, 4), (1000, 8)])
def test_repeated_augmentation_follows_the_seed_and_is_timms_under_seed_0(size, world):
    dataset = list(range(size))

    def orders(make, epoch):
        shards = []
        for rank in range(world):
            sampler = make(rank)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        return shards

    for epoch in (0, 3):
        ours = orders(lambda r: RepeatedAugmentationSampler(dataset, world, r, 3, seed=0), epoch)
        assert ours == orders(lambda r: RepeatAugSampler(dataset, world, r, num_repeats=3), epoch)
        assert ours == orders(lambda r: RepeatedAugmentationSampler(dataset, world, r, 3, seed=0), epoch)
        assert orders(lambda r: RepeatedAugmentationSampler(dataset, world, r, 3, seed=5), epoch) != ours
    sampler = RepeatedAugmentationSampler(dataset, world, 0, 3)
    assert len(sampler) == len(RepeatAugSampler(dataset, world, 0, num_repeats=3)) == len(list(sampler))
