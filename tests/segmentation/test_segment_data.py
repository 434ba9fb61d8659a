"""Mask folders and ADE20K's layout read and checked before any model is built, and mmseg's training
pipeline applied to an image and its mask together."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from cmtnet.errors import InputError
from cmtnet.segmentation.data import (
    ADE20K_CLASSES, BalancedRandomCrop, PadTo, RandomRescale, SegmentationSamples, ade20k_layout, class_names,
    data_paths, eval_transform, read_mask_set, rescaled_size, train_transform,
)


def _pair(images, masks, name, size=(40, 30), values=(0, 1), mask_size=None, mode='L'):
    """An image and a mask whose left half is values[0] and right half values[1]."""
    rng = np.random.default_rng(len(name))
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(images / f'{name}.jpg')
    w, h = mask_size or size
    mask = np.full((h, w), values[0], dtype=np.uint8)
    mask[:, w // 2:] = values[1]
    Image.fromarray(mask).convert(mode).save(masks / f'{name}.png')


class Options:
    def __init__(self, **kwargs):
        self.data = self.train_images = self.train_masks = self.val_images = self.val_masks = None
        self.__dict__.update(kwargs)


def test_every_problem_is_named_skipped_and_counted(tmp_path, caplog):
    images, masks = tmp_path / 'images', tmp_path / 'masks'
    _pair(images, masks, 'good', values=(0, 2))
    _pair(images, masks, 'ignored', values=(255, 1))
    _pair(images, masks, 'other_size', mask_size=(20, 30))
    _pair(images, masks, 'bad_values', values=(3, 7))
    _pair(images, masks, 'colour', mode='RGB')
    _pair(images, masks, 'no_mask')
    (masks / 'no_mask.png').unlink()
    with caplog.at_level(logging.WARNING):
        mask_set = read_mask_set(images, masks, ['a', 'b', 'c'])
    assert [p[0].name for p in mask_set.pairs] == ['good.jpg', 'ignored.jpg']
    assert mask_set.skipped == {'size_mismatch': 1, 'bad_values': 1, 'bad_mask': 1, 'missing_mask': 1}
    log = caplog.text
    assert 'no_mask.jpg has no mask' in log and 'other_size.png is 20x30 but its image other_size.jpg is 40x30' in log
    assert 'bad_values.png has values 3, 7, outside 0..2 and not 255' in log and 'colour.png is RGB' in log
    assert mask_set.describe().endswith(': 2 images with masks of 3 classes, skipped 1 image(s) without a mask, '
                                        'skipped 1 mask(s) that cannot be read or are not single-channel, '
                                        'skipped 1 mask(s) of another size than their image, '
                                        'skipped 1 mask(s) with values outside the classes and not 255')
    with pytest.raises(InputError, match=r'bad_values.png has values 3, 7.*--strict'):
        read_mask_set(images, masks, ['a', 'b', 'c'], strict=True)


def test_nothing_usable_and_missing_folders_are_errors(tmp_path):
    _pair(tmp_path / 'i', tmp_path / 'm', 'x', values=(9, 9))
    with pytest.raises(InputError, match='none of the 1 images'):
        read_mask_set(tmp_path / 'i', tmp_path / 'm', ['a'])
    with pytest.raises(InputError, match='mask folder .*absent does not exist'):
        read_mask_set(tmp_path / 'i', tmp_path / 'absent', ['a'])


def test_pairs_match_by_path_without_suffix(tmp_path):
    for sub in ('a', 'b'):
        _pair(tmp_path / 'i' / sub, tmp_path / 'm' / sub, 'x')
    mask_set = read_mask_set(tmp_path / 'i', tmp_path / 'm', ['a', 'b'], strict=True)
    assert [(i.parent.name, m.parent.name) for i, m in mask_set.pairs] == [('a', 'a'), ('b', 'b')]


def _ade20k(root, values=(0, 150)):
    for split in ('training', 'validation'):
        _pair(root / 'images' / split, root / 'annotations' / split, f'ADE_{split}_00000001', values=values)


@pytest.mark.parametrize('given', ['parent', 'itself'])
def test_ade20k_layout_and_labels(tmp_path, given):
    root = tmp_path / 'ADEChallengeData2016'
    _ade20k(root)
    source = data_paths(Options(data=tmp_path if given == 'parent' else root))
    assert source.splits['val'] == (root / 'images' / 'validation', root / 'annotations' / 'validation')
    assert source.class_names == list(ADE20K_CLASSES) and len(ADE20K_CLASSES) == 150 and source.reduce_zero_label
    assert source.scale == (2048, 512)  # the recipe's base scale, whatever the images' sizes
    mask_set = read_mask_set(*source.splits['train'], source.class_names, reduce_zero_label=True, strict=True)
    _, labels, _ = SegmentationSamples(mask_set, eval_transform())[0]
    # mask value 0 (unlabelled) -> 255, 150 (the last class, 'flag') -> 149
    assert labels[:, 0].unique().tolist() == [255] and labels[:, -1].unique().tolist() == [149]
    _ade20k(tmp_path / 'bad', values=(0, 151))
    with pytest.raises(InputError, match='outside 1..150'):
        read_mask_set(*ade20k_layout(tmp_path / 'bad')['train'], ADE20K_CLASSES, reduce_zero_label=True, strict=True)


def test_data_flags_go_together(tmp_path):
    with pytest.raises(InputError, match='--val-images and --val-masks go together'):
        data_paths(Options(train_images='a', train_masks='b', val_images='c'))
    with pytest.raises(InputError, match='either --data or'):
        data_paths(Options(data='x', train_images='a'))
    with pytest.raises(InputError, match='ADE20K'):
        data_paths(Options(data=tmp_path))


def test_class_names_from_a_file_or_a_count(tmp_path):
    path = tmp_path / 'classes.txt'
    path.write_text('sky\nroad\n\ncar\n')
    assert class_names(path) == ['sky', 'road', 'car']
    assert class_names(num_classes=3) == ['0', '1', '2']
    with pytest.raises(InputError, match='names 3 classes but --num-classes is 4'):
        class_names(path, 4)
    path.write_text('sky\nsky\n')
    with pytest.raises(InputError, match='twice: sky'):
        class_names(path)
    with pytest.raises(InputError, match='--classes FILE'):
        class_names()


def test_rescale_keeps_the_aspect_within_the_base_scale():
    assert rescaled_size(375, 500) == (512, 683)  # ADE20K's evaluation size: short side 512
    assert rescaled_size(512, 4096) == (256, 2048)  # a long image: the long side bound holds
    assert rescaled_size(375, 500, ratio=0.5) == (256, 341)


def _coloured(height, width, seed):
    """An image whose red channel is 40 x its pixel's label, and the labels (0..3, some 255)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (height // 8, width // 8), generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1)
    labels[:8, :8] = 255
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[0] = torch.where(labels == 255, 250, labels * 40).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(labels)


def test_geometry_moves_image_and_mask_together():
    # no resize (ratio 1 of the image's own size), so that pixel values stay exact
    transform = v2.Compose([RandomRescale((96, 64), (1.0, 1.0)), BalancedRandomCrop(48), v2.RandomHorizontalFlip(0.5),
                            PadTo(80)])
    for seed in range(8):
        torch.manual_seed(seed)
        image, mask = transform(*_coloured(64, 96, seed))
        assert image.shape[-2:] == mask.shape[-2:] == (80, 80)
        assert (mask[48:] == 255).all() and (mask[:, 48:] == 255).all() and (image[:, 48:] == 0).all()
        inside = mask[:48, :48]
        red = image[0, :48, :48]
        assert torch.equal(torch.where(inside == 255, 250, inside * 40).to(torch.uint8), red)


@pytest.mark.parametrize('hflip', [0.0, 0.5])
def test_training_flips_as_often_as_asked(hflip):
    """With the rescale and the crop at the image's own size, only the flip moves the mask: never at 0, about
    half of the time at 0.5."""
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[:, 16:] = 1
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    transform = train_transform(32, (32, 32), ratio_range=(1.0, 1.0), hflip=hflip)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(40):
        _, labels = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert labels.shape == (32, 32)
        flipped += int(labels[0, 0] == 1)
    assert flipped == 0 if hflip == 0 else 10 <= flipped <= 30


def test_crop_avoids_a_class_that_fills_it():
    labels = torch.zeros(64, 64, dtype=torch.int64)
    labels[:, 40:] = 1  # about half of the 32x32 crops are more than 75% class 0

    def balanced(crop):
        count = 0
        for seed in range(20):
            torch.manual_seed(seed)
            _, mask = crop(tv_tensors.Image(torch.zeros(3, 64, 64)), tv_tensors.Mask(labels))
            count += float((mask == 0).float().mean()) < 0.75
        return count

    assert balanced(BalancedRandomCrop(32)) == 20  # 10 tries find one every time
    assert balanced(BalancedRandomCrop(32, cat_max_ratio=1.0)) < 16  # a plain random crop often fails


def test_training_samples_are_crops_and_repeat_under_their_seed(tmp_path):
    _pair(tmp_path / 'i', tmp_path / 'm', 'x', size=(120, 90), values=(1, 2))
    samples = SegmentationSamples(read_mask_set(tmp_path / 'i', tmp_path / 'm', ['a', 'b', 'c']),
                                  train_transform(64, scale=(160, 120)))
    image, labels, skipped = samples[(0, 7)]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert labels.shape == (64, 64) and labels.dtype == torch.int64 and set(labels.unique().tolist()) <= {1, 2, 255}
    again = samples[(0, 7)]
    assert torch.equal(image, again[0]) and torch.equal(labels, again[1]) and skipped == 0
    assert not torch.equal(image, samples[(0, 8)][0])
