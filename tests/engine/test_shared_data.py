"""What every task's data shares: distinct output names, the unreadable-image skip, the digits split."""
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms.v2 import functional as F

from cmtnet.engine.data import ImageFiles, ReadableImages, digits_split, output_names
from cmtnet.errors import InputError
from image_folders import corrupt, decompression_bomb


def test_output_names_are_distinct_stable_and_plain_where_they_can_be():
    assert output_names([Path('photos/x.jpg'), Path('photos/y.jpg')]) == ['x.png', 'y.png']
    assert output_names([Path('/data/a/x.jpg'), Path('/data/b/x.jpg')]) == ['a_x.png', 'b_x.png']
    assert output_names([Path('/d/a/x.jpg'), Path('/d/b/c/x.jpg'), Path('/d/x.jpg')]) == \
        ['a_x.png', 'b_c_x.png', 'x.png']
    # what would still clash is numbered in input order, case aside
    clashing = [Path('/d/a_x.jpg'), Path('/d/a/x.jpg'), Path('/d/a/X.png'), Path('/d/a_x.jpg')]
    names = output_names(clashing)
    assert names == ['a_x.png', 'a_x-2.png', 'a_X-3.png', 'a_x-4.png']
    assert output_names(clashing) == names and output_names([]) == []


def test_unreadable_files_and_a_decompression_bomb_are_named_and_skipped(tmp_path, caplog):
    good = []
    for i in range(3):
        good.append(tmp_path / f'{i}.png')
        Image.new('RGB', (8 + i, 8), (i, 0, 0)).save(good[-1])
    bomb, broken = decompression_bomb(tmp_path / 'bomb.png'), tmp_path / 'broken.png'
    broken.write_bytes(good[0].read_bytes())
    corrupt(broken)  # a PNG cut short
    images = ReadableImages(ImageFiles([good[0], bomb, broken, good[1], good[2]]), F.pil_to_tensor)
    with caplog.at_level(logging.WARNING):
        samples = [images[i] for i in range(len(images))]
    assert [skipped for _, _, skipped in samples] == [0, 2, 1, 0, 0]
    assert [image.shape[-1] for image, _, _ in samples] == [8, 9, 9, 9, 10]  # the next readable image stands in
    assert f'skipping unreadable image {bomb}' in caplog.text and f'skipping unreadable image {broken}' in caplog.text
    strict = ReadableImages(ImageFiles([good[0], bomb]), F.pil_to_tensor, strict=True)
    with pytest.raises(InputError, match=f'unreadable image {bomb}'):
        strict[1]
    with pytest.raises(InputError, match='none of the 2 images'):
        ReadableImages(ImageFiles([bomb, broken]), F.pil_to_tensor)[0]


def test_the_digits_split_is_the_one_the_demo_was_measured_on():
    digits = digits_split()
    assert digits.images.shape == (1797, 8, 8) and digits.images.max() == 16
    assert len(digits.train) == 1437 and len(digits.test) == 360
    assert not set(digits.train) & set(digits.test)
    # the split as it has always been (scikit-learn's stratified split under random_state 0)
    assert digits.train[:4].tolist() == [1346, 295, 257, 385] and digits.test[:4].tolist() == [1496, 188, 705, 820]
    assert (int(digits.train.sum()), int(digits.test.sum())) == (1275762, 337944)
    share = np.bincount(digits.targets[digits.test]) / np.bincount(digits.targets)  # stratified: 20% of each class
    assert np.all(np.abs(share - 0.2) < 0.01)
