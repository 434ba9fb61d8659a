"""Data: the digits, ImageFolder checks, skipping unreadable images, resumable per-sample-seeded sampling."""
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from cmtnet.classification.data import DigitsDataset, build_dataset, train_transform
from cmtnet.engine.data import ReadableImages, find_images, train_loader
from cmtnet.errors import InputError
from image_folders import corrupt, make_image_folder


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('images'), per_class=6)


def test_digits_fixed_split_at_the_model_size():
    train, test = DigitsDataset('train', 32), DigitsDataset('test', 32)
    assert len(train) + len(test) == 1797
    assert len(test) == 360
    assert train.classes == [str(i) for i in range(10)]
    image, target = test[0]
    assert image.size == (32, 32) and image.mode == 'RGB'
    # the split is fixed: a second load gives the same images in the same order
    again = DigitsDataset('test', 32)
    assert again.targets == test.targets and again.names == test.names
    assert not set(train.names) & set(test.names)
    # stratified: every class in the test split
    assert sorted(set(test.targets)) == list(range(10))


def test_missing_or_empty_data_is_a_clear_error(tmp_path, folder):
    with pytest.raises(InputError, match='does not exist'):
        build_dataset(tmp_path / 'nowhere', 'train', 32)
    with pytest.raises(InputError, match='no test/ folder'):
        build_dataset(folder, 'test', 32)
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    with pytest.raises(InputError, match='class folder'):
        build_dataset(tmp_path / 'empty', 'train', 32)
    (tmp_path / 'empty' / 'train' / 'cats').mkdir()
    with pytest.raises(InputError, match='cats'):
        build_dataset(tmp_path / 'empty', 'train', 32)


def test_image_folder_classes(folder):
    dataset = build_dataset(folder, 'train', 32)
    assert dataset.classes == ['blue', 'red'] and len(dataset) == 12


def test_unreadable_image_is_skipped_with_a_warning(tmp_path, caplog):
    root = make_image_folder(tmp_path, per_class=3, splits=('train',))
    bad = corrupt(root / 'train' / 'blue' / '1.png')
    images = ReadableImages(build_dataset(root, 'train', 32), train_transform(32))
    with caplog.at_level(logging.WARNING):
        results = [images[i] for i in range(len(images))]
    assert str(bad) in caplog.text
    assert [skipped for _, _, skipped in results] == [0, 1, 0, 0, 0, 0]
    # its place is taken by the next readable image, so batches keep their size
    assert all(t.shape == (3, 32, 32) for t, _, _ in results)

    strict = ReadableImages(build_dataset(root, 'train', 32), train_transform(32), strict=True)
    with pytest.raises(InputError, match=str(bad)):
        strict[1]


def test_seeded_augmentation_is_reproducible_and_leaves_global_rng_alone(folder):
    images = ReadableImages(build_dataset(folder, 'train', 32), train_transform(32))
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    a, _, _ = images[(3, 1234)]
    b, _, _ = images[(3, 1234)]
    c, _, _ = images[(3, 999)]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


def test_train_loader_rejects_a_batch_larger_than_the_shard(folder):
    images = ReadableImages(build_dataset(folder, 'train', 32), train_transform(32))
    with pytest.raises(InputError, match='lower --batch-size'):
        train_loader(images, batch_size=64, workers=0)


def test_find_images(folder, tmp_path):
    found = find_images([folder / 'val', folder / 'train' / 'red' / '0.png'])
    assert len(found) == 13 and found[-1].name == '0.png'
    with pytest.raises(InputError, match='does not exist'):
        find_images([tmp_path / 'missing.png'])
    (tmp_path / 'nothing').mkdir()
    with pytest.raises(InputError, match='holds no images'):
        find_images([tmp_path / 'nothing'])


@pytest.mark.parametrize('aa, name, magnitude', [
    ('rand-m9-mstd0.5-inc1', 'PosterizeIncreasing', 10),  # the recipe's policy at its largest draw
    ('rand-m9-mstd0.5', 'Posterize', 1),
    ('v0', 'Posterize', 1),  # an AutoAugment policy
])
def test_posterize_keeping_no_bits_gives_a_black_image(aa, name, magnitude):
    # timm asks for 0 bits at these magnitudes; Pillow 13 raises on that, which would end a run at random
    transform = train_transform(32, aa=aa)
    augment = transform.transforms[2]
    ops = list(getattr(augment, 'ops', ())) + [op for sub in getattr(augment, 'policy', ()) for op in sub]
    op = next(op for op in ops if op.name == name)
    op.prob, op.magnitude, op.magnitude_std = 1.0, magnitude, 0
    image = Image.fromarray(np.random.default_rng(0).integers(1, 256, (32, 32, 3), dtype=np.uint8))
    out = op(image)
    assert out.mode == 'RGB' and out.size == (32, 32)
    assert not np.asarray(out).any()
    # other magnitudes keep their bits: 4 bits at magnitude 0 of the increasing variant
    op.magnitude = 0 if name == 'PosterizeIncreasing' else 10
    kept = np.asarray(op(image))
    assert kept.any() and not (kept & 0x0F).any()


def test_the_recipe_augmentation_runs_at_its_largest_magnitudes():
    transform = train_transform(32, aa='rand-m10-n4-inc1')  # every op at magnitude 10, posterize included
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    random.seed(0)
    for _ in range(200):
        assert transform(image).shape == (3, 32, 32)


def _order(images, seed, aug_repeats, epoch=0, start=0):
    loader = train_loader(images, batch_size=4, seed=seed, aug_repeats=aug_repeats, workers=0)
    loader.sampler.set_epoch(epoch, start)
    return list(loader.sampler)


@pytest.mark.parametrize('aug_repeats', [0, 3])
def test_the_seed_sets_the_sample_order(folder, aug_repeats):
    images = ReadableImages(build_dataset(folder, 'train', 32), train_transform(32))
    order = _order(images, 0, aug_repeats)
    assert _order(images, 0, aug_repeats) == order  # the same seed, the same order
    indices = [index for index, _ in order]
    assert [index for index, _ in _order(images, 1, aug_repeats)] != indices  # another seed, another order
    assert _order(images, 0, aug_repeats, start=5) == order[5:]  # a resumed epoch goes on where it stopped
    if aug_repeats:  # each image comes `aug_repeats` times in a row, each time augmented its own way
        assert indices[:3] == [indices[0]] * 3 and len({seed for _, seed in order}) == len(order)
